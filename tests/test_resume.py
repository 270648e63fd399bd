"""Preemption and resume with real processes: ``kill -TERM`` of a real ``torchrun`` agent
(1 process, and 2 gloo processes) mid-training, then the same command again. On CPU the
resumed run must end EXACTLY where an uninterrupted run ends (val_loss and every metrics
row but the timings), with every piece of state in play: Muon + AdamW moments, dropout RNG,
DepthWarm stochastic depth, a plateau curriculum (depends on the val_loss history) and an
open log window at the checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workflow.distributed import DistContext
from workflow.train import Trainer, configure_backends

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMING_KEYS = ("train_time_ms", "step_avg_ms", "tokens_per_s", "mfu")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def meta(shakespeare_char_meta) -> Path:
    """Tiny Shakespeare, character level (the session fixture of conftest.py)."""
    return shakespeare_char_meta


def resume_cfg(num_iterations: int = 100, **train) -> dict:
    return {
        "study": "r", "stage": "A", "variant": "v", "seed": 1337, "run_id": 0, "dataset": "shakespeare_char",
        "model": {"preset": "nanogpt-small", "n_layer": 3, "dropout": 0.1, "depth_warm": True,
                  "depth_warm_start_layers": 1, "depth_warm_steps": 60, "depth_warm_drop_prob": 0.3,
                  "depth_warm_drop_until": 200},
        "train": {"batch_size": 8, "num_iterations": num_iterations, "optimizer": "muon", "lr": 3e-3,
                  "warmup_iters": 5, "val_loss_every": 20, "log_every": 7, "val_tokens": 512,
                  "checkpoint_every": 10, "curriculum_block_sizes": [16, 32], "curriculum_advance": "plateau",
                  "curriculum_patience": 1, "curriculum_min_delta": 0.05, "device": "cpu", **train},
    }


def torchrun_cmd(cfg: dict, out_dir: Path, meta: Path, nproc: int) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "-m", "workflow.train", "--run-config", json.dumps(cfg), "--out-dir", str(out_dir),
            "--meta", str(meta), "--threads", "1"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def rows_without_timings(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def last_step(partial: Path) -> int:
    try:
        lines = partial.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else -1
    except (OSError, ValueError):
        return -1


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_to_torchrun_then_rerun_equals_uninterrupted(nproc, tmp_path, meta):
    cfg = resume_cfg()
    n = cfg["train"]["num_iterations"]
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "preempted"
    if nproc == 1:  # one process: the same arithmetic in-process (saves a launch)
        _train(cfg, ref_dir, meta)
    else:
        ref = subprocess.run(torchrun_cmd(cfg, ref_dir, meta, nproc), capture_output=True, text=True, env=env(),
                             cwd=tmp_path, timeout=240)
        assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    log = open(tmp_path / "preempted.log", "w")
    proc = subprocess.Popen(torchrun_cmd(cfg, run_dir, meta, nproc), stdout=log, stderr=subprocess.STDOUT,
                            env=env(), cwd=tmp_path)
    partial = run_dir / "metrics.partial.jsonl"
    deadline = time.monotonic() + 180
    while last_step(partial) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be preempted"
    proc.send_signal(signal.SIGTERM)  # the torchrun agent; it forwards SIGTERM to its workers
    code = proc.wait(timeout=120)
    log.close()
    text = (tmp_path / "preempted.log").read_text()
    assert code != 0, text[-3000:]
    assert "PREEMPTED by signal at step" in text, text[-3000:]
    assert not (run_dir / "result.json").exists() and not (run_dir / "metrics.jsonl").exists()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert 20 <= state["step"] < n and state["finished"] is False
    # (the agent itself exits 1 after a signal; the workers exit EXIT_PREEMPTED = 75 after the checkpoint)

    again = subprocess.run(torchrun_cmd(cfg, run_dir, meta, nproc), capture_output=True, text=True, env=env(),
                           cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoint.pt'} at step {state['step']}" in again.stdout

    ref_result = json.loads((ref_dir / "result.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_val_loss"] == ref_result["final_val_loss"]  # exactly
    assert result["final_train_loss"] == ref_result["final_train_loss"]
    assert rows_without_timings(run_dir / "metrics.jsonl") == rows_without_timings(ref_dir / "metrics.jsonl")
    seq_lens = {r["seq_len"] for r in rows_without_timings(ref_dir / "metrics.jsonl")}
    assert seq_lens == {16, 32}  # the plateau curriculum did advance within the run


def _train(cfg: dict, out_dir: Path, meta: Path, steps: int | None = None, capsys=None) -> Trainer:
    """In-process trainer; with ``steps``: train that many steps and leave an unfinished checkpoint."""
    torch.set_num_threads(1)
    ctx = DistContext()
    configure_backends(ctx)
    trainer = Trainer(cfg, out_dir, meta, ctx)
    if steps is None:
        trainer.run()
        return trainer
    from workflow.train import _PreemptionFlag

    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    trainer.preemption = _PreemptionFlag()
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1
    trainer.save_checkpoint()
    return trainer


def test_checkpoint_of_another_config_or_a_finished_run_is_ignored(tmp_path, meta, capsys):
    cfg = resume_cfg(num_iterations=12, checkpoint_every=0, val_loss_every=6, curriculum_block_sizes=None)
    _train(cfg, tmp_path / "fresh", meta)
    fresh = json.loads((tmp_path / "fresh" / "result.json").read_text())

    other = resume_cfg(num_iterations=12, checkpoint_every=0, val_loss_every=6, curriculum_block_sizes=None, lr=1e-2)
    _train(other, tmp_path / "run", meta, steps=5)  # unfinished checkpoint of another config (lr)
    capsys.readouterr()
    _train(cfg, tmp_path / "run", meta)
    out = capsys.readouterr().out
    assert "belongs to another config or seed" in out and "resumed" not in out
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["final_val_loss"] == fresh["final_val_loss"]

    # The same config resumes from an unfinished checkpoint ...
    _train(cfg, tmp_path / "same", meta, steps=5)
    capsys.readouterr()
    _train(cfg, tmp_path / "same", meta)
    assert "at step 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "same" / "result.json").read_text())["final_val_loss"] == fresh["final_val_loss"]
    # ... but never from the final checkpoint of a finished run (a re-run trains afresh).
    _train(cfg, tmp_path / "same", meta)
    out = capsys.readouterr().out
    assert "final checkpoint of a finished run" in out and "resumed" not in out
    assert json.loads((tmp_path / "same" / "result.json").read_text())["final_val_loss"] == fresh["final_val_loss"]
