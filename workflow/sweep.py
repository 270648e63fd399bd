"""Driving a study: grid sweeps, one-off overrides, the plan up front, and why runs rerun.

Everything here is torch-free and runs where Snakemake parses the workflow (the Snakefile
calls :func:`prepare_study` before schema validation, so expanded and overridden studies are
validated like hand-written ones).

Grid sweeps (``sweep:`` in a study; like Hydra's multirun or a W&B grid sweep)::

    sweep:
      train.lr: [1.0e-3, 2.0e-3, 4.0e-3]
      model.n_embd: [64, 96]

adds one variant per point of the Cartesian product (here 6), named from the swept keys'
last parts and values: ``lr-0.001_n_embd-64``, ... (:func:`sweep_variant_name`). Keys are
``model.<key>`` or ``train.<key>`` (nested keys with more dots, e.g. ``train.strategy.tau``);
values must be lists (``1e-3`` counts as a number, although YAML 1.1 reads it as a string).
The generated variants join the hand-written ones (the baseline stays
hand-written) and go through the schema and ``check_study`` like them.

One-off overrides of any nested key, from the command line, without copying the YAML::

    snakemake --cores all --config set='stages.C.train.num_iterations=350' -- stage_C
    snakemake --cores all --config set='[train.lr=3e-3, stages.A.seeds=3]'

``set`` is a ``KEY=VALUE`` string or a list of them (Snakemake parses ``--config`` values
as YAML, so the list form works as written). KEY is a dotted path into the study (a
component may itself contain dots when it names an existing key, e.g. a variant
``lr-1.5e-3``); VALUE is parsed as YAML (``1e-3`` as a number). Overrides apply before the
sweep is expanded and before validation. A study file may also hold ``set:``.

The plan up front (:func:`format_printed_plan`), printed once when Snakemake parses the workflow:
per stage the most runs it can add (gates decide how many variants advance: ``top_k``
advances k, ties at the cut aside; ``beats_baseline`` at most every variant that reached
it), seeds, processes and GPUs per run, steps and tokens per run, and the totals.

Why runs rerun (:func:`explain_reruns`; ``snakemake --cores 1 why_rerun``): every finished
run's recorded config (``result.json`` ``config``) against the config the study gives it
now, with the keys that differ, grouped by change.

CLI: ``python -m workflow.sweep report-path [STUDY.yaml]`` prints the study's report path,
``{results_dir}/{study}/report.html`` (what ``make run STUDY=...`` passes to ``--report``).
"""

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
