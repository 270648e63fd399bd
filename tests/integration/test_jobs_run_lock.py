"""One trainer per run (workflow.jobs.run_lock): two ``snakemake`` processes in different working
folders on one ``results_dir`` (two users or two shells on a shared file system; Snakemake's own
lock covers one working folder only), both asked for the same run.

The first controller's launcher holds the run folder's lock while it trains; it is paused
(SIGSTOP) while holding it, so the second surely meets the lock. The second controller's job
fails at once with a reason naming the holder (host, pid, start time) and touches nothing: the
first's checkpoint stays, and once resumed the first finishes with the only, successful
result.json. A third controller that may wait (``STAGERUN_RUN_LOCK_WAIT``) waits for the first and
keeps its result instead of training again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
REPO = Path(__file__).resolve().parents[2]


def _controller(workdir: Path, study: Path, target: Path, mirror: str, **env) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "1",
         "--configfile", str(study), "--config", f"mirror={mirror}", "--", str(target)],
        stdout=(workdir / "snakemake.out").open("w"), stderr=subprocess.STDOUT, cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO), **env})


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _holder(run_dir: Path) -> dict | None:
    """The lock file's holder once its trainer has started and saved a checkpoint."""
    try:
        info = json.loads((run_dir / ".run.lock").read_text() or "{}")
    except (OSError, ValueError):
        return None
    return info if info.get("pid") and any((run_dir / "checkpoint").glob("*")) else None


def test_two_controllers_never_train_one_run_twice(tmp_path, shared_data_server):
    study = {
        "study": "lock", "dataset": "shakespeare_char", "base_seed": 1337, "baseline": "baseline",
        "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"), "warm_start": "off",
        "model": {"preset": "nanogpt-small", "n_layer": 1, "n_embd": 32, "n_head": 4, "block_size": 16},
        # long enough (seconds between the first checkpoint and the end, even on an idle machine)
        # that the test sees the first trainer mid-run and pauses it there
        "train": {"batch_size": 4, "num_iterations": 800, "checkpoint_every": 5, "val_loss_every": 400,
                  "log_every": 50, "val_tokens": 256, "device": "cpu"},
        "variants": {"baseline": {}}, "stages": {"A": {"seeds": 1}},
    }
    study_path = tmp_path / "study.yaml"
    study_path.write_text(yaml.safe_dump(study))
    run_dir = tmp_path / "results" / "lock" / "stage_A" / "baseline" / "seed_1337"
    target = run_dir / "result.json"

    first = _controller(tmp_path / "first", study_path, target, shared_data_server)
    try:
        holder = _wait(lambda: first.poll() is None and _holder(run_dir), 240, "the first trainer's checkpoint")
        os.kill(holder["pid"], signal.SIGSTOP)  # the first trainer holds the lock, paused mid-run
        try:
            checkpoint = sorted(p.name for p in (run_dir / "checkpoint").iterdir())
            second = _controller(tmp_path / "second", study_path, target, shared_data_server)
            assert second.wait(timeout=240) != 0, "the second controller trained a locked run"
            out = (tmp_path / "second" / "snakemake.out").read_text()
            log = "".join(p.read_text() for p in sorted(run_dir.glob("train.attempt-*.log")))
            reason = f"is locked by host {socket.gethostname()} pid {holder['pid']} (since "
            assert reason in log, log[-3000:]
            assert "another controller trains this run now" in log
            assert sorted(p.name for p in (run_dir / "checkpoint").iterdir()) == checkpoint, "checkpoint touched"
            assert not target.exists(), out[-2000:]

            third = _controller(tmp_path / "third", study_path, target, shared_data_server,
                                STAGERUN_RUN_LOCK_WAIT="600")
            _wait(lambda: "waiting up to 600 s" in "".join(p.read_text() for p in run_dir.glob("train.attempt-*.log")),
                  120, "the third controller to wait for the lock")
        finally:
            os.kill(holder["pid"], signal.SIGCONT)
        assert first.wait(timeout=300) == 0, (tmp_path / "first" / "snakemake.out").read_text()[-3000:]
        assert third.wait(timeout=300) == 0, (tmp_path / "third" / "snakemake.out").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    result = json.loads(target.read_text())
    assert result["success"] is True and result["final_step"] == 800, result
    logs = "".join(p.read_text() for p in sorted(run_dir.glob("train.attempt-*.log")))
    assert "while this job waited; its result is kept, not trained again" in logs
    assert logs.count("resumed from") == 0  # nobody restarted the first's run from its checkpoint
