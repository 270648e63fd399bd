"""A stage's compute: resources, the launch command and the SLURM resources Snakemake submits with.
"""

from __future__ import annotations

from workflow.core.steps import LAUNCH_STEP
from workflow.study.resolve import stage_order
from workflow.study.schema import ConfigError, validate_section


def stage_resources(config: dict, stage: str) -> dict:
    """The stage's job resources with schema defaults filled in and ``nproc_per_node`` resolved.

    ``nproc_per_node`` defaults to the GPUs per node (``torchrun --nproc_per_node`` equals
    the GPUs granted), or 1 on CPU.

    Raises:
        ConfigError: ``nproc_per_node`` set and different from ``gpus`` on a GPU stage;
            ``group_runs`` > 1 on a stage of several nodes.
    """
    where = f"stages.{stage}.resources"
    res = validate_section(config["stages"][stage].get("resources"), "resources", where)
    if res["group_runs"] > 1 and res["nodes"] > 1:
        raise ConfigError(
            f"{where}.group_runs: {res['group_runs']} runs per cluster job, but nodes: {res['nodes']}: grouping is "
            "for short one-node runs (a group job runs its runs one after another on one node); set group_runs: 1"
        )
    if res["nproc_per_node"] is None:
        res["nproc_per_node"] = res["gpus"] or 1
    elif res["gpus"] and res["nproc_per_node"] != res["gpus"]:
        raise ConfigError(
            f"{where}.nproc_per_node: {res['nproc_per_node']} processes but gpus: {res['gpus']} per node "
            "(one process per GPU; leave nproc_per_node unset)"
        )
    return res


def launch_command(res: dict, python: str = "python") -> str:
    """Command prefix of a training job (followed by ``--log``, ``--run-config`` ... of workflow.launch).

    Always ``python -m workflow.launch`` (data check, one log per attempt, the job's exit status
    is the trainer's: 75 = preempted). One process: the trainer runs inside it (no torchrun).
    Several processes on one node: ``--nproc-per-node N`` (torchrun --standalone underneath).
    Several nodes: ``--nodes M`` and the srun layout (one task per GPU, or per ``nproc_per_node``
    on CPU); workflow.parallel.process_groups reads SLURM's variables (SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID, SLURM_JOB_NODELIST). A grouped stage (``group_runs`` > 1): ``--keep-finished``.

    Args:
        res: resolved stage resources (:func:`stage_resources`).
        python: the Python interpreter to run.
    """
    cmd = f"{python} -m {LAUNCH_STEP} --nproc-per-node {res['nproc_per_node']}"
    if res.get("group_runs", 1) > 1:  # a run of a job group: not trained again when its group job reruns it
        cmd += " --keep-finished"
    if res["nodes"] > 1:
        cmd += f" --nodes {res['nodes']} --cpus-per-proc {res['cpus_per_proc']}"
        if res["gpus"]:
            cmd += " --gpus-per-task"
    return cmd


def train_group(res: dict, stage: str) -> str | None:
    """The Snakemake job group of a training run of ``stage``: ``train_<stage>`` when the stage
    groups its runs (``resources.group_runs`` > 1; :func:`group_components`), else None."""
    return f"train_{stage}" if res["group_runs"] > 1 else None


def run_groups(stage: str, runs: list, group_runs: int) -> dict:
    """The Snakemake job group of each run of a grouped stage: ``runs`` (any hashable per run, in
    the order they should be packed, e.g. ``(variant, seed)``) cut into consecutive chunks of
    ``group_runs``: ``{run: "train_<stage>_<chunk>"}``, chunk = index // group_runs.

    Every chunk is a group id of its own with ``--group-components <id>=group_runs``
    (:func:`chunk_components`), so a group job never holds more than ``group_runs`` runs. One
    group id per stage with ``--group-components train_<stage>=N`` is not enough: Snakemake
    (9.x, ``DAG.update_groups``) merges the components of a group in place into objects that its
    ``GroupJobFactory`` caches by their first job set, and its next ``update_groups`` (every
    ``postprocess``, e.g. after a checkpoint such as a gate) takes those merged groups as the
    components and merges N of them again: N x N runs per job for any target with a checkpoint.
    A chunk id is merged at most up to its own runs however often that happens.

    Raises:
        ValueError: ``group_runs`` < 1.
    """
    if group_runs < 1:
        raise ValueError(f"group_runs: {group_runs}; at least 1 run per group job")
    return {run: f"train_{stage}_{index // group_runs}" for index, run in enumerate(runs)}


def chunk_components(groups: dict, group_runs: int) -> dict[str, int]:
    """``--group-components`` for the chunk ids of :func:`run_groups`: ``{id: group_runs}``."""
    return {group: group_runs for group in sorted(set(groups.values()))}


def grouped_runtime(runtime: int, group_runs: int, max_minutes: int | None) -> tuple[int, str | None]:
    """Minutes each run of a group job asks for, so that the group job (Snakemake adds its runs'
    runtimes: ``group_runs x runtime``) stays within its partition's time limit.

    Args:
        runtime: the stage's ``resources.runtime`` (minutes per run).
        group_runs: runs per group job.
        max_minutes: the partition's MaxTime in minutes (``sinfo -o %l``), None when unlimited/unknown.

    Returns:
        ``(minutes per run, note)``; note (for the printed plan) is None unless the time was cut.

    Raises:
        ValueError: the partition's limit is shorter than one minute per run of the group.
    """
    if max_minutes is None or group_runs * runtime <= max_minutes:
        return runtime, None
    per_run = max_minutes // group_runs
    if per_run < 1:
        raise ValueError(
            f"group_runs: {group_runs} runs per job, but the partition allows only {max_minutes} min per job: "
            f"lower group_runs to at most {max_minutes}")
    return per_run, (f"{group_runs} runs x {runtime} min = {group_runs * runtime} min is past the partition's "
                     f"limit of {max_minutes} min: each group job asks for {per_run * group_runs} min "
                     f"({per_run} min per run; lower group_runs or runtime if runs need longer)")


def group_components(config: dict) -> dict[str, int]:
    """``--group-components`` of the study: ``{"train_<stage>": group_runs}`` for every stage
    with ``resources.group_runs`` > 1 (runs per cluster job)."""
    out = {}
    for stage in stage_order(config):
        res = stage_resources(config, stage)
        if res["group_runs"] > 1:
            out[train_group(res, stage)] = res["group_runs"]
    return out


def slurm_resources(res: dict) -> dict:
    """Snakemake resources for ``snakemake-executor-plugin-slurm`` (None = not set).

    One node: ``gpu`` (-> ``sbatch --gpus=[model:]G``), ``cpus_per_task`` for all processes.
    Several nodes: ``gres="gpu:[model:]G"`` (-> ``--gres``, per node), ``nodes``, ``mpi="srun"``
    (the plugin then runs the command as is, and :func:`launch_command`'s srun places one task
    per GPU with ``--gpus-per-task=1``), ``tasks_per_node`` (-> ``--ntasks-per-node``; with one
    process per node ``tasks=nodes`` -> ``--ntasks``, as the plugin wants more than one task per
    node in ``tasks_per_node``), ``cpus_per_task`` per process. ``tasks_per_gpu=0`` keeps the
    plugin from turning ``tasks`` into ``--ntasks-per-gpu`` on a GPU job (with the old
    ``--gpus-per-task`` that was "mutually exclusive" for one GPU per node). Every shape of
    nodes in {1, 2} x GPUs per node in {0, 1, 2, 4} passes ``sbatch --test-only``
    (tests/integration/test_slurm.py; the sbatch lines are in docs/slurm.md).
    """
    gpus, nodes, nproc = res["gpus"], res["nodes"], res["nproc_per_node"]
    model = res["gpu_model"] if gpus else None
    out = {
        "gpu": gpus or None,
        "gpu_model": model,
        "gres": None,
        "nodes": nodes,
        "cpus_per_task": nproc * res["cpus_per_proc"] if nodes == 1 else res["cpus_per_proc"],
        "mem_mb": res["mem_mb"],
        "runtime": res["runtime"],
        "slurm_partition": res["slurm_partition"],
        "mpi": None,
        "tasks": None,
        "tasks_per_gpu": None,
        "tasks_per_node": None,
        "slurm_extra": None,
    }
    if nodes > 1:
        out["mpi"] = "srun"
        if gpus:
            out["gpu"], out["gpu_model"] = None, None
            out["gres"] = f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}"
        if nproc == 1:
            out["tasks"], out["tasks_per_gpu"] = nodes, (0 if gpus else None)
        else:
            out["tasks_per_node"] = nproc
    return out
