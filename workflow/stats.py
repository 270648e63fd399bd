"""Summaries of seeded repeats and the significance tests the gates and verdict use.

All statistics come from :mod:`numpy`, :mod:`scipy.stats` and :mod:`statsmodels`: sample
standard deviation (ddof=1), the Student-t 95 % confidence interval of the mean
(``scipy.stats.t.interval``), Welch's unequal-variance t-test
(``scipy.stats.ttest_ind(equal_var=False)``), the paired t-test on seed-matched runs
(``scipy.stats.ttest_rel``), the one-sample t-test (``scipy.stats.ttest_1samp``), as
modded-nanogpt uses for its record rule ("p < 0.01 that the mean val_loss is below the
target"), and Holm's step-down correction (``statsmodels.stats.multitest.multipletests``).
See docs/statistics.md.

CLI (what rules/gates.smk runs)::

    python -m workflow.stats --results r1/result.json r2/result.json --output summary.json
"""

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
