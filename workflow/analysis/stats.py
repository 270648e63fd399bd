"""Summaries of seeded repeats and the significance tests the gates and verdict use.

The library part; the CLI is ``python -m workflow.stats`` (workflow/stats.py).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests


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


def paired_ttest(sample: Mapping[int, float], reference: Mapping[int, float], alternative: str = "less") -> dict:
    """Paired t-test (``scipy.stats.ttest_rel``) on the seeds both samples have.

    Variants of one stage train with the same seeds (initialisation seed and batch order), so
    run ``seed`` of a variant and run ``seed`` of the baseline form a pair; the test is on the
    per-seed differences ``sample[seed] - reference[seed]`` (H1 default: mean difference < 0,
    i.e. the variant's loss is lower). Valid when the pairs are independent of each other
    and the differences roughly normal; more powerful than Welch's test when the shared seed
    makes the two runs of a pair correlated.

    Args:
        sample, reference: seed -> final val_loss (nats/token).
        alternative: ``"less"``, ``"greater"`` or ``"two-sided"``.
    Returns:
        ``{"statistic", "p_value", "df", "alternative", "n_pairs", "mean_difference"}``;
        statistic / p_value / df are None with fewer than 2 pairs or zero-variance differences.
    """
    seeds = sorted(set(sample) & set(reference))
    a = np.asarray([sample[s] for s in seeds], float)
    b = np.asarray([reference[s] for s in seeds], float)
    out = {"statistic": None, "p_value": None, "df": None, "alternative": alternative, "n_pairs": len(seeds),
           "mean_difference": float((a - b).mean()) if seeds else None}
    d = a - b
    if len(seeds) < 2 or np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # constant differences: no variance
        return out
    res = stats.ttest_rel(a, b, alternative=alternative)
    out.update(statistic=float(res.statistic), p_value=float(res.pvalue), df=float(res.df))
    return out


def compare_to_baseline(sample: Mapping[int, float], reference: Mapping[int, float], test: str) -> dict:
    """One-sided test of H1 "the variant's mean val_loss is below the baseline's".

    Args:
        sample, reference: seed -> final val_loss of the variant's and the baseline's runs.
        test: ``"paired"`` (:func:`paired_ttest` on the shared seeds) or ``"welch"``
            (:func:`welch_ttest` on all values).
    Returns:
        the test's dict plus ``"test"``.
    Raises:
        ValueError: unknown test.
    """
    if test == "paired":
        out = paired_ttest(sample, reference, "less")
    elif test == "welch":
        out = welch_ttest(list(sample.values()), list(reference.values()), "less")
    else:
        raise ValueError(f"verdict.test: unknown test {test!r} (known: paired, welch)")
    return {**out, "test": test}


def holm_adjust(p_values: Sequence[float | None], alpha: float) -> list[float | None]:
    """Holm's step-down adjusted p-values (``statsmodels`` ``multipletests(method="holm")``).

    Args:
        p_values: raw p-values of one family of tests; None (not testable) entries are left
            out of the family and stay None.
        alpha: family-wise error rate (only passed through to statsmodels).
    Returns:
        adjusted p-values in the same order; reject H0 where adjusted p < alpha.
    Source: Holm (1979), "A simple sequentially rejective multiple test procedure".
    """
    index = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if not index:
        return out
    _, adjusted, _, _ = multipletests([p_values[i] for i in index], alpha=alpha, method="holm")
    for i, p in zip(index, adjusted):
        out[i] = float(p)
    return out


def _unique(values: list) -> object:
    """The single distinct value of ``values`` (None when empty), or the sorted distinct values."""
    distinct = sorted({v for v in values if v is not None}, key=str)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def run_gpus(result: dict) -> int:
    """GPUs a run used: its world_size on CUDA, 0 on CPU."""
    return int(result.get("world_size") or 1) if str(result.get("device", "")).startswith("cuda") else 0


def _bytes_per_token(result: dict) -> float | None:
    """A run's communication bytes per training token (result ``bytes_per_token``, or
    ``communication.bytes_per_token``), None when the trainer did not report it."""
    if result.get("bytes_per_token") is not None:
        return result["bytes_per_token"]
    comm = result.get("communication")
    return comm.get("bytes_per_token") if isinstance(comm, dict) else None


def comparable_reason(result: dict) -> str | None:
    """Why a successful run cannot be compared with the others, or None.

    A run stopped by its ``training_hours`` budget is comparable only when its learning-rate
    schedule followed the budget to its end (result ``schedule_progress`` >= 1, see
    :func:`workflow.optim.schedules.schedule_progress`); otherwise it ended with its learning rate
    undecayed and is excluded with this reason.
    """
    if result.get("stopped_early") and float(result.get("schedule_progress") or 0.0) < 1.0:
        return (
            f"not comparable: stopped by {result['stopped_early']} at schedule progress "
            f"{float(result.get('schedule_progress') or 0.0):.2f} (learning-rate schedule not finished)"
        )
    return None


def seed_ignored(ok_results: Sequence[dict]) -> bool:
    """True when two or more successful runs with different seeds gave bit-identical losses:
    the same ``loss_fingerprint`` (a script run's captured loss sequence, workflow.jobs.script_runner)
    or, without one, the same ``final_val_loss`` bits. The training ignores its seed, and the
    repeats are one run counted several times."""
    seeds = {r.get("seed") for r in ok_results}
    if len(ok_results) < 2 or len(seeds) < 2:
        return False
    prints = {r.get("loss_fingerprint") or repr(float(r["final_val_loss"])) for r in ok_results}
    return len(prints) == 1


def seed_ignored_text(n: int) -> str:
    """The reason text of :func:`seed_ignored`, for the gates and the verdict."""
    return (f"the script ignores the seed: its {n} seeds gave bit-identical losses, so the repeats prove "
            "nothing (one run counted several times)")


def mixed_versions(results: Sequence[dict]) -> str | None:
    """Why the script runs among ``results`` do not measure one program: they recorded different
    sha256 of the script or of a file they read (result.json ``trainer.script_sha256`` /
    ``inputs_sha256``, workflow.study.script_files), e.g. the script was edited while a stage ran.
    None when they agree (or no run is a script run)."""
    versions: dict[tuple, list] = {}
    for r in results:
        trainer = r.get("trainer")
        if isinstance(trainer, dict):
            key = (trainer.get("script_sha256"), tuple(sorted((trainer.get("inputs_sha256") or {}).items())))
            versions.setdefault(key, []).append(r.get("seed"))
    if len(versions) < 2:
        return None
    keys = list(versions)
    changed = {Path(r["trainer"]["script"]).name for r in results if isinstance(r.get("trainer"), dict)
               and r["trainer"].get("script")} if len({k[0] for k in keys}) > 1 else set()
    inputs = [dict(k[1]) for k in keys]
    changed |= {Path(p).name for p in set().union(*inputs) if len({i.get(p) for i in inputs}) > 1}
    seeds = "; ".join(", ".join(str(s) for s in sorted(v, key=str)) for v in versions.values())
    return (f"its runs ran {len(versions)} versions of the script or its inputs ({', '.join(sorted(changed))} changed "
            f"between runs; seeds by version: {seeds}): the repeats do not measure one program; run snakemake again "
            "(the runs older than the edit rerun)")


def summarize_runs(results: Sequence[dict]) -> dict:
    """Summary of one variant's runs in one stage (the content of ``summary.json``).

    Args:
        results: the runs' ``result.json`` dicts.
    Returns:
        ``{"stage", "variant", "experiment_name", "end_time", "n_runs", "successful_runs",
        "failed_runs": [{seed, reason}], "excluded_runs": [{seed, reason}], "val_loss":
        describe(...), "time_seconds": describe(...) + {"total"}, "statistics": {n_runs,
        successful_runs, val_loss: {mean, std, min, max, median, ci_95}, time: {mean, std,
        total}}, "tokens_seen_total", "process_seconds_total", "flops_total", "gpu_hours_total",
        "process_hours_total", "bytes_per_token", "git_info", "gpu_info", "runs": [{seed,
        success, status, reason, final_val_loss, time_seconds, tokens_seen, flops}]}``
        (``statistics`` is seed 001's summary.json shape: ``jq .statistics.val_loss.mean``).
        A run is *ok* when ``success`` is true, its final_val_loss finite and it is comparable
        (:func:`comparable_reason`); *failed* when it diverged or crashed (a result of the
        variant, see the gates' max_failed_fraction and the verdict's failed_run_policy);
        *excluded* when it finished but is not comparable. Times are seconds; FLOPs are the
        trainer's ``flops`` (summed over a run's resumed attempts); GPU-hours are
        ``train_time_ms`` x GPUs. Also ``tokens_per_s`` and ``step_ms`` (train_time_ms /
        final_step; describe over ok runs; n 0 when not recorded) and ``tensor_parallel`` (result.json's record of the first ok run with
        tensor-parallel blocks, or None).
    Raises:
        ValueError: the results mix stages or variants.
    """
    keys = {(r.get("stage"), r.get("variant")) for r in results}
    if len(keys) > 1:
        raise ValueError(f"summarize_runs: results of several stage/variant pairs: {sorted(keys)}")
    stage, variant = keys.pop() if keys else (None, None)
    status: dict[int, tuple[str, str | None]] = {}
    for i, r in enumerate(results):
        finite = r.get("final_val_loss") is not None and math.isfinite(r["final_val_loss"])
        if not (r.get("success") and finite):
            status[i] = ("failed", r.get("reason") or "no finite final_val_loss")
        elif (why := comparable_reason(r)) is not None:
            status[i] = ("excluded", why)
        else:
            status[i] = ("ok", None)
    ok = [r for i, r in enumerate(results) if status[i][0] == "ok"]
    ignored = seed_ignored(ok)
    times = [float(r["time_seconds"]) for r in results]
    time_summary = describe(times)
    time_summary["total"] = float(sum(times))
    val_loss = describe([r["final_val_loss"] for r in ok])
    # the workers' own models (result.json final_val_loss_workers; None where they share one model)
    val_loss_workers = describe([_workers_loss(r) for r in ok])
    bpt = [float(b) for r in results if (b := _bytes_per_token(r)) is not None]
    study = _unique([r.get("study") for r in results])
    end_times = [r["end_time"] for r in results if r.get("end_time")]
    order = sorted(range(len(results)), key=lambda i: results[i].get("seed", 0))
    return {
        "stage": stage,
        "variant": variant,
        "experiment_name": f"{study}_{variant}_stage_{stage}",
        "end_time": max(end_times) if end_times else datetime.datetime.now().isoformat(),
        "n_runs": len(results),
        "successful_runs": len(ok),
        "failed_runs": [{"seed": results[i].get("seed"), "reason": status[i][1]} for i in order if status[i][0] == "failed"],
        "excluded_runs": [{"seed": results[i].get("seed"), "reason": status[i][1]} for i in order if status[i][0] == "excluded"],
        "val_loss": val_loss,
        "val_loss_workers": val_loss_workers,
        "time_seconds": time_summary,
        "statistics": {
            "n_runs": len(results),
            "successful_runs": len(ok),
            "val_loss": {k: val_loss[k] for k in ("mean", "std", "min", "max", "median", "ci_95")},
            "time": {"mean": time_summary["mean"], "std": time_summary["std"], "total": time_summary["total"]},
        },
        "tokens_seen_total": int(sum(r.get("tokens_seen") or 0 for r in results)),
        # script runs may report no FLOPs ("unknown", never a made-up number) and may ignore the seed
        "flops_unknown_runs": sum(1 for r in results if r.get("flops_known") is False),
        "tokens_unknown_runs": sum(1 for r in results if "tokens_seen" in r and r["tokens_seen"] is None),
        "seed_ignored": ignored,
        "seed_ignored_reason": seed_ignored_text(len(ok)) if ignored else None,
        # script runs only (built-in summaries keep their keys): the versions they ran
        **({"script_runs": sum("trainer" in r for r in results), "mixed_versions": mixed_versions(ok)}
           if any("trainer" in r for r in results) else {}),
        # communication and tensor parallelism (read defensively: older results lack them)
        "tokens_per_s": describe([r["tokens_per_s"] for r in ok if r.get("tokens_per_s") is not None]),
        # mean training step time (ms: train_time_ms / final_step, evaluations excluded)
        "step_ms": describe([r["train_time_ms"] / r["final_step"] for r in ok if r.get("train_time_ms") and r.get("final_step")]),
        "tensor_parallel": next((r["tensor_parallel"] for r in ok if r.get("tensor_parallel")), None),
        "process_seconds_total": float(sum(r["time_seconds"] * r.get("world_size", 1) for r in results)),
        # a continued run (result continued_from) counts only what it trained itself: its source run paid the rest
        "flops_total": float(sum((r.get("flops") or 0.0) - _inherited(r, "flops") for r in results)),
        "gpu_hours_total": float(sum(_own_ms(r) * run_gpus(r) for r in results) / 3.6e6),
        "process_hours_total": float(sum(_own_ms(r) * int(r.get("world_size") or 1) for r in results) / 3.6e6),
        "continued_runs": sum(1 for r in results if r.get("continued_from")),
        "inherited_flops_total": float(sum(_inherited(r, "flops") for r in results)),
        "inherited_tokens_total": int(sum(_inherited(r, "tokens_seen") for r in results)),
        "bytes_per_token": float(np.mean(bpt)) if bpt else None,
        "git_info": {
            "commit": _unique([r.get("git_commit") for r in results]),
            "dirty": _unique([r.get("git_dirty") for r in results]),
        },
        "gpu_info": {
            "device": _unique([r.get("device") for r in results]),
            "device_name": _unique([r.get("device_name") for r in results]),
            "world_size": _unique([r.get("world_size") for r in results]),
            "gpus_per_run": _unique([run_gpus(r) for r in results]),
            "peak_flops": _unique([r.get("peak_flops") for r in results]),
        },
        "runs": [
            {
                "seed": results[i].get("seed"),
                "success": status[i][0] == "ok",
                "status": status[i][0],
                "reason": results[i].get("reason") if status[i][0] != "excluded" else status[i][1],
                "final_val_loss": results[i].get("final_val_loss"),
                "final_val_loss_workers": _workers_loss(results[i]),
                "time_seconds": results[i].get("time_seconds"),
                "tokens_seen": results[i].get("tokens_seen"),
                "flops": results[i].get("flops"),
            }
            for i in order
        ],
    }


def _inherited(result: dict, key: str) -> float:
    """What a continued run's source run trained before the branch (``continued_from``), 0 otherwise."""
    return float((result.get("continued_from") or {}).get(key) or 0.0)


def _own_ms(result: dict) -> float:
    return (result.get("train_time_ms") or 0.0) - _inherited(result, "train_time_ms")


def _workers_loss(result: dict) -> float | None:
    """A run's final mean over workers of their own models' val_loss: ``final_val_loss_workers``,
    or ``final_val_loss`` where the workers share one model (DDP: the record is None)."""
    value = result.get("final_val_loss_workers")
    return result.get("final_val_loss") if value is None else value


SCORE_METRICS = ("val_loss", "val_loss_workers")


def metric_view(summary: dict, metric: str) -> dict:
    """``summary`` as the gates and the verdict read it when they compare ``metric``.

    Args:
        summary: a :func:`summarize_runs` dict.
        metric: "val_loss" (the scored model: returned unchanged) or "val_loss_workers" (the
            mean of the workers' own models' val_loss, nats/token; MozarTuring/DeMuon's reported
            loss): a copy whose ``val_loss`` and runs' ``final_val_loss`` hold that metric.
    Raises:
        ValueError: an unknown metric.
    """
    if metric not in SCORE_METRICS:
        raise ValueError(f"metric {metric!r} is unknown; valid: {list(SCORE_METRICS)}")
    if metric == "val_loss":
        return summary
    runs = [{**run, "final_val_loss": run.get("final_val_loss_workers", run.get("final_val_loss"))}
            for run in summary["runs"]]
    values = [run["final_val_loss"] for run in runs if run["success"]]
    return {**summary, "val_loss": describe(values), "runs": runs}


def successful_val_losses(summary: dict) -> list[float]:
    """Final val_loss of each successful run in a ``summary.json`` dict, in seed order."""
    return [run["final_val_loss"] for run in summary["runs"] if run["success"]]


def val_losses_by_seed(summary: dict, penalty: float | None = None) -> dict[int, float]:
    """seed -> final val_loss of a ``summary.json`` dict's successful runs.

    Args:
        summary: the variant's summary.
        penalty: when given, failed runs (status ``failed``: diverged or crashed) count at this
            loss, e.g. ln(vocab_size), the loss of a uniform prediction (the verdict's
            ``failed_run_policy: penalty``); excluded (not comparable) runs never count.
    """
    out = {}
    for run in summary["runs"]:
        if run["success"]:
            out[run["seed"]] = float(run["final_val_loss"])
        elif penalty is not None and run.get("status", "failed") == "failed":
            out[run["seed"]] = float(penalty)
    return out
