# Helpers shared by the rules: study resolution, paths, input functions, resources.
import functools
import inspect
import json
import os
import sys
import uuid
from pathlib import Path

try:  # Snakemake >= 8; without it input functions are just inspected on every call
    from snakemake.common import overwrite_function_params
except ImportError:
    overwrite_function_params = lambda func, params: None

from workflow.core.io import read_json
from workflow.data.registry import (
    DATASETS,
    SOURCES,
    RUNTIME_OPTIONS,
    dataset_raw_dir,
    dataset_raw_inputs,
    source_file,
    source_mirror,
    source_options,
    study_meta_path,
    token_options,
    tokens_dataset,
    tokens_dir_name,
)
from workflow.jobs.launcher import has_nvidia_gpu
from workflow.study.checks import (
    check_data_vocab, check_model_configs, check_study, check_trainers, comm_study_variants, gpt2_scale,
)
from workflow.study.printed_plan import format_plan
from workflow.study.resolve import run_config, stage_order, stage_seeds
from workflow.analysis.sequential_verdict import look_seeds
from workflow.study.resources import group_components, launch_command, slurm_resources, stage_resources, train_group
from workflow.study.trainer_section import needs_nanogpt_data

# Semantic checks the schema cannot express; they stop before any job is scheduled
# (in the main process only: job steps on a cluster node re-read this file).
if workflow.is_main_process:
    check_study(config)
    check_model_configs(config)
    print(format_plan(config), file=sys.stderr)  # the most each stage can run, once at the start


DATA = config["data_dir"]
RESULTS = f"{config['results_dir']}/{config['study']}"
STAGES = stage_order(config)
GATED_STAGES = STAGES[:-1]
FINAL_STAGE = STAGES[-1]
BASELINE = config["baseline"]



# ---- data --------------------------------------------------------------------------------
# Sources whose registry entry has a sha256 for every file are checked by ensure(sha256=).
CHECKED_SOURCES = sorted(
    n for n, s in SOURCES.items() if s.files and s.files_fn is None and all(f.sha256 for f in s.files)
)
UNCHECKED_SOURCES = sorted(n for n in SOURCES if n not in CHECKED_SOURCES)
# Tokenize rules differ by their static split files (the same outputs for every dataset of a rule).
TRAIN_VAL_DATASETS = sorted(n for n, d in DATASETS.items() if d.static_split_files and d.splits == ("train", "val"))
TRAIN_VAL_TEST_DATASETS = sorted(
    n for n, d in DATASETS.items() if d.static_split_files and d.splits == ("train", "val", "test")
)
SHARD_DATASETS = sorted(n for n, d in DATASETS.items() if not d.static_split_files)
PARALLEL_TOKENIZE_DATASETS = {"openwebtext"}  # their tokenizer uses several processes



# ---- issue 17: your own training script as a variant (workflow/study/trainer_section.py) -----
# The folder of the study file (the last --configfile): relative trainer.workdir starts there.
STUDY_DIR = (os.path.dirname(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles
             else os.path.join(workflow.basedir, "config"))
# (stage, variant) -> its path-resolved trainer, for the runs that run a script; placeholders and
# files checked here, before any job (an unknown placeholder or a missing script stops the study).
SCRIPT_TRAINERS = check_trainers(config, STUDY_DIR, check_files=workflow.is_main_process)
if any(needs_nanogpt_data(t) for t in SCRIPT_TRAINERS.values()) and config["dataset"] in SHARD_DATASETS:
    raise ValueError(
        f"trainer: {{nanogpt_data_dir}} asked for, but {config['dataset']} is a shard dataset whose shards stay in "
        "modded-nanogpt's format: use {train_files} / {val_files} (README, 'Your own training script')")


def script_trainer(wildcards):
    """The run's script trainer (paths absolute), or None for the built-in trainer."""
    return SCRIPT_TRAINERS.get((wildcards.stage, wildcards.variant))


def script_job_inputs(wildcards):
    """Inputs of a script run besides meta.json: the script and trainer.inputs (their edits rerun
    exactly the runs that use them) and, when asked for, the dataset in nanoGPT's layout."""
    trainer = script_trainer(wildcards)
    if trainer is None:
        return []
    files = [p for p in [trainer.get("script"), *trainer["inputs"]] if p]
    if needs_nanogpt_data(trainer):
        files.append(os.path.join(os.path.dirname(dataset_meta()), "nanogpt", "meta.pkl"))
    return files


def script_launch_command(res):
    """Command prefix of a script run (workflow.run_script; followed by --log, --run-config ...)."""
    return (f"python -m workflow.run_script --nproc-per-node {res['nproc_per_node']} --nodes {res['nodes']} "
            f"--cpus-per-proc {res['cpus_per_proc']} --gpus {res['gpus']}")


def train_launcher():
    """The train rule's ``launcher`` param: workflow.launch for built-in runs, the script runner
    for script runs (per job only when the study has script runs)."""
    if not SCRIPT_TRAINERS:
        return train_rule_setting(launch_command)
    return per_job(lambda w: (script_launch_command if script_trainer(w) else launch_command)(train_resources(w.stage)))
# ---- end issue 17 ------------------------------------------------------------------------


def raw_file_options(wildcards):
    """Options of a raw file's source (size/hash overrides, shard counts), without the mirror."""
    options = dict(source_options(wildcards.source, config))
    options.pop("mirror", None)
    return options


def raw_file_spec(wildcards):
    """Registry entry (url, sha256, bytes) of ``{data_dir}/raw/{source}/{filename}``."""
    return source_file(wildcards.source, wildcards.filename, raw_file_options(wildcards))


def raw_file_checks(wildcards):
    """``--options-json`` of the download CLI: only this file's size / sha256 checks."""
    spec = raw_file_spec(wildcards)
    return json.dumps({"raw_files": {wildcards.filename: {"sha256": spec.sha256, "bytes": spec.bytes}}})


def tokens_dir_pattern(datasets):
    """Wildcard constraint of ``{tokens}``: one of ``datasets``, with an options hash or not."""
    return "(?:" + "|".join(datasets) + ")(?:-[0-9a-f]{12})?" if datasets else "(?!)"


def study_dataset_options(wildcards):
    """The study's options of the dataset of ``wildcards.tokens`` (config ``datasets.<name>``);
    checked against the folder's name, so a folder is only ever made with the options it names."""
    dataset = tokens_dataset(wildcards.tokens)
    options = dict((config.get("datasets") or {}).get(dataset) or {})
    if tokens_dir_name(dataset, options) != wildcards.tokens:
        raise ValueError(
            f"{DATA}/tokens/{wildcards.tokens}: the study's datasets.{dataset} options name the folder "
            f"{tokens_dir_name(dataset, options)!r}; tokens of other options are made by the study that has them"
        )
    return options


def tokenize_inputs(wildcards):
    return dataset_raw_inputs(tokens_dataset(wildcards.tokens), DATA, study_dataset_options(wildcards))


def tokenize_raw_dir(wildcards):
    return dataset_raw_dir(tokens_dataset(wildcards.tokens), DATA, study_dataset_options(wildcards))


def tokenize_options_json(wildcards):
    """``--options-json`` of the tokenize job (a param, so the same for every study of the folder):
    the options that change the tokens (workflow.data.registry.token_options, defaults left out).
    Those that only change speed reach the job through STAGERUN_TOKENIZE_RUNTIME (below)."""
    return json.dumps(token_options(tokens_dataset(wildcards.tokens), study_dataset_options(wildcards)), sort_keys=True)


# Options that change no token (num_proc, batch_docs, chunk_bytes) reach workflow.tokenize through
# the environment, like the mirrors: changing them neither reruns tokenization nor the runs after it.
os.environ.update(STAGERUN_TOKENIZE_RUNTIME=json.dumps({
    name: {k: v for k, v in (options or {}).items() if k in RUNTIME_OPTIONS and k != "mirror"}
    for name, options in (config.get("datasets") or {}).items()
}))


def dataset_meta(dataset=None):
    """meta.json of the study's (or the named) tokenized dataset, in the folder the study's options name."""
    return study_meta_path(config, dataset)


# The data's vocabulary against the model's, at parse when the tokens exist (else the job's launcher
# checks it before training: workflow.jobs.launcher.check_data).
if workflow.is_main_process and os.path.exists(dataset_meta()):
    check_data_vocab(config, read_json(dataset_meta()), dataset_meta())


def run_dir(stage, variant, seed):
    return f"{RESULTS}/stage_{stage}/{variant}/seed_{seed}"


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


# A sequential last stage (verdict.sequential): each look is a checkpoint (rules/gates.smk);
# a variant runs the next look's seeds only while it is open, the baseline while any is.
SEQUENTIAL = config["verdict"].get("sequential")


def run_seeds(stage, variant, through=None):
    """Seeds ``variant`` runs in ``stage``: all of the stage's, or, in a sequential last stage,
    those of the looks it stayed open for (looks before ``through`` only, when given)."""
    seeds = stage_seeds(config, stage)
    if stage != FINAL_STAGE or not SEQUENTIAL:
        return seeds
    looks = SEQUENTIAL["looks"]
    last = len(looks) - 1 if through is None else through - 1
    open_after = []
    for k in range(1, last + 1):
        decided = read_json(checkpoints.look.get(look=k).output[0])
        open_after.append(bool(decided["open"]) if variant == BASELINE else variant in decided["open"])
        if not open_after[-1]:
            break
    return look_seeds(seeds, looks, open_after)


def stage_run_results(stage, variant, through=None):
    return [f"{run_dir(stage, variant, seed)}/result.json" for seed in run_seeds(stage, variant, through)]


def stage_summaries(stage, with_pivot=True):
    return [f"{RESULTS}/stage_{stage}/{variant}/summary.json" for variant in stage_variants(stage, with_pivot)]


def pivot_summaries(stage):
    """Summaries the pivot gate of ``stage`` compares: the baseline's and the pivot variant's."""
    return [f"{RESULTS}/stage_{stage}/{variant}/summary.json" for variant in (BASELINE, stage_pivot(stage))]


def stage_metrics(stage):
    return [
        f"{run_dir(stage, variant, seed)}/metrics.jsonl"
        for variant in stage_variants(stage)
        for seed in run_seeds(stage, variant)
    ]


def all_stage_summaries(wildcards=None):
    return [path for stage in STAGES for path in stage_summaries(stage)]


@functools.cache
def _first_seed_run_config(stage, variant):
    """``run_config`` of (stage, variant) for the stage's first seed, resolved once (merging and
    validating the sections is most of a training job's cost to the DAG)."""
    return run_config(config, stage, variant, stage_seeds(config, stage)[0])


def run_config_json(stage, variant, seed):
    """The train rule's ``run_config`` param: ``run_config(config, stage, variant, seed)`` as sorted
    JSON. Seeds of one (stage, variant) differ only in ``seed`` and ``run_id``."""
    if config["stages"][stage].get("continue_from"):  # per seed: continued runs differ (workflow.study.staging)
        cfg = run_config(config, stage, variant, seed)
    else:
        cfg = dict(_first_seed_run_config(stage, variant))
        cfg["seed"], cfg["run_id"] = seed, seed - config["base_seed"] - cfg["stage_seed_offset"]
    if "trainer" in cfg:  # issue 17: the script trainer with absolute paths
        cfg["trainer"] = SCRIPT_TRAINERS[(stage, variant)]
    return json.dumps(cfg, sort_keys=True)


def per_job(func):
    """Record an input function's signature once: Snakemake inspects it on every call (tens of
    thousands of calls in a study of 1,000 runs); ``snakemake.common.overwrite_function_params``."""
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


@functools.cache
def train_resources(stage):
    """Resources of a training job of ``stage`` (config ``stages.<S>.resources``); validated
    once per stage, not once per job and resource. A GPU stage whose jobs would run on this
    machine (local executor) while it has no GPU gets a warning here when its ``train.device`` is
    ``auto``; the job's launcher then caps its processes at the CPUs (workflow.jobs.launcher.cap_processes). The DAG keeps the study's
    resources, so a dry run shows what a cluster would be asked for."""
    res = stage_resources(config, stage)
    if (res["gpus"] and workflow.is_main_process and workflow.local_exec and not has_nvidia_gpu()
            and _first_seed_run_config(stage, BASELINE)["train"]["device"] == "auto"
            and (stage, BASELINE) not in SCRIPT_TRAINERS):  # a script decides its device itself (issue 17)
        cap = max(1, min(res["nproc_per_node"], os.cpu_count() or 1))
        print(
            f"stagerun: stages.{stage}.resources asks for {res['gpus']} GPUs per node, but this machine has "
            f"none and the jobs run here: {cap} CPU process(es) per run instead of {res['nproc_per_node']} "
            "(gloo; results are not comparable with GPU runs)",
            file=sys.stderr,
        )
    return res


def train_rule_setting(get):
    """A setting of the training rule, from the stage's resources (``get(resources) -> value``);
    a constant when every stage has the same CPU-only resources (the usual case; a constant
    costs Snakemake nothing per job), else a function of the job's stage. GPU stages are
    always resolved per job: whether this machine runs them is known only once the executor is."""
    if not any(stage_resources(config, s)["gpus"] for s in STAGES):
        values = {get(train_resources(s)) for s in STAGES}
        if len(values) == 1:
            return values.pop()
    return per_job(lambda w: get(train_resources(w.stage)))


def train_rule_resources():
    """``resources:`` of the train rule: ``nproc_per_node``, the
    snakemake-executor-plugin-slurm resources (constants that are None are left out) and, when
    a stage groups its runs, ``group_run_slots``."""
    keys = ["nproc_per_node", *slurm_resources(stage_resources(config, STAGES[0]))]
    getters = {
        key: (lambda r: r["nproc_per_node"]) if key == "nproc_per_node" else (lambda r, key=key: slurm_resources(r)[key])
        for key in keys
    }
    if GROUPS:  # one slot per grouped run (see "job groups" below)
        getters[GROUP_RUN_SLOTS] = lambda r: 1 if r["group_runs"] > 1 else 0
    settings = {key: train_rule_setting(get) for key, get in getters.items()}
    return {key: value for key, value in settings.items() if value is not None}


# ---- job groups: stages.<S>.resources.group_runs > 1 (docs/slurm.md) ----------------------
# The runs of such a stage form the Snakemake group train_<S>, and --group-components
# train_<S>=N (unless given on the command line) merges N of them into one cluster job.
# Snakemake sizes a group job by stacking its jobs in layers that fit the --resources limits:
# the limit group_run_slots=1 (each grouped run takes 1; scope "local", so it limits only the
# layers of one group job, never how many jobs run at once) makes every run a layer of its own:
# the group job asks for one run's resources with N x its runtime, and runs them one by one.
GROUPS = group_components(config)
GROUP_RUN_SLOTS = "group_run_slots"


resource_scopes:
    group_run_slots="local",


def apply_group_components():
    """Add the study's group components to Snakemake's (those given with --group-components
    win). Called from the train rule's ``group:`` function, i.e. while the DAG is built: Snakemake
    installs the command line's group settings after this file is parsed, replacing any set here."""
    given = dict(workflow.group_settings.group_components or {})
    if not set(GROUPS) <= set(given):
        workflow.group_settings.group_components = {**GROUPS, **given}


if GROUPS:
    workflow.register_resource(GROUP_RUN_SLOTS, 1)
# One id per `snakemake` invocation, in every job's environment (sbatch --export=ALL): the
# launcher of a grouped run restores a run that finished earlier in this invocation
# (workflow.launch.restore_finished) instead of training it again.
INVOCATION = uuid.uuid4().hex if workflow.is_main_process else None
if INVOCATION:
    os.environ.update(STAGERUN_INVOCATION=INVOCATION)


def restore_group_runs():
    """``onerror``: runs of grouped stages that finished in this invocation get back the outputs
    Snakemake deleted when their group job failed (workflow.launch.restore_invocation_runs)."""
    if not GROUPS or not INVOCATION:
        return
    from workflow.jobs.launcher import restore_invocation_runs  # (torch-free)

    run_dirs = [p for stage in STAGES if f"train_{stage}" in GROUPS
                for p in Path(RESULTS).glob(f"stage_{stage}/*/seed_*")]
    restored = restore_invocation_runs(run_dirs, INVOCATION)
    if restored:
        print(f"stagerun: {len(restored)} run(s) that finished in a failed group job keep their outputs "
              f"(the next run trains only the unfinished ones): {', '.join(map(str, restored))}", file=sys.stderr)


def train_rule_group():
    """``group:`` of the train rule: ``train_<stage>`` for a stage with group_runs > 1, else None
    (None for every job when no stage groups: the DAG costs nothing extra)."""
    if not GROUPS:
        return None

    def group(wildcards):
        apply_group_components()
        return train_group(train_resources(wildcards.stage), wildcards.stage)

    return per_job(group)


def stage_decision(stage):
    """The gate decision(s) of a gated stage (the pivot's gate last), the verdict for the last stage."""
    if stage not in GATED_STAGES:
        return [f"{RESULTS}/verdict.json"]
    return [f"{RESULTS}/gates/gate_{stage}.json"] + ([f"{RESULTS}/gates/gate_{stage}_pivot.json"] if stage_pivot(stage) else [])


# The communication study (rules/comm.smk): variants with tensor-parallel blocks (checked at
# parse: real tensor parallelism needs a multiple of tp_size processes per run in every stage).
COMM_VARIANTS = comm_study_variants(config)
COMM_THRESHOLDS = "3.28 3.35 3.40" if gpt2_scale(config) else ""
COMM_TARGETS = (
    [f"{RESULTS}/comm/comm.csv", f"{RESULTS}/comm/comm.md", f"{RESULTS}/plots/comm_vs_loss.png",
     f"{RESULTS}/plots/tokens_per_s_vs_comm.png"]
    if COMM_VARIANTS
    else []
)


def comm_targets():
    """Outputs of rules/comm.smk that `rule all` builds for the study."""
    return [f"{RESULTS}/plots/bytes_per_token_vs_loss.png", *COMM_TARGETS]


def previous_gate(wildcards):
    """For a gate that may pivot: the previous gate's decision (it names the next-best variant)."""
    index = STAGES.index(wildcards.stage)
    if config["stages"][wildcards.stage]["gate"]["pivot"] and index > 0:
        return [f"{RESULTS}/gates/gate_{STAGES[index - 1]}.json"]
    return []


def gate_pivot_args(wildcards, input):
    """CLI arguments of a gate that may pivot: previous decision, seeds, price, reserve."""
    if not input.previous:
        return ""
    from workflow.analysis.tables import naive_plan  # deferred heavy import (pandas, scipy): only for a gate that may pivot

    hardware = naive_plan(config)["prices"][wildcards.stage]
    return (
        f"--previous {input.previous} --seeds {config['stages'][wildcards.stage]['seeds']} "
        f"--hour-usd {hardware['hour_usd']} --reserve-usd {config['cost']['reserve_usd']}"
    )


def all_targets():
    return [
        f"{RESULTS}/summary.html",
        f"{RESULTS}/verdict.json",
        f"{RESULTS}/compute.csv",
        f"{RESULTS}/plan.md",
        f"{RESULTS}/plots/val_loss_by_stage.png",
        *[f"{RESULTS}/stage_{stage}/table.csv" for stage in STAGES],
        *[f"{RESULTS}/plots/curves_stage_{stage}.png" for stage in STAGES],
        # (script runs leave no model.pt to sample from: issue 17)
        lambda w: [f"{RESULTS}/samples/stage_{FINAL_STAGE}/{v}/seed_{stage_seeds(config, FINAL_STAGE)[0]}.txt"
                   for v in stage_variants(FINAL_STAGE) if (FINAL_STAGE, v) not in SCRIPT_TRAINERS],
        *comm_targets(),  # rules/comm.smk
    ]
