"""Summaries of seeded repeats and the significance tests the gates and verdict use.

All statistics come from :mod:`numpy` and :mod:`scipy.stats`: sample standard
deviation (ddof=1), the Student-t 95 % confidence interval of the mean
(``scipy.stats.t.interval``), Welch's unequal-variance t-test
(``scipy.stats.ttest_ind(equal_var=False)``) and the one-sample t-test
(``scipy.stats.ttest_1samp``), as modded-nanogpt uses for its record rule
("p < 0.01 that the mean val_loss is below the target").

CLI (what rules/gates.smk runs)::

    python -m workflow.stats --results r1/result.json r2/result.json --output summary.json
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np
from scipy import stats

from workflow.io import read_json, write_json_atomic


def describe(values: Sequence[float]) -> dict:
    """n, mean, std (ddof=1), min, max, median and the 95 % t-interval of the mean.

    Args:
        values: finite samples (e.g. final val_loss of each seed, nats/token).
    Returns:
        dict with float entries; ``std`` and ``ci_95`` are None for n < 2, and
        everything but ``n`` is None for n == 0. ``ci_95`` is ``[low, high]``.
    """
    arr = np.asarray(values, dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "median": None, "ci_95": None}
    mean = float(arr.mean())
    out = {
        "n": n,
        "mean": mean,
        "std": None,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "median": float(np.median(arr)),
        "ci_95": None,
    }
    if n >= 2:
        std = float(arr.std(ddof=1))
        out["std"] = std
        if std > 0:
            low, high = stats.t.interval(0.95, df=n - 1, loc=mean, scale=std / math.sqrt(n))
            out["ci_95"] = [float(low), float(high)]
        else:
            out["ci_95"] = [mean, mean]
    return out


def welch_ttest(sample: Sequence[float], reference: Sequence[float], alternative: str = "less") -> dict:
    """Welch's t-test of ``mean(sample)`` against ``mean(reference)``.

    Args:
        sample, reference: at least 2 values each.
        alternative: ``"less"`` (H1: sample mean is lower, i.e. better loss),
            ``"greater"`` or ``"two-sided"``.
    Returns:
        ``{"statistic", "p_value", "df", "alternative"}``; values None when either
        sample has fewer than 2 values or both have zero variance.
    """
    a, b = np.asarray(sample, float), np.asarray(reference, float)
    if a.size < 2 or b.size < 2 or (a.std() == 0 and b.std() == 0):
        return {"statistic": None, "p_value": None, "df": None, "alternative": alternative}
    res = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "df": float(res.df), "alternative": alternative}


def one_sample_ttest(sample: Sequence[float], target: float, alternative: str = "less") -> dict:
    """One-sample t-test of ``mean(sample)`` against ``target`` (H1 default: mean < target).

    Returns ``{"statistic", "p_value", "df", "alternative", "target"}``; None values for
    fewer than 2 samples or zero variance.
    """
    a = np.asarray(sample, float)
    if a.size < 2 or a.std() == 0:
        return {"statistic": None, "p_value": None, "df": None, "alternative": alternative, "target": target}
    res = stats.ttest_1samp(a, target, alternative=alternative)
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "df": float(res.df),
        "alternative": alternative,
        "target": target,
    }


def summarize_runs(results: Sequence[dict]) -> dict:
    """Summary of one variant's runs in one stage (the content of ``summary.json``).

    Args:
        results: the runs' ``result.json`` dicts.
    Returns:
        ``{"stage", "variant", "n_runs", "successful_runs", "failed_runs": [{seed, reason}],
        "val_loss": describe(...), "time_seconds": describe(...) + {"total"}, "tokens_seen_total",
        "tokens_per_s" and "bytes_per_token" (describe over successful runs; n 0 when not recorded),
        "tensor_parallel" (result.json's record of the first successful run, or None),
        "process_seconds_total", "runs": [{seed, success, reason, final_val_loss, time_seconds}]}``.
        A run counts as successful only if ``success`` is true and its final_val_loss is finite.
    Raises:
        ValueError: the results mix stages or variants.
    """
    keys = {(r.get("stage"), r.get("variant")) for r in results}
    if len(keys) > 1:
        raise ValueError(f"summarize_runs: results of several stage/variant pairs: {sorted(keys)}")
    stage, variant = keys.pop() if keys else (None, None)
    ok = [r for r in results if r.get("success") and r.get("final_val_loss") is not None and math.isfinite(r["final_val_loss"])]
    failed = [r for r in results if r not in ok]
    times = [float(r["time_seconds"]) for r in results]
    time_summary = describe(times)
    time_summary["total"] = float(sum(times))
    return {
        "stage": stage,
        "variant": variant,
        "n_runs": len(results),
        "successful_runs": len(ok),
        "failed_runs": [{"seed": r.get("seed"), "reason": r.get("reason") or "no finite final_val_loss"} for r in failed],
        "val_loss": describe([r["final_val_loss"] for r in ok]),
        "time_seconds": time_summary,
        "tokens_seen_total": int(sum(r.get("tokens_seen", 0) for r in results)),
        # communication and tensor parallelism (read defensively: older results lack them)
        "tokens_per_s": describe([r["tokens_per_s"] for r in ok if r.get("tokens_per_s") is not None]),
        "bytes_per_token": describe([b for r in ok if (b := (r.get("communication") or {}).get("bytes_per_token"))
                                     is not None]),
        "tensor_parallel": next((r["tensor_parallel"] for r in ok if r.get("tensor_parallel")), None),
        "process_seconds_total": float(sum(r["time_seconds"] * r.get("world_size", 1) for r in results)),
        "runs": [
            {
                "seed": r.get("seed"),
                "success": r in ok,
                "reason": r.get("reason"),
                "final_val_loss": r.get("final_val_loss"),
                "time_seconds": r.get("time_seconds"),
            }
            for r in sorted(results, key=lambda r: r.get("seed", 0))
        ],
    }


def successful_val_losses(summary: dict) -> list[float]:
    """Final val_loss of each successful run in a ``summary.json`` dict, in seed order."""
    return [run["final_val_loss"] for run in summary["runs"] if run["success"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.stats", description="Summarize a variant's runs of a stage.")
    parser.add_argument("--results", nargs="+", required=True, help="result.json files of the runs")
    parser.add_argument("--output", required=True, help="summary.json to write")
    args = parser.parse_args(argv)
    write_json_atomic(args.output, summarize_runs([read_json(path) for path in args.results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
