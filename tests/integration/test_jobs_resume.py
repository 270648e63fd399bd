"""Preemption and resume with real processes: ``kill -TERM`` of a real ``torchrun`` agent
(1 process, and 2 gloo processes) mid-training, then the same command again. On CPU the
resumed run must end EXACTLY where an uninterrupted run ends (val_loss and every metrics
row but the timings), for every strategy, with every piece of state in play: Muon + AdamW
moments, dropout RNG, DepthWarm stochastic depth, a plateau curriculum (depends on the
val_loss history), an open log window at the checkpoint, and per-worker state (DiLoCo's
global model and outer momentum, killed mid-round; gossip's trackers and neighbours' models).

Checkpoints are per rank in two slots and are loaded with ``weights_only=True``: a planted
pickle never runs, and a corrupted newest checkpoint falls back to the previous one.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import last_step, rows_without_timings  # tests/runs.py

from workflow.parallel.process_groups import DistContext
from workflow.train import configure_backends
from workflow.training import checkpoint
from workflow.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = pytest.mark.timeout(300)

#: Strategy sections of the resume test: DiLoCo's tau 7 does not divide the checkpoint
#: interval (10), so a kill lands mid-round.
STRATEGY_CASES = {
    "ddp": {"name": "ddp"},
    "diloco": {"name": "diloco", "tau": 7, "outer_lr": 0.7, "outer_momentum": 0.9},
    "gossip": {"name": "gossip", "topology": "ring", "algorithm": "demuon", "msgn": 1},
}


@pytest.fixture(scope="module")
def meta(shakespeare_char_meta) -> Path:
    """Tiny Shakespeare, character level (the session fixture of conftest.py)."""
    return shakespeare_char_meta


def resume_cfg(num_iterations: int = 100, strategy: dict | None = None, **train) -> dict:
    return {
        "study": "r", "stage": "A", "variant": "v", "seed": 1337, "run_id": 0, "dataset": "shakespeare_char",
        "model": {"preset": "nanogpt-small", "n_layer": 3, "dropout": 0.1, "depth_warm": True,
                  "depth_warm_start_layers": 1, "depth_warm_steps": 60, "depth_warm_drop_prob": 0.3,
                  "depth_warm_drop_until": 200},
        "train": {"batch_size": 8, "num_iterations": num_iterations, "optimizer": "muon", "lr": 3e-3,
                  "warmup_iters": 5, "val_loss_every": 20, "log_every": 7, "val_tokens": 512,
                  "checkpoint_every": 10, "curriculum_block_sizes": [16, 32], "curriculum_advance": "plateau",
                  "curriculum_patience": 1, "curriculum_min_delta": 0.05, "device": "cpu",
                  "strategy": strategy or {"name": "ddp"}, **train},
    }


def torchrun_cmd(cfg: dict, out_dir: Path, meta: Path, nproc: int) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "-m", "workflow.train", "--run-config", json.dumps(cfg), "--out-dir", str(out_dir),
            "--meta", str(meta), "--threads", "1"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def newest_step(run_dir: Path) -> int:
    slots = checkpoint.slots_newest_first(run_dir)
    return slots[0][1]["step"] if slots else -1


CASES = [("ddp", 1), *[(name, 2) for name in STRATEGY_CASES]]


@pytest.mark.parametrize("strategy,nproc", CASES, ids=[f"{s}-{n}proc" for s, n in CASES])
def test_sigterm_to_torchrun_then_rerun_equals_uninterrupted(strategy, nproc, tmp_path, meta):
    cfg = resume_cfg(strategy=STRATEGY_CASES[strategy])
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
    while last_step(partial) < 24 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be preempted"
    proc.send_signal(signal.SIGTERM)  # the torchrun agent; it forwards SIGTERM to its workers
    code = proc.wait(timeout=120)
    log.close()
    text = (tmp_path / "preempted.log").read_text()
    assert code != 0, text[-3000:]
    assert "PREEMPTED by signal at step" in text, text[-3000:]
    assert not (run_dir / "result.json").exists() and not (run_dir / "metrics.jsonl").exists()
    step = newest_step(run_dir)
    assert 24 <= step < n
    for rank in range(nproc):  # every rank's state is saved and loads without pickle code
        state = torch.load(checkpoint.slots_newest_first(run_dir)[0][0] / f"rank-{rank}.pt", weights_only=True)
        assert state["run"]["step"] == step

    again = subprocess.run(torchrun_cmd(cfg, run_dir, meta, nproc), capture_output=True, text=True, env=env(),
                           cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoint'} at step {step}" in again.stdout

    ref_result = json.loads((ref_dir / "result.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_val_loss"] == ref_result["final_val_loss"]  # exactly
    assert result["final_train_loss"] == ref_result["final_train_loss"]
    assert rows_without_timings(run_dir / "metrics.jsonl") == rows_without_timings(ref_dir / "metrics.jsonl")
    # the communication counts survive the kill: the same messages as the uninterrupted run
    # (plus the resumed attempt's checkpoint-slot agreement)
    ref_bytes = {k: v for k, v in ref_result["communication"]["bytes_by_kind"].items() if k != "checkpoint"}
    bytes_ = {k: v for k, v in result["communication"]["bytes_by_kind"].items() if k != "checkpoint"}
    assert bytes_ == ref_bytes
    seq_lens = {r["seq_len"] for r in rows_without_timings(ref_dir / "metrics.jsonl")}
    assert seq_lens == {16, 32}  # the plateau curriculum did advance within the run
    assert not (run_dir / "checkpoint").exists() and (run_dir / "model.pt").exists()


def _train(cfg: dict, out_dir: Path, meta: Path, steps: int | None = None) -> Trainer:
    """In-process trainer; with ``steps``: train that many steps and leave an unfinished checkpoint."""
    torch.set_num_threads(1)
    ctx = DistContext()
    configure_backends(ctx)
    trainer = Trainer(cfg, out_dir, meta, ctx)
    if steps is None:
        trainer.run()
        return trainer
    from workflow.training.state import PreemptionFlag

    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    trainer.preemption = PreemptionFlag()
    for _ in range(steps):
        trainer.train_step()
        trainer.state.step += 1
    trainer.save_checkpoint()
    return trainer


def small_cfg(num_iterations: int = 12, **train) -> dict:
    return resume_cfg(num_iterations=num_iterations, checkpoint_every=0, val_loss_every=6, curriculum_block_sizes=None,
                      **train)


def test_checkpoint_of_another_config_or_a_finished_run_is_ignored(tmp_path, meta, capsys):
    cfg = small_cfg()
    _train(cfg, tmp_path / "fresh", meta)
    fresh = json.loads((tmp_path / "fresh" / "result.json").read_text())

    _train(small_cfg(lr=1e-2), tmp_path / "run", meta, steps=5)  # unfinished checkpoint of another config
    capsys.readouterr()
    _train(cfg, tmp_path / "run", meta)
    out = capsys.readouterr().out
    assert "belongs to another config or seed" in out and "resumed" not in out
    assert json.loads((tmp_path / "run" / "result.json").read_text())["final_val_loss"] == fresh["final_val_loss"]

    # The same config resumes from an unfinished checkpoint ...
    _train(cfg, tmp_path / "same", meta, steps=5)
    capsys.readouterr()
    _train(cfg, tmp_path / "same", meta)
    assert "at step 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "same" / "result.json").read_text())["final_val_loss"] == fresh["final_val_loss"]
    # ... but a finished run leaves no checkpoint, so a re-run trains afresh.
    assert not (tmp_path / "same" / "checkpoint").exists()
    _train(cfg, tmp_path / "same", meta)
    assert "resumed" not in capsys.readouterr().out
    assert json.loads((tmp_path / "same" / "result.json").read_text())["final_val_loss"] == fresh["final_val_loss"]


class _Planted:
    """A pickle that runs a command when unpickled (what an attacker would plant)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_checkpoint_never_runs(tmp_path, meta, capsys):
    cfg = small_cfg()
    run = tmp_path / "run"
    _train(cfg, run, meta, steps=4)  # a genuine, unfinished checkpoint in slot a
    slot = checkpoint.slots_newest_first(run)[0][0]
    marker = tmp_path / "PWNED"
    # The attacker replaces the rank file with a code-running pickle and fixes up the manifest's
    # hash (anyone who can write the folder can), and also plants a legacy checkpoint.pt.
    payload = pickle.dumps({"model": _Planted(marker)})
    (slot / "rank-0.pt").write_bytes(payload)
    manifest = json.loads((slot / "manifest.json").read_text())
    import hashlib

    manifest["files"]["rank-0.pt"] = hashlib.sha256(payload).hexdigest()
    (slot / "manifest.json").write_text(json.dumps(manifest))
    (run / "checkpoint.pt").write_bytes(pickle.dumps(_Planted(marker)))
    assert not marker.exists()
    capsys.readouterr()
    _train(cfg, run, meta)
    out = capsys.readouterr().out
    assert not marker.exists(), "a planted checkpoint ran code"
    assert f"ignoring checkpoint {slot}: unreadable" in out and "starting afresh" in out
    assert "ignoring" in out and "checkpoint.pt" in out
    fresh = _train(cfg, tmp_path / "fresh", meta)
    assert json.loads((run / "result.json").read_text())["final_val_loss"] == fresh.state.last_val_loss


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, meta, capsys):
    cfg = small_cfg()
    run = tmp_path / "run"
    trainer = _train(cfg, run, meta, steps=3)  # slot a at step 3
    for _ in range(3):
        trainer.train_step()
        trainer.state.step += 1
    trainer.save_checkpoint()  # slot b at step 6
    slots = checkpoint.slots_newest_first(run)
    assert [m["step"] for _, m in slots] == [6, 3]
    newest = slots[0][0] / "rank-0.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated (a full disk, a crash)
    capsys.readouterr()
    _train(cfg, run, meta)
    out = capsys.readouterr().out
    assert f"ignoring checkpoint {slots[0][0]}: unreadable" in out and "falling back to the previous checkpoint" in out
    assert "at step 3" in out
    fresh = _train(cfg, tmp_path / "fresh", meta)
    assert json.loads((run / "result.json").read_text())["final_val_loss"] == fresh.state.last_val_loss


def test_diloco_resume_mid_round_in_process(tmp_path, meta, capsys):
    """A checkpoint at step 10 with tau 7 is mid-round (3 inner steps into round 2): the global
    model and the outer momentum come back exactly."""
    cfg = small_cfg(strategy={"name": "diloco", "tau": 7, "outer_lr": 0.7, "outer_momentum": 0.9}, num_iterations=20)
    ref = _train(cfg, tmp_path / "ref", meta)
    _train(cfg, tmp_path / "run", meta, steps=10)
    capsys.readouterr()
    resumed = _train(cfg, tmp_path / "run", meta)
    assert "at step 10" in capsys.readouterr().out
    assert resumed.strategy.rounds == ref.strategy.rounds == 3  # ceil(20 / 7): the partial last round ends with an outer step
    assert torch.equal(resumed.strategy.global_params, ref.strategy.global_params)
    # (steps 1-10 ran without the loop's counters and log: compare the losses after the resume)
    def losses(path):
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in rows_without_timings(path) if r["step"] > 12]
    assert losses(tmp_path / "run" / "metrics.jsonl") == losses(tmp_path / "ref" / "metrics.jsonl")
    assert resumed.state.last_val_loss == ref.state.last_val_loss
