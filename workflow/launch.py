"""launch: split from workflow/jobs/launcher.py."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from workflow.core.exits import EXIT_PREEMPTED
from workflow.jobs.launcher import (
    _worker,
    cap_processes,
    check_token_windows,
    open_attempt_log,
    run_workers,
    srun_prefix,
    start_trainer,
)
from workflow.jobs.trainer_process import EarlySignals

# --------------------------------------------------------------------------- CLI

def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m workflow.launch", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per node (1: in this process)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (> 1: srun, one task per process)")
    parser.add_argument("--cpus-per-proc", type=int, default=1, help="srun --cpus-per-task (several nodes)")
    parser.add_argument("--gpus-per-task", action="store_true", help="srun --gpus-per-task=1 (several nodes)")
    parser.add_argument("--log", type=Path, help="Snakemake's log; each attempt writes {stem}.attempt-N.log")
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
        return _worker(trainer_argv, early)
    if args.log is not None:
        attempt = open_attempt_log(args.log)
        print(f"launch: this attempt's log is {attempt}", flush=True)
    if targs.run_config is None or targs.out_dir is None:
        print("error: --run-config and --out-dir are required (options of python -m workflow.train)", file=sys.stderr)
        return 2
    try:
        import json

        text = Path(targs.run_config[1:]).read_text() if targs.run_config.startswith("@") else targs.run_config
        run_cfg = json.loads(text)
        meta = targs.meta or os.path.join(targs.data_dir, "tokens", run_cfg["dataset"], "meta.json")
        print(check_token_windows(meta, run_cfg.get("model") or {}), flush=True)
    except (ValueError, KeyError, OSError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1
    if early.signum is not None:
        print("launch: PREEMPTED before training started", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    capped = cap_processes(args.nproc_per_node, args.nodes, (run_cfg.get("train") or {}).get("device", "auto"))
    if capped != args.nproc_per_node:
        print(f"launch: WARNING: {args.nproc_per_node} processes asked for, but this machine has no GPU and "
              f"{os.cpu_count()} CPUs: running {capped} CPU process(es) (gloo); the data-parallel world size "
              "changes, so results are not comparable with the study's GPU runs", file=sys.stderr, flush=True)
        args.nproc_per_node = capped
    world_size = args.nproc_per_node * args.nodes
    if world_size == 1:
        return start_trainer(trainer_argv, early)
    worker = [sys.executable, "-m", "workflow.launch", "--worker", *trainer_argv]
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
