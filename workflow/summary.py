"""The study's one-page summary: the first thing the HTML report shows.

``summary.html`` (self-contained: tables as HTML, the figure as a data URI) holds, in order:
the winners in one sentence, the verdict table with every p-value column the verdict has
(raw and adjusted) and a short verdict word per variant (its full sentence on hover and listed
below the table), the gate decisions with each variant's one-line reason, the
val_loss-by-stage figure, and compute staged vs naive (``compute.csv``). ``landing.rst`` is
the same answer in two lines of reStructuredText for the report's landing page
(``report/workflow.rst`` includes it).

The tables render whatever columns ``verdict.json`` / ``gate_<S>.json`` / ``compute.csv``
have (nested keys flattened as ``vs_baseline.p_value``), so new statistics appear without
changes here.

CLI (rules/report.smk)::

    python -m workflow.summary --study NAME --verdict verdict.json --gates gate_A.json gate_B.json \
        --compute compute.csv --figure val_loss_by_stage.png --html summary.html --landing landing.rst
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from workflow.analysis.summary import landing_rst, summary_html
from workflow.core.io import read_json, write_text_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--verdict", required=True)
    parser.add_argument("--gates", nargs="*", default=[])
    parser.add_argument("--compute", required=True, help="compute.csv")
    parser.add_argument("--figure", required=True, help="val_loss_by_stage.png")
    parser.add_argument("--html", required=True)
    parser.add_argument("--landing", required=True)
    args = parser.parse_args(argv)
    verdict = read_json(args.verdict)
    gates = [read_json(p) for p in args.gates]
    compute = pd.read_csv(args.compute)
    write_text_atomic(args.html, summary_html(args.study, verdict, gates, compute, args.figure))
    write_text_atomic(args.landing, landing_rst(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
