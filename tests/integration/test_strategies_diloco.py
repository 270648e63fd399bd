"""DiLoCo (arXiv 2311.08105) with real gloo processes.

- tau 1, outer_lr 1, no momentum, a linear inner optimizer (SGD, no clipping): 2-process
  DiLoCo follows 2-process DDP's loss curve (the outer step averages the workers' one-step
  updates, which for SGD is the update of the averaged gradient);
- the pseudo-gradient's sign: the outer step moves the global model TOWARD the workers' mean;
- the measured all-reduces: exactly one parameter all-reduce per outer step and worker, no
  gradient all-reduce, plus the counted loss reductions;
- a partial last round (25 steps at tau 10) ends with an outer step: 3 outer all-reduces per
  worker, and the final model is the global model after all 25 steps;
- tau 1 equals DDP only with clipping off (DiLoCo clips each worker's gradient, DDP the mean).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workflow.parallel.comm import CommCounter
from workflow.parallel.process_groups import DistContext
from workflow.strategies.base import flat_parameters
from workflow.strategies.diloco import DiLoCoStrategy

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = pytest.mark.timeout(300)


def cfg(strategy: dict, **train) -> dict:
    return {
        "study": "d", "stage": "A", "variant": strategy["name"], "seed": 1337, "run_id": 0,
        "dataset": "shakespeare_char", "model": {"preset": "nanogpt-small"},
        "train": {"batch_size": 8, "num_iterations": 24, "lr": 0.2, "optimizer": "sgd", "grad_clip": 0.0,
                  "weight_decay": 0.0, "schedule": "constant", "val_loss_every": 12, "log_every": 1,
                  "val_tokens": 1024, "device": "cpu", "strategy": strategy, **train},
    }


def torchrun(run_cfg: dict, out_dir: Path, meta: Path, nproc: int = 2) -> dict:
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc), "-m", "workflow.train",
         "--run-config", json.dumps(run_cfg), "--out-dir", str(out_dir), "--meta", str(meta), "--threads", "1"],
        capture_output=True, text=True, timeout=240, cwd=out_dir.parent,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out_dir / "result.json").read_text())


def losses(out_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return ([r["train_loss"] for r in rows if r["train_loss"] is not None],
            [r["val_loss"] for r in rows if r["val_loss"] is not None])


def test_tau_1_outer_lr_1_no_momentum_equals_ddp_and_counts_one_all_reduce_per_round(tmp_path, shakespeare_char_meta):
    meta = shakespeare_char_meta
    ddp = torchrun(cfg({"name": "ddp"}), tmp_path / "ddp", meta)
    diloco = torchrun(cfg({"name": "diloco", "tau": 1, "outer_lr": 1.0, "outer_momentum": 0.0, "nesterov": False}),
                      tmp_path / "diloco", meta)
    train_ddp, val_ddp = losses(tmp_path / "ddp")
    train_dl, val_dl = losses(tmp_path / "diloco")
    assert len(train_ddp) == len(train_dl) == 24
    assert train_dl == pytest.approx(train_ddp, rel=1e-5, abs=0)
    assert val_dl == pytest.approx(val_ddp, rel=1e-5, abs=0)
    assert train_ddp[-1] < train_ddp[0] - 0.3  # it learned

    # Measured messages: DDP all-reduces gradients every step, DiLoCo parameters every round.
    calls = diloco["communication"]["calls_by_kind"]
    assert "grad_all_reduce" not in calls and calls["outer_all_reduce"] == 2 * 24
    assert ddp["communication"]["calls_by_kind"]["grad_all_reduce"] == 2 * 24


def test_all_reduces_per_run_equal_the_outer_steps(tmp_path, shakespeare_char_meta):
    run = cfg({"name": "diloco", "tau": 5, "outer_lr": 0.7, "outer_momentum": 0.9, "outer_steps": 4},
              optimizer="adamw", lr=3e-3, val_loss_every=10)
    result = torchrun(run, tmp_path / "run", shakespeare_char_meta)
    assert result["final_step"] == result["num_iterations"] == 20  # outer_steps x tau
    comm = result["communication"]
    n_params = result["num_parameters"]
    assert comm["calls_by_kind"]["outer_all_reduce"] == 2 * 4  # 4 outer steps x 2 workers
    assert comm["bytes_by_kind"]["outer_all_reduce"] == 2 * 4 * n_params * 4  # float32 parameters
    assert comm["calls_by_kind"]["metrics"] == 2 * (20 + 1)  # a loss reduction per step + the final gather
    training = sum(v for k, v in comm["bytes_by_kind"].items() if k in ("outer_all_reduce", "metrics"))
    assert comm["bytes_per_token"] == pytest.approx(training / result["tokens_seen"])
    # workers differ mid-round: their own val_loss and consensus distance are reported
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["val_loss"] is not None]
    assert all(r["val_loss_workers"] is not None and r["consensus_distance"] is not None for r in evals)
    assert evals[-1]["consensus_distance"] == pytest.approx(0.0, abs=1e-12)  # step 20: right after a round


def test_pseudo_gradient_sign_moves_the_global_model_toward_the_workers():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    strategy = DiLoCoStrategy({"name": "diloco", "tau": 2, "outer_lr": 0.5, "outer_momentum": 0.0, "nesterov": False},
                              {"grad_clip": 0.0}, DistContext(), CommCounter(enabled=False))
    strategy.setup(model)
    start = flat_parameters(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the (single) worker's inner steps moved every parameter by +1
    strategy.after_optimizer_step(model, step=0)  # mid-round: nothing happens
    assert torch.equal(strategy.global_params, start)
    strategy.after_optimizer_step(model, step=1)  # end of round: pseudo_gradient = global - mean = -1
    assert torch.allclose(strategy.global_params.grad, torch.full_like(start, -1.0))
    assert torch.allclose(strategy.global_params, start + 0.5)  # halfway toward the workers (outer_lr 0.5)
    assert torch.allclose(flat_parameters(model), start + 0.5)  # every worker restarts from the global model


def test_partial_last_round_ends_with_an_outer_step(tmp_path, shakespeare_char_meta):
    """25 steps at tau 10 on 2 gloo workers: rounds of 10, 10 and 5 steps, 3 outer all-reduces
    per worker counted by the run's CommCounter, and the final evaluation scores a global model
    every worker holds (consensus distance 0, the workers' val_loss == the global one)."""
    run = cfg({"name": "diloco", "tau": 10, "outer_lr": 0.7, "outer_momentum": 0.9, "nesterov": True},
              num_iterations=25, val_loss_every=0)
    result = torchrun(run, tmp_path / "run", shakespeare_char_meta)
    assert result["final_step"] == 25
    comm = result["communication"]
    assert comm["calls_by_kind"]["outer_all_reduce"] == 2 * 3  # 3 outer steps x 2 workers
    assert comm["bytes_by_kind"]["outer_all_reduce"] == 2 * 3 * result["num_parameters"] * 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["val_loss"] is not None][-1]
    assert final["step"] == 25
    assert final["consensus_distance"] == pytest.approx(0.0, abs=1e-12)  # workers reset to the global model
    assert final["val_loss_workers"] == pytest.approx(final["val_loss"], rel=1e-6)


def test_end_training_steps_the_partial_round_into_the_global_model():
    """Single worker, arithmetic: every inner step moves every parameter by +1; with outer_lr 1
    and no momentum the global model follows the worker exactly, so after 25 steps at tau 10
    it must be start + 25 (it is start + 20 when the partial round is dropped)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    strategy = DiLoCoStrategy({"name": "diloco", "tau": 10, "outer_lr": 1.0, "outer_momentum": 0.0, "nesterov": False},
                              {"grad_clip": 0.0}, DistContext(), CommCounter(enabled=False))
    strategy.setup(model)
    start = flat_parameters(model)
    for step in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        strategy.after_optimizer_step(model, step)
    assert strategy.rounds == 2 and torch.allclose(strategy.global_params, start + 20)
    strategy.end_training(model, 25)
    assert strategy.rounds == 3
    assert torch.allclose(strategy.global_params, start + 25)
    assert torch.allclose(flat_parameters(model), start + 25)
    strategy.end_training(model, 30)  # a whole number of rounds: nothing more
    assert strategy.rounds == 3


def test_tau_1_equals_ddp_only_without_clipping(tmp_path, shakespeare_char_meta):
    """With grad_clip > 0 DiLoCo clips each worker's gradient before its inner step and DDP the
    all-reduced one: at a clip below the gradient norms the loss curves part (with clipping off
    they agree to 1e-5: test_tau_1_outer_lr_1_no_momentum_equals_ddp...)."""
    meta = shakespeare_char_meta
    ddp = torchrun(cfg({"name": "ddp"}, grad_clip=0.05, num_iterations=12), tmp_path / "ddp", meta)
    diloco = torchrun(cfg({"name": "diloco", "tau": 1, "outer_lr": 1.0, "outer_momentum": 0.0, "nesterov": False},
                          grad_clip=0.05, num_iterations=12), tmp_path / "diloco", meta)
    assert ddp["final_step"] == diloco["final_step"] == 12
    train_ddp, _ = losses(tmp_path / "ddp")
    train_dl, _ = losses(tmp_path / "diloco")
    assert train_dl[0] == pytest.approx(train_ddp[0], rel=1e-6)  # same model, same first batch
    gap = max(abs(a - b) / abs(b) for a, b in zip(train_dl[1:], train_ddp[1:]))
    assert gap > 1e-3, gap  # clipped per worker != clipped mean: not DDP any more
