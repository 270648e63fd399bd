"""stats: split from workflow/analysis/stats.py."""

from __future__ import annotations

import argparse
import sys

from workflow.analysis.stats import summarize_runs
from workflow.core.io import read_json, write_json_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.stats", description="Summarize a variant's runs of a stage.")
    parser.add_argument("--results", nargs="+", required=True, help="result.json files of the runs")
    parser.add_argument("--output", required=True, help="summary.json to write")
    args = parser.parse_args(argv)
    write_json_atomic(args.output, summarize_runs([read_json(path) for path in args.results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
