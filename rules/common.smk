# Helpers shared by the rules: study resolution, paths, input functions, resources.
import json
import os
import sys

from workflow.config import check_model_configs, check_study, run_config, stage_order, stage_resources, stage_seeds
from workflow.io import read_json

# Semantic checks the schema cannot express; they stop before any job is scheduled
# (in the main process only: job steps on a cluster node re-read this file).
if workflow.is_main_process:
    check_study(config)
    check_model_configs(config)

# Jobs run `python -m workflow.<step>` from any working directory, with this interpreter
# (first on PATH, so a conda env activated for a rule still takes precedence).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))
os.environ["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(sys.executable), os.environ.get("PATH")]))

# Light Python steps run in the Snakemake process's machine, not as cluster jobs.
localrules:
    summarize_variant,
    gate,
    verdict,
    stage_table,
    curves_plot,
    val_loss_plot,
    compute_table,

DATA = config["data_dir"]
RESULTS = f"{config['results_dir']}/{config['study']}"
STAGES = stage_order(config)
GATED_STAGES = STAGES[:-1]
FINAL_STAGE = STAGES[-1]
BASELINE = config["baseline"]


wildcard_constraints:
    stage="|".join(STAGES),
    seed=r"\d+",
    variant=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def dataset_meta(dataset=None):
    """meta.json of the study's (or the named) tokenized dataset."""
    return f"{DATA}/tokens/{dataset or config['dataset']}/meta.json"


def run_dir(stage, variant, seed):
    return f"{RESULTS}/stage_{stage}/{variant}/seed_{seed}"


def stage_variants(stage):
    """Variants that run in ``stage``: all of them in the first stage; afterwards the
    baseline plus those the previous gate advanced (a checkpoint: known only once it ran).
    No advanced variant means no jobs in this stage."""
    index = STAGES.index(stage)
    if index == 0:
        return list(config["variants"])
    decision = read_json(checkpoints.gate.get(stage=STAGES[index - 1]).output[0])
    if not decision["advanced"]:
        return []
    return [BASELINE] + [v for v in decision["advanced"] if v != BASELINE]


def stage_run_results(stage, variant):
    return [f"{run_dir(stage, variant, seed)}/result.json" for seed in stage_seeds(config, stage)]


def stage_summaries(stage):
    return [f"{RESULTS}/stage_{stage}/{variant}/summary.json" for variant in stage_variants(stage)]


def stage_metrics(stage):
    return [
        f"{run_dir(stage, variant, seed)}/metrics.jsonl"
        for variant in stage_variants(stage)
        for seed in stage_seeds(config, stage)
    ]


def all_stage_summaries(wildcards=None):
    return [path for stage in STAGES for path in stage_summaries(stage)]


def all_run_results(wildcards=None):
    return [
        path
        for stage in STAGES
        for variant in stage_variants(stage)
        for path in stage_run_results(stage, variant)
    ]


def gate_files(wildcards=None):
    return [f"{RESULTS}/gates/gate_{stage}.json" for stage in GATED_STAGES]


def train_resources(stage):
    """Resources of a training job of ``stage`` (config ``stages.<S>.resources``)."""
    return stage_resources(config, stage)


def all_targets():
    return [
        f"{RESULTS}/verdict.json",
        f"{RESULTS}/compute.csv",
        f"{RESULTS}/plots/val_loss_by_stage.png",
        *[f"{RESULTS}/stage_{stage}/table.csv" for stage in STAGES],
        *[f"{RESULTS}/plots/curves_stage_{stage}.png" for stage in STAGES],
        lambda w: [f"{RESULTS}/samples/stage_{FINAL_STAGE}/{v}/seed_{config['base_seed']}.txt" for v in stage_variants(FINAL_STAGE)],
    ]
