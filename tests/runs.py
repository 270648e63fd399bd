"""Helpers for tests that read a training run's files while its real processes run
(``metrics.partial.jsonl``, ``metrics.jsonl``): shared by test_hardening, test_resume,
test_train and test_warm. Tests import it as ``runs`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

#: metrics.jsonl keys that measure time: they differ between two runs that compute the same.
TIMING_KEYS = ("train_time_ms", "step_avg_ms", "tokens_per_s", "mfu")


def rows_without_timings(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl without :data:`TIMING_KEYS` (to compare two runs exactly)."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in path.read_text().splitlines()]


def last_step(partial: Path) -> int:
    """The newest logged step of a running run's ``metrics.partial.jsonl`` (-1: none yet)."""
    try:
        lines = partial.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else -1
    except (OSError, ValueError):
        return -1


def wait_for_step(partial: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Block until the run of ``proc`` logged ``step``; fails if it ended before or took too long."""
    deadline = time.monotonic() + timeout
    while last_step(partial) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before step {step}"
    assert last_step(partial) >= step, f"no step {step} in {partial} after {timeout} s"
