"""Gate decisions between stages and the final verdict.

A gate reads the per-variant summaries of a stage (``summary.json``, see
:func:`workflow.stats.summarize_runs`) and decides which variants advance. The
baseline is never "advanced": it runs in every stage as the reference.

Rules (``stages.<S>.gate.rule``):

``top_k``
    Eligible variants (at least ``min_successful_runs`` successful seeds: with fewer,
    the seed-to-seed variance cannot be estimated) are ranked by mean val_loss, ties
    broken by lower std, then name. The k best advance, and so does every variant whose
    mean is within ``tie_tolerance`` of the k-th mean (a tie at the cut is not broken
    by noise: all tied variants advance).
``beats_baseline``
    Eligible variants whose mean val_loss is strictly below the baseline's mean
    advance. Welch's p-value (H1: variant < baseline) is reported, not required:
    significance is asked of stage C by the verdict. If the baseline itself has too
    few successful runs, nothing advances (there is no reference).

The verdict (last stage) follows modded-nanogpt's record rule: a one-sided
one-sample t-test of each variant's seeds against ``target_val_loss`` and a one-sided
Welch t-test against the baseline's seeds, both at level ``alpha``.

CLI::

    python -m workflow.gates gate --stage A --gate-json '{"rule": "top_k", "k": 2}' \
        --baseline baseline --summaries s1.json s2.json --output gate_A.json
    python -m workflow.gates verdict --baseline baseline --alpha 0.01 --target-val-loss 2.2 \
        --summaries ... --output verdict.json --markdown verdict.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

import pandas as pd

from workflow.io import read_json, write_json_atomic, write_text_atomic
from workflow.stats import one_sample_ttest, successful_val_losses, welch_ttest

GATE_DEFAULTS = {"k": 2, "min_successful_runs": 2, "tie_tolerance": 0.0}


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def decide_gate(stage: str, gate: Mapping, summaries: Mapping[str, dict], baseline: str) -> dict:
    """Decide which variants of ``stage`` advance to the next stage.

    Args:
        stage: stage name, e.g. ``"A"``.
        gate: ``{"rule": "top_k" | "beats_baseline", "k", "min_successful_runs", "tie_tolerance"}``.
        summaries: variant name -> its summary.json dict for this stage (the baseline included,
            when it ran in this stage).
        baseline: name of the baseline variant.
    Returns:
        ``{"stage", "rule", "params", "baseline", "advanced": [names], "carried": [baseline],
        "ranking": [{variant, mean, std, ci_95, successful_runs, n_runs, failed_runs, eligible,
        advanced, reason}], "failed_runs": {variant: [...]}, "explanation": str}``.
    Raises:
        ValueError: unknown rule.
    """
    params = {**GATE_DEFAULTS, **{k: v for k, v in gate.items() if k != "rule"}}
    rule = gate["rule"]
    min_ok = params["min_successful_runs"]
    rows = []
    for name, summ in summaries.items():
        rows.append(
            {
                "variant": name,
                "mean": summ["val_loss"]["mean"],
                "std": summ["val_loss"]["std"],
                "ci_95": summ["val_loss"]["ci_95"],
                "successful_runs": summ["successful_runs"],
                "n_runs": summ["n_runs"],
                "failed_runs": summ["failed_runs"],
                "eligible": summ["successful_runs"] >= min_ok,
                "advanced": False,
                "reason": "",
            }
        )
    by_name = {row["variant"]: row for row in rows}
    for row in rows:
        if not row["eligible"]:
            row["reason"] = (
                f"only {row['successful_runs']} of {row['n_runs']} runs succeeded (< min_successful_runs={min_ok}): "
                "variance cannot be estimated, not eligible"
            )
    base_row = by_name.get(baseline)
    if base_row is not None:
        base_row["reason"] = "baseline: runs in every stage as the reference" + (
            "" if base_row["eligible"] else f"; {base_row['reason']}"
        )

    candidates = sorted(
        (r for r in rows if r["eligible"] and r["variant"] != baseline),
        # Means are compared at 1e-9 so float round-off (1.8 vs 1.7999999999999998) is a tie.
        key=lambda r: (round(r["mean"], 9), r["std"] if r["std"] is not None else float("inf"), r["variant"]),
    )
    if rule == "top_k":
        k, tol = params["k"], params["tie_tolerance"]
        cutoff = candidates[min(k, len(candidates)) - 1]["mean"] if candidates else None
        for rank, row in enumerate(candidates, start=1):
            if rank <= k:
                row["advanced"] = True
                row["reason"] = f"rank {rank} of {len(candidates)} by mean val_loss {_fmt(row['mean'])} (top {k})"
            elif row["mean"] <= cutoff + tol + 1e-9:
                row["advanced"] = True
                row["reason"] = (
                    f"rank {rank}: mean {_fmt(row['mean'])} ties the cut-off {_fmt(cutoff)} "
                    f"(within tie_tolerance {tol}); ties at the cut all advance"
                )
            else:
                row["reason"] = f"rank {rank}: mean {_fmt(row['mean'])} above the cut-off {_fmt(cutoff)} of the top {k}"
        explanation = (
            f"top_k: the {k} eligible variants with the lowest mean val_loss advance; means within "
            f"{params['tie_tolerance']} of the k-th mean count as ties and advance too; ties in mean are ordered by "
            f"lower std. Variants need >= {min_ok} successful runs to be eligible."
        )
    elif rule == "beats_baseline":
        if base_row is None or not base_row["eligible"]:
            for row in candidates:
                row["reason"] = "baseline has too few successful runs to compare with: nothing advances"
            explanation = "beats_baseline: no eligible baseline in this stage, so no variant can advance."
        else:
            base_losses = successful_val_losses(summaries[baseline])
            for row in candidates:
                test = welch_ttest(successful_val_losses(summaries[row["variant"]]), base_losses, "less")
                row["welch_p_value"] = test["p_value"]
                delta = row["mean"] - base_row["mean"]
                row["advanced"] = delta < 0
                verb = "beats" if delta < 0 else "does not beat"
                row["reason"] = (
                    f"mean {_fmt(row['mean'])} {verb} the baseline's {_fmt(base_row['mean'])} "
                    f"(delta {delta:+.4f}, Welch one-sided p={_fmt(test['p_value'], 3)})"
                )
            explanation = (
                f"beats_baseline: eligible variants (>= {min_ok} successful runs) whose mean val_loss is below the "
                "baseline's advance; the p-value is reported for information, significance is tested at the verdict."
            )
    else:
        raise ValueError(f"gate.rule: unknown rule {rule!r} (known: top_k, beats_baseline)")

    order = {row["variant"]: i for i, row in enumerate(candidates)}
    rows.sort(key=lambda r: (r["variant"] != baseline, order.get(r["variant"], len(order)), r["variant"]))
    return {
        "stage": stage,
        "rule": rule,
        "params": params,
        "baseline": baseline,
        "advanced": [row["variant"] for row in candidates if row["advanced"]],
        "carried": [baseline],
        "ranking": rows,
        "failed_runs": {row["variant"]: row["failed_runs"] for row in rows if row["failed_runs"]},
        "explanation": explanation,
    }


def decide_verdict(summaries: Mapping[str, dict], baseline: str, alpha: float, target_val_loss: float | None) -> dict:
    """Significance verdict of the last stage.

    For each variant (and the baseline against the target): one-sided Welch t-test
    (H1: variant mean val_loss < baseline mean) and one-sided one-sample t-test
    (H1: mean < ``target_val_loss``), each significant when p < ``alpha``.

    Returns:
        ``{"baseline", "alpha", "target_val_loss", "results": [{variant, n, mean, std, ci_95,
        vs_baseline, vs_target, beats_baseline, beats_target, verdict}], "winners": [...]}``.
    """
    base = summaries.get(baseline)
    base_losses = successful_val_losses(base) if base else []
    results = []
    for name, summ in summaries.items():
        losses = successful_val_losses(summ)
        entry = {
            "variant": name,
            "n": len(losses),
            "mean": summ["val_loss"]["mean"],
            "std": summ["val_loss"]["std"],
            "ci_95": summ["val_loss"]["ci_95"],
            "failed_runs": summ["failed_runs"],
        }
        vs_target = one_sample_ttest(losses, target_val_loss, "less") if target_val_loss is not None else None
        entry["vs_target"] = vs_target
        entry["beats_target"] = bool(vs_target and vs_target["p_value"] is not None and vs_target["p_value"] < alpha)
        if name == baseline:
            entry["vs_baseline"] = None
            entry["beats_baseline"] = None
            entry["verdict"] = "reference"
        else:
            vs_base = welch_ttest(losses, base_losses, "less")
            entry["vs_baseline"] = vs_base
            entry["beats_baseline"] = vs_base["p_value"] is not None and vs_base["p_value"] < alpha
            if entry["beats_baseline"]:
                entry["verdict"] = f"significantly better than {baseline} (p={vs_base['p_value']:.2g} < {alpha})"
            elif vs_base["p_value"] is None:
                entry["verdict"] = "not testable (fewer than 2 successful runs on one side)"
            else:
                entry["verdict"] = f"not significantly better than {baseline} (p={vs_base['p_value']:.2g} >= {alpha})"
        results.append(entry)
    results.sort(key=lambda e: (e["variant"] != baseline, e["mean"] if e["mean"] is not None else float("inf")))
    return {
        "baseline": baseline,
        "alpha": alpha,
        "target_val_loss": target_val_loss,
        "results": results,
        "winners": [e["variant"] for e in results if e["beats_baseline"]],
        "explanation": (
            f"One-sided Welch t-test against {baseline} and one-sided one-sample t-test against target_val_loss "
            f"({target_val_loss}), significant at p < {alpha} (scipy.stats)."
            if results and len(results) > 1
            else "No variant reached the last stage: nothing to test against the baseline."
        ),
    }


def verdict_markdown(verdict: dict) -> str:
    """The verdict as a Markdown table (pandas ``to_markdown``)."""
    rows = []
    for e in verdict["results"]:
        rows.append(
            {
                "variant": e["variant"],
                "n": e["n"],
                "mean val_loss": e["mean"],
                "std": e["std"],
                "p vs baseline": (e["vs_baseline"] or {}).get("p_value"),
                "p vs target": (e["vs_target"] or {}).get("p_value"),
                "verdict": e["verdict"],
            }
        )
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g") if rows else "(no runs)"
    winners = ", ".join(verdict["winners"]) or "none"
    return f"# Verdict\n\n{verdict['explanation']}\n\nSignificant improvements: **{winners}**\n\n{table}\n"


def _load_summaries(paths: list[str]) -> dict[str, dict]:
    summaries = {}
    for path in paths:
        summ = read_json(path)
        summaries[summ["variant"]] = summ
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.gates", description="Gate decisions and the verdict.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gate")
    g.add_argument("--stage", required=True)
    g.add_argument("--gate-json", required=True)
    g.add_argument("--baseline", required=True)
    g.add_argument("--summaries", nargs="*", default=[])
    g.add_argument("--output", required=True)
    v = sub.add_parser("verdict")
    v.add_argument("--baseline", required=True)
    v.add_argument("--alpha", type=float, required=True)
    v.add_argument("--target-val-loss", type=float, default=None)
    v.add_argument("--summaries", nargs="*", default=[])
    v.add_argument("--output", required=True)
    v.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)
    summaries = _load_summaries(args.summaries)
    if args.command == "gate":
        write_json_atomic(args.output, decide_gate(args.stage, json.loads(args.gate_json), summaries, args.baseline))
    else:
        verdict = decide_verdict(summaries, args.baseline, args.alpha, args.target_val_loss)
        write_json_atomic(args.output, verdict)
        write_text_atomic(args.markdown, verdict_markdown(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
