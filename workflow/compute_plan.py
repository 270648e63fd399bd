"""The compute plan of a study, before any training: FLOPs, GPU-hours and dollars per stage
against the naive plan (every variant with the last stage's seeds and length).

Per run: tokens = ``batch_size x`` each step's sequence length over the run's steps (a
curriculum's shorter sequences included, :func:`workflow.optim.schedules.tokens_for_steps`; run length
from ``num_iterations`` / ``num_tokens``), FLOPs = tokens x the trainer's ``flops_per_token``
(``6 N + 12 L H Q T``, workflow.model.flops). GPU-hours = FLOPs / (peak FLOP/s of the
stage's ``gpu_model`` x ``cost.planning_mfu``) / 3600; dollars = GPU-hours x
``cost.gpu_hour_usd[gpu_model]`` (CPU stages: process-hours are unknown ahead, dollars 0).

Which variants run after a gate is decided only by the gate; the plan assumes ``top_k``
advances k variants and ``beats_baseline`` / ``beats_baseline_ci`` pass every variant that
reached them (an upper bound), each at the mean cost of the non-baseline variants. The
baseline runs in every stage (the reference at equal length and seeds): the plan counts it,
and also shows seed 001's count, which leaves the baseline's later-stage runs out.

Warnings: the staged plan costs more than the naive one (staging does not pay off), staged
plan + reserve exceed ``cost.budget_usd``, or the reserve does not pay for a gate's pivot.

CLI (needs no data and no training; reads the dataset's meta.json for vocab_size when it
exists, else estimates it from the tokenizer)::

    python -m workflow.compute_plan --configfile config/studies/speedrun.yaml [--json plan.json] [--markdown plan.md]
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from workflow.analysis.compute_plan import compute_plan, plan_markdown, planning_vocab_size
from workflow.core.io import write_json_atomic, write_text_atomic
from workflow.study.resolve import study_with_defaults
from workflow.study.study_file import load_study_files


def load_study(configfiles: list[str], overrides: list[str] | None = None) -> dict:
    """Read study YAML files (later ones override earlier ones, as ``snakemake --configfile``)
    plus ``key=value`` overrides (YAML values), validated with defaults filled.

    Raises:
        workflow.study.schema.ConfigError: naming the key at fault.
    """
    config = load_study_files(configfiles)  # strict: duplicate keys refused, names as written, 2e-3 a number
    for item in overrides or []:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    return study_with_defaults(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.compute_plan", description="The compute plan of a study.")
    parser.add_argument("--configfile", nargs="+", default=[], help="study YAML file(s), as snakemake --configfile")
    parser.add_argument("--config", nargs="*", default=[], help="key=value overrides, as snakemake --config")
    parser.add_argument("--config-json", help="the resolved study as JSON (what the Snakemake rule passes)")
    parser.add_argument("--json", help="write the plan as JSON here")
    parser.add_argument("--markdown", help="write the plan as Markdown here (default: print it)")
    args = parser.parse_args(argv)
    if not args.configfile and not args.config_json:
        parser.error("give --configfile (study YAML files) or --config-json")
    config = study_with_defaults(json.loads(args.config_json)) if args.config_json else load_study(args.configfile, args.config)
    vocab, source = planning_vocab_size(config)
    plan = compute_plan(config, vocab, source)
    text = plan_markdown(plan)
    if args.json:
        write_json_atomic(args.json, plan)
    if args.markdown:
        write_text_atomic(args.markdown, text)
    else:
        print(text)
    for warning in plan["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
