# Resources of the training jobs (config stages.<S>.resources, workflow/study/resources.py): the
# train rule's threads, resources, launcher and job group (rules/train.smk), and the price of a
# stage's hour for the gates that may pivot (rules/gates.smk).
#
# Job groups: the runs of a stage with resources.group_runs = N > 1 are cut into chunks of N (a
# --group-components train_<S>=N on the command line wins), each chunk the Snakemake group
# train_<S>_<k> with --group-components train_<S>_<k>=N: one cluster job per chunk
# (stage_run_group; workflow.study.resources.run_groups says why). Snakemake sizes a group job by stacking its jobs in layers that fit the
# --resources limits: the limit group_run_slots=1 (each grouped run takes 1; scope "local", so it
# limits only the layers of one group job, never how many jobs run at once) makes every run a
# layer of its own: the group job asks for one run's resources with N x its runtime, and runs them
# one by one.
import functools
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from workflow.jobs.launcher import has_nvidia_gpu, restore_invocation_runs
from workflow.jobs.slurm_cluster import partition_limits, profile_problems, profile_resources, train_partition
from workflow.study.resources import (
    chunk_components, group_components, grouped_runtime, launch_command, run_groups, slurm_resources, stage_resources,
    train_group,
)

GROUPS = group_components(config)  # {"train_<S>": N} for every stage with group_runs N > 1
GROUP_RUN_SLOTS = "group_run_slots"


resource_scopes:
    group_run_slots="local",


if GROUPS:
    workflow.register_resource(GROUP_RUN_SLOTS, 1)


@functools.cache
def train_resources(stage):
    """Resources of a training job of ``stage`` (config ``stages.<S>.resources``); validated
    once per stage, not once per job and resource. A GPU stage whose jobs would run on this
    machine (local executor) while it has no GPU gets a warning here when its ``train.device`` is
    ``auto``; the job's launcher then caps its processes at the CPUs
    (workflow.jobs.launcher.cap_processes). The DAG keeps the study's resources, so a dry run
    shows what a cluster would be asked for."""
    res = stage_resources(config, stage)
    if (res["gpus"] and workflow.is_main_process and workflow.local_exec and not has_nvidia_gpu()
            and first_seed_run_config(stage, BASELINE)["train"]["device"] == "auto"
            and (stage, BASELINE) not in SCRIPT_TRAINERS):  # a script decides its device itself
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
    if GROUPS:  # one slot per grouped run
        getters[GROUP_RUN_SLOTS] = lambda r: 1 if r["group_runs"] > 1 else 0
    settings = {key: train_rule_setting(get) for key, get in getters.items()}
    if GROUPS:  # a group job's time limit: its runs x runtime, cut to the partition's (per job: known on a cluster)
        settings["runtime"] = per_job(lambda w: grouped_stage_runtime(w.stage))
    return {key: value for key, value in settings.items() if value is not None}


def script_launch_command(res):
    """Command prefix of a script run (workflow.run_script; followed by --log, --run-config ...)."""
    return (f"python -m workflow.run_script --nproc-per-node {res['nproc_per_node']} --nodes {res['nodes']} "
            f"--cpus-per-proc {res['cpus_per_proc']} --gpus {res['gpus']}")


def train_launcher():
    """The train rule's ``launcher`` param: workflow.launch for built-in runs, the script runner
    for script runs (per job only when the study has script runs)."""
    if not SCRIPT_TRAINERS:
        return train_rule_setting(launch_command)
    return per_job(lambda w: (script_launch_command if (w.stage, w.variant) in SCRIPT_TRAINERS else launch_command)(
        train_resources(w.stage)))


def stage_run_group(stage, variant, seed):
    """The job group of a run of a grouped stage: its chunk of ``group_runs`` (or the command line's
    ``--group-components train_<stage>=N``) among the stage's runs, pending runs first
    (workflow.study.resources.run_groups: one group id per chunk, so a group job never holds more)."""
    groups = stage_run_groups(stage, stage, tuple(stage_variants(stage, with_pivot=False)))
    if (variant, seed) not in groups:  # the gate's pivot variant, or a run outside the stage: its seeds together
        groups = stage_run_groups(stage, f"{stage}_{variant}", (variant,))
    return groups[(variant, seed)]


def stage_group_size(stage):
    """Runs per group job of ``stage``: its group_runs, or the command line's --group-components train_<stage>=N."""
    return dict(workflow.group_settings.group_components or {}).get(f"train_{stage}", train_resources(stage)["group_runs"])


@functools.cache
def cluster_partition_limits():
    """The cluster's partitions and their MaxTime in minutes (one sinfo call; {} without SLURM)."""
    return partition_limits() or {}


def check_slurm_cluster():
    """``onstart`` on a cluster, before the first submission: the profile's account and every
    partition a job would go to exist for this user (workflow.jobs.slurm_cluster), else stop at
    once with what the cluster has, not after sbatch's retries."""
    if workflow.local_exec:
        return
    problems = profile_problems({s: train_resources(s)["slurm_partition"] for s in STAGES},
                                profile_resources(workflow.resource_settings))
    if problems:
        raise WorkflowError("stagerun: the SLURM profile does not fit this cluster (nothing was submitted):\n  "
                            + "\n  ".join(problems))


@functools.cache
def grouped_stage_runtime(stage):
    """Minutes per run of ``stage``; on a cluster a grouped stage's runs share their group job's
    time limit, cut to the partition's MaxTime (workflow.study.resources.grouped_runtime), which
    the plan then says."""
    res = train_resources(stage)
    if res["group_runs"] <= 1 or (workflow.local_exec and not workflow.dryrun):  # a dry run shows the cut too
        return res["runtime"]
    partition, _ = train_partition(stage, res["slurm_partition"], profile_resources(workflow.resource_settings))
    runtime, note = grouped_runtime(res["runtime"], stage_group_size(stage), cluster_partition_limits().get(partition))
    if note and workflow.is_main_process:
        print(f"stagerun plan: stage {stage}, partition {partition}: {note}", file=sys.stderr)
    return runtime


@functools.cache
def stage_run_groups(stage, name, variants):
    """{(variant, seed): group id} of ``variants``' runs of ``stage`` in chunks of its group size."""
    size = stage_group_size(stage)
    runs = [(v, s) for v in variants for s in stage_seeds(config, stage)]
    if workflow.is_main_process:  # a resumed screen: the runs still to do fill whole groups
        runs.sort(key=lambda r: os.path.exists(f"{RESULTS}/stage_{stage}/{r[0]}/seed_{r[1]}/result.json"))
    groups = run_groups(name, runs, size)
    workflow.group_settings.group_components = {**(workflow.group_settings.group_components or {}),
                                                **chunk_components(groups, size)}
    return groups


def train_rule_group():
    """``group:`` of the train rule: ``train_<stage>`` for a stage with group_runs > 1, else None
    (None for every job when no stage groups: the DAG costs nothing extra)."""
    if not GROUPS:
        return None

    def group(wildcards):
        if train_group(train_resources(wildcards.stage), wildcards.stage) is None:
            return None
        return stage_run_group(wildcards.stage, wildcards.variant, int(wildcards.seed))

    return per_job(group)


def restore_group_runs():
    """``onerror`` (rules/warm.smk): runs of grouped stages that finished in this invocation get back
    the outputs Snakemake deleted when their group job failed (workflow.jobs.launcher.restore_invocation_runs)."""
    if not GROUPS or not INVOCATION:
        return
    run_dirs = [p for stage in STAGES if f"train_{stage}" in GROUPS
                for p in Path(RESULTS).glob(f"stage_{stage}/*/seed_*")]
    restored = restore_invocation_runs(run_dirs, INVOCATION)
    if restored:
        print(f"stagerun: {len(restored)} run(s) that finished in a failed group job keep their outputs "
              f"(the next run trains only the unfinished ones): {', '.join(map(str, restored))}", file=sys.stderr)


def gate_pivot_args(wildcards, input):
    """CLI arguments of a gate that may pivot (rules/gates.smk): previous decision, seeds, the price
    of the stage's GPU- or process-hour (workflow.analysis.tables.naive_compute), reserve."""
    if not input.previous:
        return ""
    from workflow.analysis.tables import naive_compute  # deferred heavy import (pandas, scipy): only for a gate that may pivot

    hardware = naive_compute(config)["prices"][wildcards.stage]
    return (
        f"--previous {input.previous} --seeds {config['stages'][wildcards.stage]['seeds']} "
        f"--hour-usd {hardware['hour_usd']} --reserve-usd {config['cost']['reserve_usd']}"
    )
