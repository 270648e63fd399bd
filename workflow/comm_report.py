"""Communication-vs-loss report assets: the comm table and figures (rules/comm.smk).

Inputs are the final stage's ``summary.json`` files (workflow.stats: ``val_loss``,
``tokens_per_s``, ``bytes_per_token``, ``tensor_parallel`` = the trainer's record with the
pattern and the nominal / analytic / measured sync counts per forward pass).

CLI::

    python -m workflow.comm_report table --baseline 24comm --summaries ... --csv comm.csv --markdown comm.md
    python -m workflow.comm_report comm-vs-loss --summaries ... --output comm_vs_loss.png [--thresholds 3.28 3.35 3.40]
    python -m workflow.comm_report tokens-per-s --summaries ... --output tokens_per_s_vs_comm.png
    python -m workflow.comm_report bytes-per-token --summaries ... --output bytes_per_token_vs_loss.png

Statistics: means, std and the Student-t 95 % CI from ``workflow.analysis.stats.describe``; the p-value
against the baseline is Welch's two-sided t-test (``scipy.stats.ttest_ind(equal_var=False)``:
does the loss differ?); the trend is a least-squares fit of every run's final val_loss on the
measured syncs per forward, linear (``loss = a + b * syncs``) and logarithmic
(``loss = a + b * ln syncs``), both with ``scipy.stats.linregress``; the figure draws the one
with the higher R^2 and the table names both.
"""

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
