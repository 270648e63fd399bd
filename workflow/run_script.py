"""A script run's job: ``python -m workflow.run_script`` (the step the ``train`` rule runs for a
variant whose ``trainer`` has a script or command; the built-in trainer's is ``workflow.launch``).

Same options and outputs as ``workflow.launch``: ``--log``, ``--run-config``, ``--out-dir``,
``--meta``, ``--nproc-per-node``, ``--nodes``; the library is :mod:`workflow.jobs.script_runner`
(launch, live metrics capture, preemption, result.json). Exit status: 0 finished (a failed script
is a result with its reason), 75 preempted, 1 on a job error (named).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workflow.core.exits import EXIT_PREEMPTED
from workflow.core.io import read_json, write_json_atomic, write_text_atomic
from workflow.jobs.capture import LiveRows, MetricsCapture, json_line, load_rows
from workflow.jobs.job_common import open_attempt_log
from workflow.jobs.run_lock import hold_for_process
from workflow.jobs.script_result import (build_result, failure_reason, file_hashes, git_record, no_space,
                                          say_on_full_disk)
from workflow.jobs.script_runner import (CHECKPOINT_DIR, PARTIAL_FILE, SCRIPT_METRICS_FILE, STATE_FILE, TAIL_LINES,
                                          Forwarder, Limits, fresh_run_dir, full_command, placeholder_values, run_script,
                                          script_env)
from workflow.study.script_files import tracked_files
from workflow.study.trainer_env import restore_trainer
from workflow.study.trainer_section import TrainerConfigError

# --------------------------------------------------------------------------- CLI

def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workflow.run_script", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--cpus-per-proc", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node (0: CPU)")
    parser.add_argument("--log", type=Path, help="Snakemake's log; each attempt writes {stem}.attempt-N.log")
    parser.add_argument("--run-config", required=True, help="the run config as JSON, or @file")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--meta", required=True, type=Path, help="the dataset's meta.json")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the script unless set (0: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the job's exit status."""
    forwarder = Forwarder()
    args = _parse(argv)
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (locked := hold_for_process(out_dir, "script_runner")) is not None:  # one trainer per run folder
        return locked
    state_path = out_dir / STATE_FILE
    state = read_json(state_path) if state_path.exists() else {"attempts": 0, "seconds": 0.0}
    attempt = int(state["attempts"]) + 1
    fresh_run_dir(out_dir, args.log, attempt)  # a fresh run: earlier runs' logs, rows and checkpoints go
    if args.log is not None:
        attempt_log = open_attempt_log(args.log)
        print(f"script_runner: this attempt's log is {attempt_log}", flush=True)
    text = Path(args.run_config[1:]).read_text() if args.run_config.startswith("@") else args.run_config
    run_cfg = json.loads(text)
    res = {"nproc_per_node": args.nproc_per_node, "nodes": args.nodes, "cpus_per_proc": args.cpus_per_proc,
           "gpus": args.gpus}
    try:
        run_cfg["trainer"] = restore_trainer(run_cfg["trainer"])  # env values: from the environment, never argv
        trainer = run_cfg["trainer"]
        values = placeholder_values(run_cfg, out_dir, args.meta, res, attempt)
        cmd = full_command(run_cfg, values, res)
        env, env_keys = script_env(run_cfg, values, args.threads)
        tracked = tracked_files(trainer, values)
    except (TrainerConfigError, KeyError, subprocess.SubprocessError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    metrics = trainer.get("metrics", "nanogpt")
    partial = out_dir / PARTIAL_FILE
    capture = MetricsCapture(metrics, prior=load_rows(partial) if attempt > 1 else ())
    hashes = file_hashes(trainer, tracked)
    git: dict = {}  # read while the script runs (two git calls: tens of ms of start-up otherwise)
    git_thread = threading.Thread(target=lambda: git.update(git_record(Path(trainer["workdir"]))), daemon=True)
    git_thread.start()
    print(f"script_runner: attempt {attempt}; in {trainer['workdir']}: {shlex.join(cmd)}", flush=True)
    print(f"script_runner: environment set by stagerun: {', '.join(env_keys)}", flush=True)
    if forwarder.preempted:
        print("script_runner: PREEMPTED before the script started", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    live = LiveRows(partial, capture)
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    limit_min = trainer.get("time_limit")
    limits = Limits(limit_min * 60.0 if limit_min else None)
    try:
        status = run_script(cmd, trainer["workdir"], env, capture, out_dir / SCRIPT_METRICS_FILE, live, forwarder, tail,
                            limits)
    except OSError as err:
        if err.errno == errno.ENOSPC:  # the log or the rows could not be written: say where and how much is left
            if forwarder.pgid:
                with contextlib.suppress(OSError):
                    os.killpg(forwarder.pgid, signal.SIGKILL)
            say_on_full_disk(f"script_runner: no space left on device while the script ran: {no_space(out_dir, args.log)}")
            return 1
        # the interpreter or command is missing
        status = 127
        tail.append(f"cannot start {cmd[0]}: {err}")
        print(f"script_runner: cannot start {cmd[0]}: {err}", file=sys.stderr, flush=True)
    finally:
        live.close()
    seconds = float(state["seconds"]) + time.monotonic() - start
    git_thread.join(timeout=60)
    git = git or {"commit": None, "dirty": None, "diff": ""}
    preempted = status == EXIT_PREEMPTED or (forwarder.preempted and status != 0)
    if preempted:
        write_json_atomic(state_path, {"attempts": attempt, "seconds": seconds})
        why = "exited 75" if status == EXIT_PREEMPTED else f"ended ({status}) after " + ", ".join(
            signal.Signals(s).name for s in forwarder.received)
        print(f"script_runner: PREEMPTED: the script {why}; {len(capture.rows)} rows kept, the rerun continues "
              "(exit 75)", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    trainer_cfg = trainer
    rows = capture.sorted_rows(trainer_cfg.get("tokens_per_step"), trainer_cfg.get("flops_per_token"))
    reason = failure_reason(status, capture, metrics, tail, limit_min if limits.reached else None)
    result = build_result(run_cfg, res, status, reason, rows, capture, seconds, attempt, cmd, env_keys, hashes, git,
                          out_dir)
    if git["diff"]:
        write_text_atomic(out_dir / "script_git_diff.patch", git["diff"])
    write_text_atomic(out_dir / "metrics.jsonl", "".join(json_line(r) for r in rows))
    write_json_atomic(out_dir / "result.json", result)
    for done in (state_path, partial):
        done.unlink(missing_ok=True)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)  # a finished run's rerun starts afresh
    status_text = "finished" if reason is None else f"FAILED ({reason})"
    print(f"script_runner: {status_text}: final val_loss {result['final_val_loss']}, final step "
          f"{result['final_step']}, {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
