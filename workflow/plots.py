"""Report figures (matplotlib, Agg backend, PNG written atomically).

CLI (rules/report.smk)::

    python -m workflow.plots curves --stage A --metrics .../metrics.jsonl ... --output curves_stage_A.png
    python -m workflow.plots val-loss --summaries .../summary.json ... --output val_loss_by_stage.png
"""

from __future__ import annotations

import argparse
import sys

from workflow.analysis.plots import plot_curves, plot_val_loss_by_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.plots")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--stage", required=True)
    c.add_argument("--metrics", nargs="*", default=[])
    c.add_argument("--output", required=True)
    c.add_argument("--variants", nargs="*", default=None, help="all variants of the study, in order (fixes colours)")
    v = sub.add_parser("val-loss")
    v.add_argument("--summaries", nargs="*", default=[])
    v.add_argument("--output", required=True)
    v.add_argument("--variants", nargs="*", default=None, help="all variants of the study, in order")
    args = parser.parse_args(argv)
    if args.command == "curves":
        plot_curves(args.stage, args.metrics, args.output, args.variants)
    else:
        plot_val_loss_by_stage(args.summaries, args.output, args.variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
