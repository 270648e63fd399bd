"""The command of a training job: checks the data, starts the trainer, keeps every attempt's log,
and makes the job's own exit status the trainer's (75 = preempted).

CLI (what rules/train.smk runs; :func:`workflow.study.resources.launch_command` builds the prefix)::

    python -m workflow.launch [--nproc-per-node N] [--nodes M --cpus-per-proc C [--gpus-per-task]]
        [--log results/.../train.log] --run-config '<json>' --out-dir DIR --meta META [--threads T]

Every option but the launcher's own goes to ``python -m workflow.train`` unchanged.

1. **Log** (``--log PATH``): stdout and stderr of this process and of every process it starts go to
   a new ``{stem}.attempt-N.log`` next to ``PATH`` (N = 1, 2, ...: one file per attempt, claimed
   with ``O_EXCL``), and ``PATH`` is made a hard link to it (a symbolic link where the file
   system has no hard links). Snakemake deletes a job's log before it reruns the job; that
   removes only the ``PATH`` name, so the log of a preempted or failed attempt survives.
2. **Data check** (:func:`check_data`: the run's tokens and vocabulary): every split the trainer reads (train, val) must
   hold one full window of ``model.block_size + 1`` tokens in one file, otherwise the job stops
   with one line naming the split, its token count and the window (no traceback in training).
3. **Start**:

   - one process (``--nproc-per-node 1``, one node): the trainer runs in this very process
     (``runpy``, exactly ``python -m workflow.train``): no torchrun, no extra interpreter, and
     the trainer's exit status (0, 1, 75 after SIGTERM/SIGUSR1) is the job's;
   - several processes on one node: ``torchrun --standalone`` with every worker started as
     ``python -m workflow.launch --worker`` (which runs the trainer in-process and records its
     exit status); several nodes: ``srun`` with one such worker task per process.

   torchrun itself exits 1 whatever its workers did (its agent turns a signal into an error), so
   each worker writes its exit status to ``rank{R}.exit`` in a private folder named by
   ``$STAGERUN_EXIT_DIR`` and holds an exclusive ``flock`` on ``rank{R}.lock`` while it lives.
   After torchrun ends, the launcher waits for every lock (the kernel releases it when the worker
   is gone, also after SIGKILL), then: **75 if every rank exited 75**, 0 if torchrun exited 0,
   otherwise torchrun's status (128 + signal when it was killed).

   SIGTERM, SIGUSR1 or SIGINT to the launcher is forwarded once, as SIGTERM, to torchrun / srun,
   which passes it to the workers; a signal that also reaches the workers directly (SLURM signals
   every process of the job) is harmless: they checkpoint once and exit 75.

   **Warm start** (workflow.warm): when Snakemake runs the job locally with a warm server (its
   ``onstart``), the trainer of a one-process job, and of each torchrun worker, runs as a fork
   of that server, which has imported torch already (no 3-4 s of imports per process); this process
   forwards SIGTERM / SIGUSR1 / SIGINT to it and exits with its status. Without a server, or if
   the server refuses (edited code), the trainer runs here as described.

   A preemption signal while the job starts (:class:`EarlySignals`) is only recorded, never raised
   inside an import: before the trainer starts the job ends with 75 at once (nothing to save);
   once the trainer is starting, the signal is sent again as soon as the trainer's own handler is
   installed (it checkpoints and exits 75).

Exit status: the trainer's (0 done, 75 preempted, 1 error), 1 when the data check fails or another
trainer holds the run folder's lock (one trainer per run: workflow.jobs.run_lock names the holder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from workflow.core.exits import EXIT_PREEMPTED
from workflow.core.steps import LAUNCH_STEP
from workflow.data.registry import tokens_dir
from workflow.jobs.launcher import (
    run_worker,
    cap_processes,
    check_data,
    keep_finished,
    open_attempt_log,
    run_workers,
    srun_prefix,
    start_trainer,
)
from workflow.jobs.run_lock import run_locked
from workflow.jobs.trainer_process import EarlySignals

def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m workflow.launch", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per node (1: in this process)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (> 1: srun, one task per process)")
    parser.add_argument("--cpus-per-proc", type=int, default=1, help="srun --cpus-per-task (several nodes)")
    parser.add_argument("--gpus-per-task", action="store_true", help="srun --gpus-per-task=1 (several nodes)")
    parser.add_argument("--log", type=Path, help="Snakemake's log; each attempt writes {stem}.attempt-N.log")
    parser.add_argument("--keep-finished", action="store_true", help="a run of a job group (launcher.keep_finished)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, trainer_argv = parser.parse_known_args(argv)
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--run-config")
    peek.add_argument("--out-dir")
    peek.add_argument("--meta")
    peek.add_argument("--data-dir", default="data")
    trainer_args, _ = peek.parse_known_args(trainer_argv)
    return args, trainer_argv, trainer_args


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the job's exit status."""
    early = EarlySignals()
    args, trainer_argv, targs = _parse(argv)
    if args.worker:
        return run_worker(trainer_argv, early)
    if args.log is not None:
        attempt = open_attempt_log(args.log)
        print(f"launch: this attempt's log is {attempt}", flush=True)
    if targs.run_config is None or targs.out_dir is None:
        print("error: --run-config and --out-dir are required (options of python -m workflow.train)", file=sys.stderr)
        return 2
    try:

        text = Path(targs.run_config[1:]).read_text() if targs.run_config.startswith("@") else targs.run_config
        run_cfg = json.loads(text)
        meta = targs.meta or os.path.join(tokens_dir(run_cfg["dataset"], targs.data_dir, run_cfg.get("dataset_options")), "meta.json")
        print(check_data(meta, run_cfg), flush=True)
    except (ValueError, KeyError, OSError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1
    if early.signum is not None:
        print("launch: PREEMPTED before training started", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    start = lambda: _start(args, trainer_argv, targs, run_cfg, early)
    return run_locked(targs.out_dir, (lambda: keep_finished(targs.out_dir, run_cfg, start)) if args.keep_finished else start)


def _start(args: argparse.Namespace, trainer_argv: list[str], targs: argparse.Namespace, run_cfg: dict,
           early: EarlySignals) -> int:
    """Start the trainer: in this process, under torchrun, or one srun task per process."""
    capped = cap_processes(args.nproc_per_node, args.nodes, (run_cfg.get("train") or {}).get("device", "auto"))
    if capped != args.nproc_per_node:
        print(f"launch: WARNING: {args.nproc_per_node} processes asked for, but this machine has no GPU and "
              f"{os.cpu_count()} CPUs: running {capped} CPU process(es) (gloo); the data-parallel world size "
              "changes, so results are not comparable with the study's GPU runs", file=sys.stderr, flush=True)
        args.nproc_per_node = capped
    world_size = args.nproc_per_node * args.nodes
    if world_size == 1:
        return start_trainer(trainer_argv, early)
    worker = [sys.executable, "-m", LAUNCH_STEP, "--worker", *trainer_argv]
    if args.nodes == 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(args.nproc_per_node), *worker[1:]]
        return run_workers(cmd, world_size, early=early)
    # Several nodes: the exit files must be on a file system every node sees (the run folder).
    Path(targs.out_dir).mkdir(parents=True, exist_ok=True)
    cmd = [*srun_prefix(args.nodes, args.nproc_per_node, args.cpus_per_proc, args.gpus_per_task), *worker]
    return run_workers(cmd, world_size, exit_dir_parent=targs.out_dir, early=early)


if __name__ == "__main__":
    sys.exit(main())
