"""The trainer on real tiny Shakespeare (characters): every variant learns, the curriculum crops,
DepthWarm skips layers, the time budget stops cleanly, W&B never sees the key, samples decode.

In-process runs use the real :class:`workflow.train.Trainer` on a single-process context;
the W&B test runs ``python -m workflow.train`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import TIMING_KEYS  # tests/runs.py

from workflow.model import GPT
from workflow.optim.optimizers import Muon
from workflow.parallel.process_groups import DistContext
from workflow.sample import main as sample_main
from workflow.model.spec import GPTConfig
from workflow.train import configure_backends
from workflow.model.flops import flops_per_token, peak_flops
from workflow.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def meta(shakespeare_char_meta) -> Path:
    """Tiny Shakespeare, character level (the session fixture of conftest.py)."""
    return shakespeare_char_meta


def run_cfg(train: dict | None = None, model: dict | None = None, seed: int = 1337, **extra) -> dict:
    """A small run config: nanogpt-small (block 32), batch 16, 20 steps."""
    base_train = {"batch_size": 16, "num_iterations": 20, "lr": 3e-3, "warmup_iters": 2,
                  "val_loss_every": 10, "log_every": 5, "val_tokens": 2048, "device": "cpu"}
    return {"study": "t", "stage": "A", "variant": "v", "seed": seed, "run_id": 0,
            "dataset": "shakespeare_char", "model": {"preset": "nanogpt-small", **(model or {})},
            "train": {**base_train, **(train or {})}, **extra}


def train_in_process(cfg: dict, out_dir: Path, meta: Path) -> tuple[Trainer, dict, list[dict]]:
    torch.set_num_threads(1)
    ctx = DistContext()
    configure_backends(ctx)
    trainer = Trainer(cfg, out_dir, meta, ctx)
    result = trainer.run()
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, result, rows


VARIANTS = {
    "sequential": ({}, {}),
    "palm": ({}, {"block_type": "palm"}),
    "curriculum": ({"curriculum_block_sizes": [8, 16, 32], "curriculum_steps": [5, 10], "log_every": 1}, {}),
    "depthwarm": ({"log_every": 1}, {"n_layer": 4, "depth_warm": True, "depth_warm_start_layers": 1,
                                     "depth_warm_steps": 12, "depth_warm_drop_prob": 0.3,
                                     "depth_warm_drop_until": 16}),
    "muon": ({"optimizer": "muon", "muon_lr": 0.02}, {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_runs_20_steps_and_loss_falls(variant, tmp_path, meta):
    train, model = VARIANTS[variant]
    trainer, result, rows = train_in_process(run_cfg(train, model), tmp_path, meta)
    assert result["success"] is True and result["final_step"] == 20
    val = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert rows[0]["step"] == 0 and len(val) == 3  # steps 0, 10, 20
    assert val[-1] < val[0] - 0.3, val  # untrained: ln(65) = 4.17 nats
    assert result["final_val_loss"] == val[-1] == rows[-1]["val_loss"]
    assert all(r["mfu"] is None for r in rows)  # CPU: no peak FLOP/s
    if variant == "curriculum":
        by_step = {r["step"]: r["seq_len"] for r in rows if r["step"] > 0}
        # row of step s reports the length used by step s (0-based s - 1)
        assert [by_step[s] for s in (1, 5, 6, 10, 11, 20)] == [8, 8, 16, 16, 32, 32]
        assert result["tokens_seen"] == 16 * (5 * 8 + 5 * 16 + 10 * 32)
    else:
        assert result["tokens_seen"] == 20 * 16 * 32
    if variant == "depthwarm":
        layers = {r["step"]: r["active_layers"] for r in rows}
        assert layers[0] == 1 and layers[3] == 1 and layers[6] == 2 and layers[12] == 4 and layers[20] == 4
    if variant == "muon":
        assert isinstance(trainer.optimizers[1], Muon)
        assert all("momentum_buffer" in trainer.optimizers[1].state[p] for p in trainer.optimizers[1].param_groups[0]["params"])
    if variant == "palm":
        assert type(trainer.model.transformer.h[0]).__name__ == "PalmBlock"
    assert "wandb" not in sys.modules  # mode disabled: never imported


def test_depthwarm_inactive_layers_get_no_update(tmp_path, meta):
    """While only layer 0 is active, layers 1-3 keep their initial weights exactly."""
    _, model = VARIANTS["depthwarm"]
    cfg = run_cfg({"num_iterations": 3, "val_loss_every": 0}, {**model, "depth_warm_steps": 100})
    init = {k: v.clone() for k, v in Trainer(cfg, tmp_path / "x", meta, DistContext()).model.state_dict().items()}
    trainer, _, _ = train_in_process(cfg, tmp_path / "run", meta)
    state = trainer.model.state_dict()
    for name, value in state.items():
        if name.startswith(("transformer.h.1.", "transformer.h.3.")):
            assert torch.equal(value, init[name]), name
    assert not torch.equal(state["transformer.h.0.attn.c_attn.weight"], init["transformer.h.0.attn.c_attn.weight"])


def test_same_config_and_seed_give_identical_losses(tmp_path, meta):
    cfg = run_cfg(VARIANTS["depthwarm"][0], {**VARIANTS["depthwarm"][1], "dropout": 0.1})
    _, r1, rows1 = train_in_process(cfg, tmp_path / "a", meta)
    _, r2, rows2 = train_in_process(cfg, tmp_path / "b", meta)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(rows1) == strip(rows2) and r1["final_val_loss"] == r2["final_val_loss"]
    _, r3, _ = train_in_process({**cfg, "seed": 7}, tmp_path / "c", meta)
    assert r3["final_val_loss"] != r1["final_val_loss"]


def test_training_hours_budget_stops_with_a_final_eval(tmp_path, meta):
    cfg = run_cfg({"num_iterations": 500, "training_hours": 1e-6})  # 3.6 ms: spent after step 1
    _, result, rows = train_in_process(cfg, tmp_path, meta)
    assert result["success"] is True and result["stopped_early"] == "training_hours"
    assert 1 <= result["final_step"] < 500
    assert rows[-1]["step"] == result["final_step"] and rows[-1]["val_loss"] == result["final_val_loss"]
    assert result["final_val_loss"] is not None


def test_curriculum_rung_longer_than_block_size_is_refused(tmp_path, meta):
    cfg = run_cfg({"curriculum_block_sizes": [16, 64], "curriculum_steps": [5]})
    with pytest.raises(ValueError, match="curriculum_block_sizes"):
        Trainer(cfg, tmp_path, meta, DistContext())


def test_mfu_estimate_matches_nanogpt_formula():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, pad_vocab_multiple=64)
    with torch.device("meta"):
        n_model = GPT(cfg).num_parameters(exclude_embeddings=True) + 50304 * 768
    n = 12 * (12 * 768 * 768 + 2 * 768) + 768 + 50304 * 768  # blocks + ln_f + head
    assert n_model == n
    assert flops_per_token(cfg, 1024, n) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("x86_64") is None


def test_wandb_offline_never_writes_the_api_key(tmp_path, meta):
    pytest.importorskip("wandb")
    key = "fake" + secrets.token_hex(18)  # 40 characters like a real key
    out = tmp_path / "run"
    cfg = run_cfg({"num_iterations": 6, "val_loss_every": 3, "log_every": 3},
                  wandb={"mode": "offline", "project": "stagerun-test", "entity": None})
    env = {**os.environ, "WANDB_API_KEY": key, "HOME": str(tmp_path / "home"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data"), "PYTHONPATH": str(REPO)}
    env.pop("WANDB_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "workflow.train", "--run-config", json.dumps(cfg), "--out-dir", str(out),
         "--meta", str(meta), "--threads", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert run_files, sorted(str(p) for p in out.rglob("*"))
    assert "t-A-v-s1337" in run_files[0].read_bytes().decode("latin-1")  # the run name is in the log
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5
    for path in written:
        assert key.encode() not in path.read_bytes(), f"API key written to {path}"
    assert key not in proc.stdout and key not in proc.stderr
    assert json.loads((out / "result.json").read_text())["success"] is True


def test_sample_cli_decodes_a_deterministic_sample(tmp_path, meta, capsys):
    train_in_process(run_cfg({"num_iterations": 10}), tmp_path / "run", meta)
    ckpt = tmp_path / "run" / "model.pt"
    vocab = json.loads(meta.read_text())["tokenizer"]["vocab"]
    def sample(name: str, seed: int = 1337, result: Path = tmp_path / "run" / "result.json") -> str:
        cmd = [sys.executable, "-m", "workflow.sample", "--checkpoint", str(ckpt), "--meta", str(meta),
               "--output", str(tmp_path / name), "--max-new-tokens", "120", "--top-k", "20", "--seed", str(seed),
               "--result", str(result)]
        if name == "s1.txt":  # the real CLI once; the other calls in-process (same entry point)
            subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=120)
        else:
            assert sample_main(cmd[3:]) == 0
        return (tmp_path / name).read_text()

    first, again, other = sample("s1.txt"), sample("s2.txt"), sample("s3.txt", seed=1)
    assert first == again and other != first
    header, body = first.split("\n", 2)[:2], first.split("\n", 2)[2]
    assert header[0].startswith("# t/stage_A/v/seed_1337: final val_loss")
    assert "seed 1337" in header[1]
    assert len(body) == 121 and set(body) <= set(vocab)  # 120 characters + newline
    # a failed run gets a note; a missing checkpoint an error naming the file and no output
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"success": False, "reason": "diverged: x", "study": "t", "stage": "C",
                                  "variant": "v", "seed": 1}))
    assert "no sample, the run failed (diverged: x)" in sample("s4.txt", result=failed)
    assert sample_main(["--checkpoint", str(tmp_path / "none.pt"), "--meta", str(meta),
                        "--output", str(tmp_path / "x.txt")]) == 1
    assert "none.pt" in capsys.readouterr().err and not (tmp_path / "x.txt").exists()
