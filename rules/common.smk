# Paths and input functions (as in rna-seq-star-deseq2's common.smk; `snakemake --lint` wants functions out of
# the rule files). The rule files spell out their inputs' paths; these say which wildcard values a rule needs.
import functools
import inspect
import json
import os

from snakemake.common import overwrite_function_params

from workflow.study.staging import variant_look_seeds
from workflow.core.io import read_json
from workflow.data.registry import (
    dataset_raw_dir, dataset_raw_inputs, source_file, source_options, study_meta_path, token_options, tokens_dataset,
)
from workflow.study.checks import tokens_folder_options
from workflow.study.resolve import run_config, stage_order, stage_seeds
from workflow.study.script_files import run_files
from workflow.study.trainer_env import redact_trainer
from workflow.study.trainer_section import needs_nanogpt_data

DATA = config["data_dir"]  # {data_dir}/raw/{source}/, {data_dir}/tokens/{tokens}/
RESULTS = f"{config['results_dir']}/{config['study']}"  # every output of the study is under it
STAGES = stage_order(config)
GATED_STAGES = STAGES[:-1]  # every stage but the last ends in a gate; the last in the verdict
FINAL_STAGE = STAGES[-1]
BASELINE = config["baseline"]
# The study's tokenized dataset, {data_dir}/tokens/{dataset}, with "-{hash}" of its token options
# when they are not the defaults: rules/tokenize.smk makes it; its meta.json is every run's input.
STUDY_TOKENS = os.path.dirname(study_meta_path(config))


def per_job(func):
    """Record an input function's signature once: Snakemake inspects it on every call (tens of
    thousands of calls in a study of 1,000 runs); ``snakemake.common.overwrite_function_params``."""
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


# ---- download and tokenize (rules/download.smk, rules/tokenize.smk) ----------------------------
def raw_file_spec(wildcards):
    """Registry entry (url, sha256, bytes) of ``{data_dir}/raw/{source}/{filename}``: its source's
    options (size/hash overrides, shard counts) count, its mirror does not."""
    options = {k: v for k, v in source_options(wildcards.source, config).items() if k != "mirror"}
    return source_file(wildcards.source, wildcards.filename, options)


def raw_file_checks(wildcards):
    """``--options-json`` of the download CLI: only this file's size / sha256 checks."""
    spec = raw_file_spec(wildcards)
    return json.dumps({"raw_files": {wildcards.filename: {"sha256": spec.sha256, "bytes": spec.bytes}}})


def study_dataset_options(wildcards):
    """The study's options of the dataset of ``{tokens}``, checked against the folder's name."""
    return tokens_folder_options(config, wildcards.tokens)


def tokenize_inputs(wildcards):
    """The dataset's raw files ({data_dir}/raw/{source}/..., a custom_text folder's, openwebtext's data_files)."""
    return dataset_raw_inputs(tokens_dataset(wildcards.tokens), DATA, study_dataset_options(wildcards))


def tokenize_raw_dir(wildcards):
    return dataset_raw_dir(tokens_dataset(wildcards.tokens), DATA, study_dataset_options(wildcards))


def tokenize_options_json(wildcards):
    """``--options-json`` of the tokenize job (a param, so the same for every study of the folder):
    the options that change the tokens (workflow.data.registry.token_options, defaults left out)."""
    return json.dumps(token_options(tokens_dataset(wildcards.tokens), study_dataset_options(wildcards)), sort_keys=True)


# ---- seeds: in a sequential last stage (verdict.sequential), each look a checkpoint (rules/gates.smk)
SEQUENTIAL = config["verdict"].get("sequential")


def run_seeds(stage, variant, through=None):
    """Seeds ``variant`` runs in ``stage``: all of the stage's, or, in a sequential last stage, those
    of the looks it stayed open for (the baseline: while any variant is; before look ``through``)."""
    seeds = stage_seeds(config, stage)
    if stage != FINAL_STAGE or not SEQUENTIAL:
        return seeds

    def read_look(k):  # each look is a checkpoint: the DAG is re-evaluated once it is written
        return read_json(checkpoints.look.get(look=k).output[0])

    return variant_look_seeds(seeds, SEQUENTIAL["looks"], variant, BASELINE, read_look, through)[0]


def stage_run_results(stage, variant, through=None):
    """result.json of every run ``variant`` runs in ``stage`` (rules/train.smk)."""
    return [f"{RESULTS}/stage_{stage}/{variant}/seed_{seed}/result.json" for seed in run_seeds(stage, variant, through)]


# ---- training runs (rules/train.smk) ---------------------------------------------------------
@functools.cache
def first_seed_run_config(stage, variant):
    """``run_config`` of (stage, variant) for the stage's first seed, resolved once (merging and
    validating the sections is most of a training job's cost to the DAG)."""
    return run_config(config, stage, variant, stage_seeds(config, stage)[0])


def unredacted_run_config(stage, variant, seed):
    """``run_config(config, stage, variant, seed)``; seeds of one (stage, variant) differ only in
    ``seed`` and ``run_id`` (but for continued runs: workflow.study.staging); a script run's
    trainer with absolute paths (SCRIPT_TRAINERS, rules/checks.smk)."""
    if config["stages"][stage].get("continue_from"):  # per seed: continued runs differ
        cfg = run_config(config, stage, variant, seed)
    else:
        cfg = dict(first_seed_run_config(stage, variant))
        cfg["seed"], cfg["run_id"] = seed, seed - config["base_seed"] - cfg["stage_seed_offset"]
    if "trainer" in cfg:
        cfg["trainer"] = SCRIPT_TRAINERS[(stage, variant)]
    return cfg


def run_config_json(stage, variant, seed):
    """The train rule's ``run_config`` param: the run config as sorted JSON, trainer.env values as
    tokens (workflow.study.trainer_env: a param is stored on disk and shown by ps)."""
    cfg = unredacted_run_config(stage, variant, seed)
    if "trainer" in cfg:
        cfg["trainer"] = redact_trainer(cfg["trainer"])
    return json.dumps(cfg, sort_keys=True)


def script_job_inputs(wildcards):
    """Inputs of a script run besides meta.json: every file it reads that stagerun can know of
    (workflow.study.script_files: script, inputs, files named in args / command / env, local
    imports; their edits rerun exactly the runs that read them) and, when asked for, the dataset
    in nanoGPT's layout (rules/script.smk). None for the built-in trainer."""
    trainer = SCRIPT_TRAINERS.get((wildcards.stage, wildcards.variant))
    if trainer is None:
        return []
    files = run_files(unredacted_run_config(wildcards.stage, wildcards.variant, int(wildcards.seed)),
                      f"{RESULTS}/stage_{wildcards.stage}/{wildcards.variant}/seed_{wildcards.seed}", f"{STUDY_TOKENS}/meta.json",
                      train_resources(wildcards.stage))
    if needs_nanogpt_data(trainer):
        files.append(f"{STUDY_TOKENS}/nanogpt/meta.pkl")
    return files


# ---- which variants run a stage: the gates' decisions (checkpoints, rules/gates.smk) -----------
def gate_decision(stage):
    """The final decision of ``stage``'s gate (checkpoints: known only once they ran): the
    gate's own, or, when it pivoted (gate.pivot), the pivot variant's gate."""
    decision = read_json(checkpoints.gate.get(stage=stage).output[0])
    if (decision.get("pivot") or {}).get("run"):
        decision = read_json(checkpoints.gate_pivot.get(stage=stage).output[0])
    return decision


def stage_pivot(stage):
    """The variant that ran ``stage`` as its gate's pivot, or None."""
    if stage not in GATED_STAGES or not config["stages"][stage]["gate"]["pivot"]:
        return None
    pivot = read_json(checkpoints.gate.get(stage=stage).output[0]).get("pivot") or {}
    return pivot["variant"] if pivot.get("run") else None


def stage_variants(stage, with_pivot=True):
    """Variants that run in ``stage``: all of them in the first stage; afterwards the
    baseline plus those the previous gate advanced (a checkpoint: known only once it ran),
    plus the stage's pivot variant once its gate chose one (``with_pivot``).
    No advanced variant means no jobs in this stage."""
    index = STAGES.index(stage)
    if index == 0:
        variants = list(config["variants"])
    else:
        decision = gate_decision(STAGES[index - 1])
        if not decision["advanced"]:
            return []
        variants = [BASELINE] + [v for v in decision["advanced"] if v != BASELINE]
    pivot = stage_pivot(stage) if with_pivot else None
    return variants + ([pivot] if pivot and pivot not in variants else [])


def all_stage_summaries(wildcards):
    """summary.json of every variant that ran each stage (rules/gates.smk's stats)."""
    return [f"{RESULTS}/stage_{stage}/{v}/summary.json" for stage in STAGES for v in stage_variants(stage)]


def previous_gate(wildcards):
    """For a gate that may pivot: the previous gate's decision (it names the next-best variant)."""
    index = STAGES.index(wildcards.stage)
    if config["stages"][wildcards.stage]["gate"]["pivot"] and index > 0:
        return [f"{RESULTS}/gates/gate_{STAGES[index - 1]}.json"]
    return []


def stage_decision(wildcards):
    """The gate decision(s) of a gated stage (the pivot's gate last), the verdict for the last stage."""
    stage = wildcards.stage
    if stage not in GATED_STAGES:
        return [f"{RESULTS}/verdict.json"]
    return [f"{RESULTS}/gates/gate_{stage}.json"] + ([f"{RESULTS}/gates/gate_{stage}_pivot.json"] if stage_pivot(stage) else [])
