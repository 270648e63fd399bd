"""One trainer per run folder: an exclusive ``flock`` on ``<run>/.run.lock`` held by the job's
launcher for the run's life (light to import: no torch).

Two controllers (two ``snakemake`` calls in different working folders, or two users, on one
``results_dir``) can reach the same run: Snakemake's own lock covers one working folder only.
The launcher of the first takes the lock and writes who holds it (host, pid, start time, SLURM
job) into the file; the second finds it held and, after waiting up to ``wait_s`` seconds
(``STAGERUN_RUN_LOCK_WAIT``; default 0: at once), either

- fails its job before anything is touched (no checkpoint deleted, no result written), with
  one line naming the holder: ``run folder ... is locked by host n1 pid 4242 (since ...)``;
- or, when the holder finished the run while it waited (``result.json`` written after this
  job started), keeps that result and exits 0 without training.

The kernel drops the lock when the holder dies (also SIGKILL, a node's preemption), so a
requeued job gets it back. Shared file systems: ``flock`` works across nodes on NFS (the Linux
client maps it to NFS byte-range locks, NFSv4 or NFSv3 with lockd), on Lustre only when mounted
with ``-o flock``, on GPFS/BeeGFS where their POSIX locking is enabled; where the file system
ignores it (``-o localflock``, ``nolock``) a lock only excludes controllers on the same node.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".run.lock"
WAIT_ENV = "STAGERUN_RUN_LOCK_WAIT"


class RunLocked(RuntimeError):
    """The run folder is locked by another live trainer; the message names it."""


def holder_text(info: dict) -> str:
    """``host n1 pid 4242 (since 2026-12-07 18:00:01 UTC, SLURM job 21)`` from the lock file's JSON."""
    since = info.get("started")
    when = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if since else "unknown time"
    job = f", SLURM job {info['slurm_job']}" if info.get("slurm_job") else ""
    cwd = f", working folder {info['cwd']}" if info.get("cwd") else ""
    return f"host {info.get('host', '?')} pid {info.get('pid', '?')} (since {when}{job}{cwd})"


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.run.lock`` (see the module docstring).

    Raises:
        RunLocked: on entry, when another process holds it after ``wait_s`` seconds.
    """

    def __init__(self, run_dir: str | os.PathLike, wait_s: float | None = None, poll_s: float = 1.0):
        self.path = Path(run_dir) / LOCK_FILE
        self.wait_s = float(os.environ.get(WAIT_ENV, "0") or 0) if wait_s is None else wait_s
        self.poll_s = poll_s
        self.fd: int | None = None
        self.waited_for: dict | None = None  # the holder this process waited for, if any

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(fd)
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunLocked(
                        f"run folder {self.path.parent} is locked by {holder_text(holder)}: another controller "
                        "trains this run now; this job does not train it twice (nothing in the folder was changed). "
                        f"Wait for it, or set {WAIT_ENV}=SECONDS to let a job wait for the other") from None
                if self.waited_for is None:
                    print(f"run lock: {self.path.parent} is held by {holder_text(holder)}; waiting up to "
                          f"{self.wait_s:.0f} s", flush=True)
                self.waited_for = holder
                time.sleep(self.poll_s)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "cwd": os.getcwd(),
                "slurm_job": os.environ.get("SLURM_JOB_ID")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


def finished_by_other(run_dir: str | os.PathLike, job_started: float) -> bool:
    """Whether ``result.json`` of a successful run appeared in ``run_dir`` after ``job_started``
    (epoch seconds): the run another controller finished while this job waited for its lock.
    Snakemake removes a job's outputs before it starts it, so such a file is the other's."""
    result = Path(run_dir) / "result.json"
    try:
        if result.stat().st_mtime < job_started:
            return False
        return json.loads(result.read_text()).get("success") is True
    except (OSError, ValueError):
        return False


def run_locked(run_dir: str | os.PathLike, start, what: str = "launch") -> int:
    """``start()`` (a job's training, returning its exit status) while holding ``run_dir``'s lock:
    1 with the holder named when another trainer holds it; 0 without training when the holder
    finished the run while this job waited (its result is kept)."""
    job_started = time.time()
    try:
        with RunLock(run_dir) as lock:
            if lock.waited_for is not None and finished_by_other(run_dir, job_started):
                print(f"{what}: run finished by {holder_text(lock.waited_for)} while this job waited; "
                      "its result is kept, not trained again", flush=True)
                return 0
            return start()
    except RunLocked as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1


_HELD: list[RunLock] = []  # locks held until this process exits (hold_for_process)


def hold_for_process(run_dir: str | os.PathLike, what: str) -> int | None:
    """Take ``run_dir``'s lock until this process exits: None to go on training, else the exit
    status to return at once (1: held by another trainer, named; 0: it finished the run while this
    job waited)."""
    job_started = time.time()
    try:
        lock = RunLock(run_dir).__enter__()
    except RunLocked as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    _HELD.append(lock)
    if lock.waited_for is not None and finished_by_other(run_dir, job_started):
        print(f"{what}: run finished by {holder_text(lock.waited_for)} while this job waited; "
              "its result is kept, not trained again", flush=True)
        return 0
    return None
