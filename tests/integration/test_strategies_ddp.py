"""DDP equivalence with real processes: ``torchrun`` with 2 gloo processes vs 1 process with
the same global batch (2 micro-steps of gradient accumulation) follow the same loss curve up
to floating-point reduction order (rtol 1e-5). Also with DepthWarm, where DDP runs with
``find_unused_parameters=True`` and both ranks must drop the same layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workflow.parallel.process_groups import DistContext
from workflow.train import configure_backends
from workflow.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def meta(shakespeare_char_meta) -> Path:
    """Tiny Shakespeare, character level (the session fixture of conftest.py)."""
    return shakespeare_char_meta


CASES = {
    "adamw": {},
    "depthwarm-muon": {"model": {"n_layer": 3, "depth_warm": True, "depth_warm_start_layers": 1,
                                 "depth_warm_steps": 12, "depth_warm_drop_prob": 0.5, "depth_warm_drop_until": 30},
                       "train": {"optimizer": "muon", "curriculum_block_sizes": [16, 32], "curriculum_steps": [10]}},
}


def ddp_cfg(case: str) -> dict:
    extra = CASES[case]
    return {
        "study": "d", "stage": "A", "variant": case, "seed": 1337, "run_id": 0, "dataset": "shakespeare_char",
        "model": {"preset": "nanogpt-small", **extra.get("model", {})},
        "train": {"batch_size": 8, "device_batch_size": 4, "num_iterations": 30, "lr": 3e-3, "warmup_iters": 3,
                  "val_loss_every": 10, "log_every": 1, "val_tokens": 1024, "device": "cpu",
                  **extra.get("train", {})},
    }


def losses(out_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return ([r["train_loss"] for r in rows if r["train_loss"] is not None],
            [r["val_loss"] for r in rows if r["val_loss"] is not None])


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_processes_match_one_process(case, tmp_path, meta):
    cfg = ddp_cfg(case)
    # 1 process: grad_accum_steps = 8 / (1 x 4) = 2 (in-process: the trainer's CLI does the same)
    torch.set_num_threads(1)
    ctx = DistContext()
    configure_backends(ctx)
    single = Trainer(cfg, tmp_path / "one", meta, ctx)
    assert single.grad_accum_steps == 2
    single.run()
    # 2 processes: grad_accum_steps = 8 / (2 x 4) = 1, gradients all-reduced by DDP over gloo
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "workflow.train",
         "--run-config", json.dumps(cfg), "--out-dir", str(tmp_path / "two"), "--meta", str(meta), "--threads", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size 2 (torchrun, gloo)" in proc.stdout and "grad_accum_steps 1" in proc.stdout
    train1, val1 = losses(tmp_path / "one")
    train2, val2 = losses(tmp_path / "two")
    assert len(train1) == len(train2) == 30 and len(val1) == len(val2) == 4
    assert train2 == pytest.approx(train1, rel=1e-5, abs=0)
    assert val2 == pytest.approx(val1, rel=1e-5, abs=0)
    assert train1[-1] < train1[0] - 0.3  # it did learn (a curve, not a constant)
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["world_size"] == 2
    comm = two["communication"]
    # measured: one gradient bucket all-reduced per step and worker, one loss reduction per step
    assert comm["calls_by_kind"]["grad_all_reduce"] == 2 * 30 and comm["calls_by_kind"]["metrics"] >= 2 * 30
    n_params = two["num_parameters"]
    assert comm["bytes_by_kind"]["grad_all_reduce"] == 2 * 30 * n_params * 4
    assert comm["bytes_per_token_all"] == pytest.approx(comm["total_bytes"] / two["tokens_seen"])
    eval_bytes = comm["bytes_by_kind"]["eval"]
    assert comm["bytes_per_token"] == pytest.approx((comm["total_bytes"] - eval_bytes) / two["tokens_seen"])
