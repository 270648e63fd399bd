"""sweep: split from workflow/study/overrides.py."""

from __future__ import annotations

import argparse
import sys

from workflow.study.explain import report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report-path", help="the study's report path")
    rp.add_argument("study", nargs="?", default="config/config.yaml")
    args = parser.parse_args(argv)
    print(report_path(args.study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
