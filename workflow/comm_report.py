"""comm_report: split from workflow/analysis/comm_report.py."""

from __future__ import annotations

import argparse
import sys

from workflow.analysis.comm_report import plot_bytes_per_token, plot_comm_vs_loss, plot_tokens_per_s, write_table
from workflow.core.io import read_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.comm_report")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table")
    t.add_argument("--baseline", required=True)
    t.add_argument("--csv", required=True)
    t.add_argument("--markdown", required=True)
    for name in ("comm-vs-loss", "tokens-per-s", "bytes-per-token"):
        p = sub.add_parser(name)
        p.add_argument("--output", required=True)
        p.add_argument("--variants", nargs="*", default=None, help="all variants of the study, in order (colours)")
        if name == "comm-vs-loss":
            p.add_argument("--thresholds", nargs="*", type=float, default=[])
    for p in sub.choices.values():
        p.add_argument("--summaries", nargs="*", default=[])
    args = parser.parse_args(argv)
    summaries = [read_json(path) for path in args.summaries]
    if args.command == "table":
        write_table(summaries, args.baseline, args.csv, args.markdown)
    elif args.command == "comm-vs-loss":
        plot_comm_vs_loss(summaries, args.output, args.thresholds, args.variants)
    elif args.command == "tokens-per-s":
        plot_tokens_per_s(summaries, args.output, args.variants)
    else:
        plot_bytes_per_token(summaries, args.output, args.variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
