"""What every training job does the same way, light to import (the script runner's
start-up must not load the study's schedules): the per-attempt log and the srun layout.
workflow.jobs.launcher re-exports both.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def open_attempt_log(log: str | os.PathLike) -> Path:
    """Send this process's stdout/stderr (and its children's) to a new ``{stem}.attempt-N.log``.

    N is one more than the highest existing attempt (the file is created with ``O_EXCL``);
    ``log`` becomes a hard link to it (symbolic link if hard links fail). Returns the attempt log.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{log.stem}.attempt-"
    taken = [p.name[len(prefix):-len(log.suffix) or None] for p in log.parent.glob(f"{prefix}*{log.suffix}")]
    n = 1 + max((int(t) for t in taken if t.isdigit()), default=0)
    while True:
        attempt = log.with_name(f"{prefix}{n}{log.suffix}")
        try:
            fd = os.open(attempt, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
            break
        except FileExistsError:
            n += 1
    with contextlib.suppress(FileNotFoundError):
        log.unlink()
    try:
        os.link(attempt, log)
    except OSError:
        os.symlink(attempt.name, log)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return attempt


def srun_prefix(nodes: int, nproc_per_node: int, cpus_per_proc: int, gpus_per_task: bool) -> list[str]:
    """``srun`` arguments that place one task per process (per GPU) across ``nodes`` nodes."""
    return ["srun", f"--nodes={nodes}", f"--ntasks-per-node={nproc_per_node}",
            *(["--gpus-per-task=1"] if gpus_per_task else []), f"--cpus-per-task={cpus_per_proc}",
            "--kill-on-bad-exit=1"]
