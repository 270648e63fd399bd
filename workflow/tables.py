"""Stage tables and compute accounting for the report (pandas).

CLI (rules/report.smk)::

    python -m workflow.tables stage --stage A --baseline baseline --summaries ... \
        [--decision gate_A.json | verdict.json] [--test paired] --csv table.csv --markdown table.md
    python -m workflow.tables compute --naive-json '{...}' | --config-json '{study}' --summaries ... \
        --csv compute.csv --markdown compute.md
"""

from __future__ import annotations

import argparse
import json
import sys

from workflow.analysis.tables import compute_table, naive_compute, stage_table, write_frame
from workflow.core.io import read_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.tables")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage")
    st.add_argument("--stage", required=True)
    st.add_argument("--baseline", required=True)
    st.add_argument("--summaries", nargs="*", default=[])
    st.add_argument("--decision", nargs="*", default=[], help="gate decision(s) (a pivot's last) or the verdict")
    st.add_argument("--test", default="paired", choices=["paired", "welch"])
    st.add_argument("--csv", required=True)
    st.add_argument("--markdown", required=True)
    co = sub.add_parser("compute")
    plan = co.add_mutually_exclusive_group(required=True)
    plan.add_argument("--naive-json", help="naive_compute()'s dict as JSON (default: computed from --config-json)")
    plan.add_argument("--config-json", help="the validated study config as JSON (the plan is derived from it)")
    co.add_argument("--summaries", nargs="*", default=[])
    co.add_argument("--csv", required=True)
    co.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)
    summaries = [read_json(p) for p in args.summaries]
    if args.command == "stage":
        decisions = [read_json(p) for p in args.decision]
        decision = decisions[-1] if decisions else None
        frame = stage_table(args.stage, summaries, args.baseline, decision, args.test)
        notes = [d["explanation"] for d in decisions]
        if decisions and decisions[0].get("pivot"):
            notes.append(f"Pivot: {decisions[0]['pivot']['reason']}")
        write_frame(frame, args.csv, args.markdown, f"Stage {args.stage}", notes)
    else:
        plan = json.loads(args.naive_json) if args.naive_json else naive_compute(json.loads(args.config_json))
        frame, warnings = compute_table(summaries, plan)
        notes = [
            "FLOPs: the trainer's flops_per_token x tokens seen, summed over resumed attempts (a training script's: "
            "the flops or tokens it reports, or the study's trainer.flops_per_token / tokens_per_step; otherwise "
            "\"unknown\"). GPU-hours: training time "
            "x GPUs (CPU stages: process-hours). Dollars: hours x cost.gpu_hour_usd of the stage's gpu_model "
            "(cpu_hour_usd on CPU). Naive: every variant at the last stage's seeds and length, from its measured FLOPs "
            "per token and the last stage's measured FLOPs per hour.",
            *[f"**WARNING**: {w}" for w in warnings],
        ]
        write_frame(frame, args.csv, args.markdown, "Compute per stage", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
