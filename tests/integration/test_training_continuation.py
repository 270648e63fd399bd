"""Continued runs (stages.<S>.continue_from): a stage-B run resumed from stage A's checkpoint at
A's decay start is bit-identical (losses and weights) to the same run trained from scratch,
with the built-in trainer on one process and with 2 gloo workers (torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workflow.parallel.process_groups import DistContext
from workflow.study.resolve import run_config, study_with_defaults
from workflow.train import configure_backends
from workflow.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def meta(shakespeare_char_meta) -> Path:
    return shakespeare_char_meta


def study() -> dict:
    """Stage A 12 steps (decay over the last 4: branch at step 8), stage B 20 steps continuing A."""
    return study_with_defaults({
        "study": "cont", "dataset": "shakespeare_char", "baseline": "v", "variants": {"v": {"train": {"optimizer": "muon"}}},
        "model": {"preset": "nanogpt-small"},
        "train": {"batch_size": 8, "device_batch_size": 4, "lr": 3e-3, "warmup_iters": 2, "schedule": "trapezoidal",
                  "val_loss_every": 4, "log_every": 1, "val_tokens": 1024, "device": "cpu"},
        "stages": {"A": {"seeds": 1, "train": {"num_iterations": 12, "warmdown_iters": 4}, "gate": {"rule": "beats_baseline"}},
                   "B": {"seeds": 2, "continue_from": "A", "train": {"num_iterations": 20, "warmdown_iters": 6},
                         "gate": {"rule": "beats_baseline"}},
                   "C": {"seeds": 2, "train": {"num_iterations": 20, "warmdown_iters": 6}}},
    })


def train(cfg: dict, out_dir: Path, meta: Path, workers: int) -> None:
    if workers == 1:
        torch.set_num_threads(1)
        ctx = DistContext()
        configure_backends(ctx)
        Trainer(cfg, out_dir, meta, ctx).run()
        return
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", str(workers), "-m", "workflow.train",
         "--run-config", json.dumps(cfg), "--out-dir", str(out_dir), "--meta", str(meta), "--threads", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def rows(out_dir: Path) -> dict[int, tuple]:
    out = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = (r["train_loss"], r["val_loss"])
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_continued_run_is_bit_identical_to_training_from_scratch(workers, tmp_path, meta):
    config = study()
    seed = 1337  # stage A's seed: stage B's first run continues it
    a_cfg = run_config(config, "A", "v", seed)
    b_cfg = run_config(config, "B", "v", seed)
    assert a_cfg["branch_at"] == 8 and b_cfg["continue_from"]["step"] == 8 and b_cfg["run_id"] == 0
    results = tmp_path / "results" / "cont"
    train(a_cfg, results / "stage_A" / "v" / f"seed_{seed}", meta, workers)
    assert (results / "stage_A" / "v" / f"seed_{seed}" / "branch" / "checkpoint").is_dir()
    continued = results / "stage_B" / "v" / f"seed_{seed}"
    train(b_cfg, continued, meta, workers)
    scratch_cfg = {k: v for k, v in b_cfg.items() if k != "continue_from"}
    scratch = tmp_path / "scratch" / "cont" / "stage_B" / "v" / f"seed_{seed}"
    scratch.parent.mkdir(parents=True)
    train(scratch_cfg, scratch, meta, workers)

    result = json.loads((continued / "result.json").read_text())
    assert result["continued_from"]["step"] == 8 and result["continued_from"]["stage"] == "A"
    reference = json.loads((scratch / "result.json").read_text())
    assert result["final_val_loss"] == reference["final_val_loss"]  # bit-identical, not approximately
    assert result["final_step"] == reference["final_step"] == 20
    assert result["flops"] == reference["flops"] and result["continued_from"]["flops"] > 0
    cont_rows, ref_rows = rows(continued), rows(scratch)
    assert min(cont_rows) > 8  # it trained only the steps after the branch
    assert all(cont_rows[s] == ref_rows[s] for s in cont_rows)
    a = torch.load(continued / "model.pt", weights_only=True)["model"]
    b = torch.load(scratch / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
