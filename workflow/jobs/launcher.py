"""A training job's launcher: the data check, one log per attempt, the trainer in this process
(or a warm fork) for one process, torchrun / srun workers for several, exit 75 when preempted.

The CLI is ``python -m workflow.launch`` (workflow/launch.py, which documents the behaviour).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from workflow.core.exits import EXIT_PREEMPTED
from workflow.core.io import read_json
from workflow.data.registry import tokens_mismatch
from workflow.jobs import warm_client
from workflow.jobs.job_common import open_attempt_log, srun_prefix  # noqa: F401 (re-exported; light for script jobs)
from workflow.jobs.trainer_process import PREEMPT_SIGNALS, EarlySignals, run_trainer_here
from workflow.study.checks import vocab_size_error
from workflow.study.length import model_block_size

EXIT_DIR_ENV = "STAGERUN_EXIT_DIR"
WORKER_WAIT_S = 300  # longest wait for a worker that outlived torchrun (it is saving its checkpoint)
WINDOW_SPLITS = ("train", "val")
INVOCATION_ENV = "STAGERUN_INVOCATION"  # one id per `snakemake` invocation (rules/env.smk)
FINISHED_DIR = ".finished"  # {out_dir}/.finished/: outputs of a finished run of a group job
FINISHED_OUTPUTS = ("result.json", "metrics.jsonl")  # the train rule's outputs


class DataCheckError(ValueError):
    """A split of the dataset cannot give the trainer one window (message: split, tokens, window)."""


# --------------------------------------------------------------------------- data check

def check_token_windows(meta_path: str | os.PathLike, model_cfg: dict) -> str:
    """Check that the train and val splits each hold one ``block_size + 1``-token window.

    Training and evaluation read windows of ``model.block_size + 1`` tokens that never cross a
    file boundary (workflow.data.loader.TokenSplit), so some file of the split must be that long.

    Args:
        meta_path: the dataset's ``meta.json`` (workflow.tokenize).
        model_cfg: the run's ``model`` section (preset + overrides; workflow.model.build_model_config).
    Returns:
        A one-line summary (split token counts and the window), for the log.
    Raises:
        DataCheckError: a split is missing or too short (names meta.json, the split, its tokens,
            its longest file and the window needed).
        ValueError: invalid model config (from build_model_config).
    """

    meta_path = Path(meta_path)
    meta = read_json(meta_path)
    block_size = model_block_size(model_cfg)
    window = block_size + 1
    counts = []
    for split in WINDOW_SPLITS:
        info = meta.get("splits", {}).get(split)
        if info is None:
            raise DataCheckError(f"{meta_path}: no split {split!r} (has: {', '.join(meta.get('splits', {}))})")
        tokens = int(info["tokens"])
        longest = max((int(f["tokens"]) for f in info.get("files", [])), default=0)
        if longest < window:
            in_files = "" if longest == tokens else f" (its longest file {longest:,})"
            raise DataCheckError(
                f"{meta_path}: split {split!r} has {tokens:,} tokens{in_files}, but one training window needs "
                f"{window:,} (model.block_size {block_size} + 1): use more data for this split or a smaller block_size"
            )
        counts.append(f"{split} {tokens:,}")
    return f"data check: {', '.join(counts)} tokens; window {window} (block_size {block_size} + 1): ok"


def check_data(meta_path: str | os.PathLike, run_cfg: dict) -> str:
    """The launcher's data check: the tokens are the run's (dataset and the options that change
    tokens, ``run_cfg["dataset_options"]``, absent = the defaults), the model's ``vocab_size``
    covers the data's symbols, and both splits hold a window (:func:`check_token_windows`).

    Raises:
        DataCheckError: naming meta.json and what differs (options, vocabulary, split).
    """
    meta = read_json(meta_path)
    why = tokens_mismatch(meta, run_cfg.get("dataset", meta.get("dataset")), run_cfg.get("dataset_options"))
    if why:
        raise DataCheckError(f"{meta_path}: these tokens are not this run's: {why}; the study's tokens are made "
                             "in their own folder (workflow.data.registry.tokens_dir_name)")
    error = vocab_size_error((run_cfg.get("model") or {}).get("vocab_size"), int(meta["vocab_size"]),
                             "model.vocab_size", str(meta_path))
    if error:
        raise DataCheckError(error)
    return check_token_windows(meta_path, run_cfg.get("model") or {})


# --------------------------------------------------------------------------- logs

def start_trainer(trainer_argv: list[str], early: EarlySignals, import_first: bool = False) -> int:
    """Start the trainer: as a fork of the warm server when the job has one (workflow.warm),
    otherwise in this process (:func:`run_trainer_here`). Returns its exit status.

    ``import_first`` (the workers): import torch while a preemption signal is only recorded,
    and end with 75 without training if one came meanwhile.
    """
    if early.signum is not None:
        return EXIT_PREEMPTED
    code = warm_client.run_trainer(trainer_argv, early)
    if code is not None:
        return code
    if import_first:
        import workflow.model.gpt  # noqa: F401  # deferred heavy import: torch, while a signal is only recorded

        if early.signum is not None:
            return EXIT_PREEMPTED
    early.hand_over()
    return run_trainer_here(trainer_argv)


def run_worker(trainer_argv: list[str], early: EarlySignals) -> int:
    """A worker started by torchrun / srun: the trainer in-process, its exit status recorded."""
    exit_dir = Path(os.environ[EXIT_DIR_ENV])
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    code = 1
    try:
        lock = open(exit_dir / f"rank{rank}.lock", "w")  # held (flock) until this process is gone
        with contextlib.suppress(OSError):  # a file system without flock: srun waits for its tasks anyway
            fcntl.flock(lock, fcntl.LOCK_EX)
        code = start_trainer(trainer_argv, early, import_first=True)
    finally:
        (exit_dir / f"rank{rank}.exit").write_text(f"{code}\n")
    return code


def _wait_for_workers(exit_dir: Path, timeout_s: float) -> None:
    """Block until no worker holds its lock (each worker's lock goes when its process ends)."""
    def give_up(signum, frame):  # noqa: ARG001 (signal handler signature)
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(max(1, int(timeout_s)))
    try:
        for path in sorted(exit_dir.glob("rank*.lock")):
            with open(path) as handle, contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_EX)
    except TimeoutError:
        print(f"launch: a worker still runs {timeout_s:.0f} s after the launcher ended", file=sys.stderr, flush=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def job_exit_status(launcher_status: int, worker_codes: dict[int, int], world_size: int,
                    preempt_signal: bool = False) -> int:
    """The job's exit status from torchrun's / srun's status and the workers' recorded ones.

    Args:
        launcher_status: torchrun's / srun's return code (negative: killed by that signal).
        worker_codes: rank -> the exit status that worker recorded (ranks that recorded none are
            missing: not started yet, or killed).
        world_size: number of workers.
        preempt_signal: the launcher itself got SIGTERM / SIGUSR1.
    Returns:
        75 when all ``world_size`` workers exited 75, or when the launcher was sent a preemption
        signal and no worker recorded anything but 75 (e.g. torchrun was still starting);
        otherwise the launcher's status (0 stays 0; killed by signal s: 128 + s, as a shell says).
    """
    if len(worker_codes) == world_size and all(c == EXIT_PREEMPTED for c in worker_codes.values()):
        return EXIT_PREEMPTED
    if launcher_status == 0:
        return 0
    if preempt_signal and all(c == EXIT_PREEMPTED for c in worker_codes.values()):
        return EXIT_PREEMPTED
    if launcher_status < 0:
        return 128 - launcher_status
    return launcher_status


def run_workers(cmd: list[str], world_size: int, exit_dir_parent: str | None = None,
                early: EarlySignals | None = None) -> int:
    """Run a multi-process launcher ``cmd`` (its workers: ``python -m workflow.launch --worker``).

    Forwards SIGTERM / SIGUSR1 / SIGINT once (as SIGTERM) to it, waits for it and for every worker, and
    returns :func:`job_exit_status`.
    """
    exit_dir = Path(tempfile.mkdtemp(prefix=".stagerun-exit-", dir=exit_dir_parent))
    state: dict = {"proc": None, "signal": None, "preempt": False, "forwarded": False}

    def forward(signum, frame=None):  # noqa: ARG001 (signal handler signature)
        state["signal"] = state["signal"] or signum
        state["preempt"] = state["preempt"] or signum in PREEMPT_SIGNALS
        proc = state["proc"]
        if proc is not None and not state["forwarded"] and proc.poll() is None:
            state["forwarded"] = True
            print(f"launch: {signal.Signals(signum).name}: SIGTERM to {Path(cmd[0]).name} (pid {proc.pid})",
                  file=sys.stderr, flush=True)
            proc.send_signal(signal.SIGTERM)

    for sig in (*PREEMPT_SIGNALS, signal.SIGINT):
        signal.signal(sig, forward)
    if early is not None and early.signum is not None:  # came before the handlers above
        shutil.rmtree(exit_dir, ignore_errors=True)
        return EXIT_PREEMPTED
    try:
        state["proc"] = subprocess.Popen(cmd, env={**os.environ, EXIT_DIR_ENV: str(exit_dir)})
        if state["signal"] is not None:  # it came while the launcher was starting
            forward(state["signal"])
        status = state["proc"].wait()
        _wait_for_workers(exit_dir, WORKER_WAIT_S)
        codes = {}
        for path in exit_dir.glob("rank*.exit"):
            with contextlib.suppress(ValueError):
                codes[int(path.name[4:-5])] = int(path.read_text())
        final = job_exit_status(status, codes, world_size, state["preempt"])
        print(f"launch: {Path(cmd[0]).name} exited {status}; worker exit codes "
              f"{dict(sorted(codes.items()))}; job exit status {final}", file=sys.stderr, flush=True)
        return final
    finally:
        shutil.rmtree(exit_dir, ignore_errors=True)


# --------------------------------------------------------------------------- finished runs of a group job

def _finished_record(run_cfg: dict, invocation: str) -> dict:
    return {"invocation": invocation, "run_config": json.dumps(run_cfg, sort_keys=True)}


def stash_finished(out_dir: str | os.PathLike, run_cfg: dict, invocation: str) -> Path:
    """Keep a finished run's outputs (:data:`FINISHED_OUTPUTS`) as hard links in
    ``{out_dir}/.finished/`` with a record of its run config and Snakemake invocation.

    Snakemake treats a group job as one job: when it is requeued it reruns every run of the group
    (``--force``), and when it fails Snakemake deletes the outputs of all of them, finished ones
    included. :func:`restore_finished` then gives a finished run its outputs back instead of
    training it again. Returns the folder.

    Raises:
        OSError: the run folder cannot be written (a missing output raises FileNotFoundError).
    """
    out_dir = Path(out_dir)
    stash = out_dir / FINISHED_DIR
    stash.mkdir(exist_ok=True)
    (stash / "record.json").unlink(missing_ok=True)  # invalid until every file is in place
    for name in FINISHED_OUTPUTS:
        (stash / name).unlink(missing_ok=True)
        try:
            os.link(out_dir / name, stash / name)
        except OSError:
            if not (out_dir / name).exists():
                raise
            shutil.copy2(out_dir / name, stash / name)  # a file system without hard links
    tmp = stash / "record.json.tmp"
    tmp.write_text(json.dumps(_finished_record(run_cfg, invocation), sort_keys=True) + "\n")
    os.replace(tmp, stash / "record.json")
    return stash


def restore_finished(out_dir: str | os.PathLike, run_cfg: dict, invocation: str) -> bool:
    """Give back the outputs of a run that finished earlier in this Snakemake invocation.

    True when ``{out_dir}/.finished/record.json`` names exactly this run config and this
    invocation (``$STAGERUN_INVOCATION``, set once by the Snakefile's main process) and its
    files are there: each missing output is linked back. False otherwise (the run then trains;
    a new ``snakemake`` invocation always trains, so ``--forcerun`` and a changed config do).
    """
    stash = Path(out_dir) / FINISHED_DIR
    try:
        record = json.loads((stash / "record.json").read_text())
    except (OSError, ValueError):
        return False
    if record != _finished_record(run_cfg, invocation) or not all((stash / n).is_file() for n in FINISHED_OUTPUTS):
        return False
    for name in FINISHED_OUTPUTS:
        target = Path(out_dir) / name
        target.unlink(missing_ok=True)
        try:
            os.link(stash / name, target)
        except OSError:
            shutil.copy2(stash / name, target)
    return True


def keep_finished(out_dir: str | os.PathLike, run_cfg: dict, start) -> int:
    """``python -m workflow.launch --keep-finished`` (a run of a job group): ``start()`` (the
    trainer; returns its exit status) unless the run finished earlier in this Snakemake invocation
    (:func:`restore_finished`: exit 0 at once); a run that ends with 0 is kept
    (:func:`stash_finished`). Without ``$STAGERUN_INVOCATION`` just ``start()``."""
    invocation = os.environ.get(INVOCATION_ENV)
    if invocation and restore_finished(out_dir, run_cfg, invocation):
        print(f"launch: this run finished earlier in this snakemake invocation (its group job ran again): outputs "
              f"restored from {Path(out_dir) / FINISHED_DIR}, not trained again", flush=True)
        return 0
    code = start()
    if code == 0 and invocation:
        stash_finished(out_dir, run_cfg, invocation)
    return code


def restore_invocation_runs(run_dirs, invocation: str) -> list[Path]:
    """Give back the outputs of every run among ``run_dirs`` that finished in this Snakemake
    invocation but lost them since (Snakemake deletes the outputs of all runs of a failed group
    job). The Snakefile's ``onerror`` calls it, so that the next invocation runs only the
    unfinished runs. Returns the run folders whose outputs were restored."""
    restored = []
    for run_dir in map(Path, run_dirs):
        stash = run_dir / FINISHED_DIR
        try:
            record = json.loads((stash / "record.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("invocation") != invocation or all((run_dir / n).exists() for n in FINISHED_OUTPUTS):
            continue
        if restore_finished(run_dir, json.loads(record["run_config"]), invocation):
            restored.append(run_dir)
    return restored


def has_nvidia_gpu() -> bool:
    """This machine has an NVIDIA GPU: a device node ``/dev/nvidia<N>`` (torch-free, instant)."""

    return bool(glob.glob("/dev/nvidia[0-9]*"))


def cap_processes(nproc_per_node: int, nodes: int, device: str, cpus: int | None = None,
                  has_gpu: bool | None = None) -> int:
    """Processes per node for a job that asked for ``nproc_per_node``: capped at the CPUs when it
    runs on one node without a GPU (a study's ``gpus: 8`` on a laptop would otherwise start 8
    gloo processes on 2 cores). GPU machines, several nodes and an explicit ``train.device``
    keep the request: ``cuda`` fails loudly without a GPU, and ``cpu`` is a CPU-scale study that
    asks for its gloo workers on purpose (``diloco_cpu.yaml``: 4 workers on 2 cores), whose
    world size must not depend on the machine. Torch-free: a GPU is an NVIDIA device node
    ``/dev/nvidia<N>``."""
    if has_gpu is None:
        has_gpu = has_nvidia_gpu()
    if nodes > 1 or has_gpu or device in ("cuda", "cpu"):
        return nproc_per_node
    return max(1, min(nproc_per_node, cpus or os.cpu_count() or 1))
