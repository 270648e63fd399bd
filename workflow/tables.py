"""Stage tables and compute accounting for the report (pandas).

CLI (rules/report.smk)::

    python -m workflow.tables stage --stage A --baseline baseline --summaries ... \
        [--decision gate_A.json | verdict.json] --csv table.csv --markdown table.md
    python -m workflow.tables compute --plan-json '{...}' | --config-json '{study}' --summaries ... \
        --csv compute.csv --markdown compute.md
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from workflow.io import atomic_write, read_json, write_text_atomic
from workflow.stats import successful_val_losses, welch_ttest


def stage_table(stage: str, summaries: list[dict], baseline: str, decision: dict | None) -> pd.DataFrame:
    """One row per variant of a stage: val_loss mean, std, CI95, min/median/max, runs,
    time, Welch p-value against the baseline (one-sided, H1: lower loss) and what the
    gate (or verdict) decided.

    Args:
        stage: stage name.
        summaries: summary.json dicts of the stage's variants.
        baseline: baseline variant name.
        decision: the stage's gate decision, or the verdict for the last stage, or None.
    Returns:
        DataFrame sorted with the baseline first, then by mean val_loss.
    """
    base = next((s for s in summaries if s["variant"] == baseline), None)
    base_losses = successful_val_losses(base) if base else []
    outcome: dict[str, str] = {}
    if decision and "ranking" in decision:
        outcome = {r["variant"]: ("advanced" if r["advanced"] else "stopped") for r in decision["ranking"]}
        outcome[baseline] = "baseline"
    elif decision and "results" in decision:
        outcome = {r["variant"]: r["verdict"] for r in decision["results"]}
    rows = []
    for summ in summaries:
        vl = summ["val_loss"]
        ci = vl["ci_95"] or [None, None]
        p = None if summ["variant"] == baseline else welch_ttest(successful_val_losses(summ), base_losses)["p_value"]
        rows.append(
            {
                "stage": stage,
                "variant": summ["variant"],
                "runs": summ["n_runs"],
                "successful_runs": summ["successful_runs"],
                "val_loss_mean": vl["mean"],
                "val_loss_std": vl["std"],
                "ci95_low": ci[0],
                "ci95_high": ci[1],
                "val_loss_min": vl["min"],
                "val_loss_median": vl["median"],
                "val_loss_max": vl["max"],
                "p_vs_baseline": p,
                "time_mean_s": summ["time_seconds"]["mean"],
                "time_std_s": summ["time_seconds"]["std"],
                "time_total_s": summ["time_seconds"]["total"],
                "outcome": outcome.get(summ["variant"], ""),
            }
        )
    columns = list(rows[0]) if rows else ["stage", "variant"]
    frame = pd.DataFrame(rows, columns=columns)
    if rows:
        frame["_order"] = frame["variant"] != baseline
        frame = frame.sort_values(["_order", "val_loss_mean"], na_position="last").drop(columns="_order")
    return frame.reset_index(drop=True)


def compute_table(summaries: list[dict], plan: dict) -> pd.DataFrame:
    """Compute spent per stage versus the naive plan (every variant, final-stage seeds and length).

    Args:
        summaries: summary.json dicts of every (stage, variant) that ran.
        plan: ``{"stages": [names in order], "first_stage": name, "naive": {variant:
            {"runs": int, "tokens_per_run": int}}}`` from :func:`naive_plan`.
    Returns:
        One row per stage plus ``staged total`` and ``naive`` rows: runs, tokens (trained
        tokens, exact), process_seconds (wall seconds x processes; naive: estimated from each
        variant's measured seconds per token in the first stage) and fraction of naive.
    """
    rows = []
    for stage in plan["stages"]:
        ss = [s for s in summaries if s["stage"] == stage]
        rows.append(
            {
                "stage": stage,
                "variants": len(ss),
                "runs": sum(s["n_runs"] for s in ss),
                "tokens": sum(s["tokens_seen_total"] for s in ss),
                "process_seconds": sum(s["process_seconds_total"] for s in ss),
            }
        )
    total = {
        "stage": "staged total",
        "variants": len({s["variant"] for s in summaries}),
        "runs": sum(r["runs"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "process_seconds": sum(r["process_seconds"] for r in rows),
    }
    first = {s["variant"]: s for s in summaries if s["stage"] == plan["first_stage"]}
    naive_seconds = 0.0
    for variant, spec in plan["naive"].items():
        measured = first.get(variant)
        if measured and measured["tokens_seen_total"]:
            naive_seconds += measured["process_seconds_total"] / measured["tokens_seen_total"] * spec["tokens_per_run"] * spec["runs"]
    naive = {
        "stage": "naive (all variants at final stage)",
        "variants": len(plan["naive"]),
        "runs": sum(spec["runs"] for spec in plan["naive"].values()),
        "tokens": sum(spec["runs"] * spec["tokens_per_run"] for spec in plan["naive"].values()),
        "process_seconds": naive_seconds,
    }
    frame = pd.DataFrame([*rows, total, naive])
    frame["fraction_of_naive_tokens"] = frame["tokens"] / naive["tokens"] if naive["tokens"] else None
    return frame


def naive_plan(config: dict) -> dict:
    """What running every variant with the final stage's seeds and length would take.

    Returns the ``plan`` argument of :func:`compute_table`; tokens per run =
    num_iterations x batch_size x block_size of each variant's final-stage run config.
    """
    from workflow.config import run_config, stage_order
    from workflow.model import build_model_config

    stages = stage_order(config)
    final = stages[-1]
    naive = {}
    for variant in config["variants"]:
        cfg = run_config(config, final, variant, config["base_seed"])
        block_size = build_model_config(dict(cfg["model"]), 256).block_size
        naive[variant] = {
            "runs": config["stages"][final]["seeds"],
            "tokens_per_run": cfg["train"]["num_iterations"] * cfg["train"]["batch_size"] * block_size,
        }
    return {"stages": stages, "first_stage": stages[0], "naive": naive}


def _write_frame(frame: pd.DataFrame, csv_path: str, md_path: str, title: str) -> None:
    with atomic_write(csv_path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)
    body = frame.to_markdown(index=False, floatfmt=".4g") if len(frame) else "(no runs)"
    write_text_atomic(md_path, f"# {title}\n\n{body}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.tables")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage")
    st.add_argument("--stage", required=True)
    st.add_argument("--baseline", required=True)
    st.add_argument("--summaries", nargs="*", default=[])
    st.add_argument("--decision")
    st.add_argument("--csv", required=True)
    st.add_argument("--markdown", required=True)
    co = sub.add_parser("compute")
    plan = co.add_mutually_exclusive_group(required=True)
    plan.add_argument("--plan-json", help="the plan of naive_plan() as JSON")
    plan.add_argument("--config-json", help="the validated study config as JSON (the plan is derived from it)")
    co.add_argument("--summaries", nargs="*", default=[])
    co.add_argument("--csv", required=True)
    co.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)
    summaries = [read_json(p) for p in args.summaries]
    if args.command == "stage":
        decision = read_json(args.decision) if args.decision else None
        frame = stage_table(args.stage, summaries, args.baseline, decision)
        _write_frame(frame, args.csv, args.markdown, f"Stage {args.stage}")
    else:
        plan = json.loads(args.plan_json) if args.plan_json else naive_plan(json.loads(args.config_json))
        frame = compute_table(summaries, plan)
        _write_frame(frame, args.csv, args.markdown, "Compute per stage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
