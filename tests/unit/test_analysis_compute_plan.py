"""Compute in FLOPs, GPU-hours and dollars, staged against naive.

The speedrun study's plan reproduces seed 001's budget table from the study's own numbers
(model, stage lengths, GPUs, prices): $16 + $30 + $42 + $7 reserve = $95 of $96 against a naive
$168, a 43 % saving, and shows honestly what seed 001 leaves out (the baseline's reference runs
at B and C, the curriculum's fewer tokens) with a warning where staging costs more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.analysis.compute_plan import compute_plan, plan_markdown, run_estimate
from workflow.analysis.stats import summarize_runs
from workflow.analysis.tables import compute_table, naive_compute
from workflow.compute_plan import load_study
from workflow.model.flops import flops_per_token

REPO = Path(__file__).resolve().parents[2]
SPEEDRUN = REPO / "config" / "studies" / "speedrun.yaml"
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def speedrun_plan():
    return compute_plan(load_study([str(SPEEDRUN)]), 50257, "test")


def test_speedrun_plan_reproduces_seed_001_budget_table(speedrun_plan):
    seed = speedrun_plan["seed001"]
    assert [round(s["usd"]) for s in seed["stages"]] == [16, 30, 42]
    assert [s["runs"] for s in seed["stages"]] == [4 * 2, 1 * 3, 1 * 5]
    assert speedrun_plan["reserve_usd"] == 7 and speedrun_plan["budget_usd"] == 96
    total = seed["usd"] + speedrun_plan["reserve_usd"]
    assert round(total) == 95 and total <= 96
    assert round(seed["naive"]["usd"]) == 168
    assert round(100 * seed["savings"]["usd"]) == 43
    # costs per run: ~$2 on 1 L40, ~$10 on 4 A100, ~$8.40 on 8 H100
    per_run = [s["usd_per_run"] for s in speedrun_plan["stages"]]
    assert per_run == pytest.approx([2.0, 10.0, 8.4], rel=0.01)
    assert [s["hardware"]["gpus"] for s in speedrun_plan["stages"]] == [1, 4, 8]
    md = plan_markdown(speedrun_plan)
    # naive cost of the modded-nanogpt-2024-10 baseline (123.6M parameters)
    assert "A 16 + B 30 + C 42 + reserve 7" in md and "167.84" in md


def test_speedrun_plan_counts_every_run_and_warns(speedrun_plan):
    """Honest accounting: the baseline runs at B and C too; the curriculum trains fewer tokens."""
    stages = speedrun_plan["stages"]
    assert [s["runs"] for s in stages] == [8, 6, 10]
    assert speedrun_plan["staged"]["runs"] == 24
    assert speedrun_plan["staged"]["usd"] > speedrun_plan["seed001"]["usd"] + 40
    # FLOPs of one stage C run: 5,100 x 512 x 1024 tokens x the trainer's flops_per_token
    base = stages[2]["per_run"]["baseline"]
    assert base["tokens"] == 5100 * 512 * 1024
    curriculum = stages[2]["per_run"]["curriculum"]
    assert curriculum["tokens"] == 512 * (1020 * 256 + 1020 * 512 + 1020 * 768 + 2040 * 1024)   # 20/20/20/40 %
    assert curriculum["flops"] < 0.75 * base["flops"]
    warnings = " | ".join(speedrun_plan["warnings"])
    assert "staging costs MORE" in warnings and "gpu_hours" in warnings   # stage B's A100s are slower per FLOP
    assert "exceeds cost.budget_usd $96.00" in warnings
    assert "the pivot would not run" in warnings                         # $7 does not pay 3 stage B runs


def test_run_estimate_uses_the_trainer_flops_per_token():
    config = load_study([str(TINY)])
    est = run_estimate(config, "A", "baseline", 65)
    assert est["tokens"] == 8 * 8 * 32
    import torch

    from workflow.model import GPT
    from workflow.model.spec import build_model_config

    cfg = build_model_config({"preset": "nanogpt-small"}, 65)
    with torch.device("meta"):
        model = GPT(cfg)
    n = model.num_parameters(exclude_embeddings=True) + model.lm_head.weight.numel()
    assert est["flops"] == pytest.approx(flops_per_token(cfg, 32, n) * est["tokens"])


def test_staging_pays_off_only_with_enough_variants():
    """Item 11: the default study (6 variants, top 2 advance, short early stages) saves FLOPs; the
    tiny test study (4 variants, 1 advances but every stage re-runs the baseline, stage A at
    half of C's length) costs more than running every variant at stage C, and says so."""
    default = compute_plan(load_study([str(REPO / "config" / "config.yaml")]), 65)
    assert default["savings"]["flops"] == pytest.approx(0.30, abs=0.03)
    assert not any("MORE" in w for w in default["warnings"])
    tiny = compute_plan(load_study([str(TINY)]), 65)
    assert tiny["staged"]["flops"] > tiny["naive"]["flops"]
    assert any("staging costs MORE" in w and "flops" in w for w in tiny["warnings"])


def test_plan_cli_needs_no_data(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "workflow.compute_plan", "--configfile", str(SPEEDRUN), "--config", f"data_dir={tmp_path}",
         "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "A 16 + B 30 + C 42 + reserve 7" in proc.stdout
    assert "WARNING: staging costs MORE" in proc.stderr
    plan = json.loads(out.read_text())
    assert plan["vocab_source"].startswith("estimate") and plan["vocab_size"] == 50257


def _summary(stage, variant, runs, flops_per_run, hours_per_run, tokens_per_run, device="cuda:0", world_size=8):
    return summarize_runs([
        {"study": "s", "stage": stage, "variant": variant, "seed": i, "success": True, "final_val_loss": 3.3,
         "time_seconds": 10.0, "tokens_seen": tokens_per_run, "flops": flops_per_run, "world_size": world_size,
         "device": device, "train_time_ms": hours_per_run * 3.6e6 / world_size}
        for i in range(runs)
    ])


def test_compute_table_in_flops_gpu_hours_and_dollars_against_naive():
    """Naive is extrapolated per variant from FLOPs at the last stage's measured FLOPs per GPU-hour."""
    config = load_study([str(SPEEDRUN)])
    plan = naive_compute(config)
    t_c = 5100 * 512 * 1024
    fpt = 1e9
    summaries = [
        _summary("A", v, 2, fpt * 131072000 * (0.7 if v == "curriculum" else 1), 0.43, 131072000, world_size=1)
        for v in config["variants"]
    ] + [
        _summary("B", v, 3, fpt * 1572864000, 3.0, 1572864000, world_size=4) for v in ("baseline", "palm")
    ] + [
        _summary("C", v, 5, fpt * t_c, 1.6, t_c) for v in ("baseline", "palm")
    ]
    frame, warnings = compute_table(summaries, plan)
    rows = {r["stage"]: r for r in frame.to_dict("records")}
    assert rows["A"]["gpu_hours"] == pytest.approx(8 * 0.43)
    assert rows["A"]["usd"] == pytest.approx(8 * 0.43 * 4.65)
    assert rows["C"]["usd"] == pytest.approx(10 * 1.6 * 5.23)
    naive = rows["naive (all variants at final stage)"]
    # curriculum: 70 % of the FLOPs per token measured in A, times its planned stage C tokens
    cur_tokens = plan["naive"]["curriculum"]["tokens_per_run"]
    expected_flops = 5 * (3 * fpt * t_c + fpt * 0.7 * cur_tokens)
    assert naive["flops"] == pytest.approx(expected_flops)
    assert naive["gpu_hours"] == pytest.approx(expected_flops / (fpt * t_c / 1.6))   # stage C's FLOPs per GPU-hour
    assert naive["usd"] == pytest.approx(naive["gpu_hours"] * 5.23)
    saving = rows["saving (1 - staged / naive)"]
    total = rows["staged total"]
    assert saving["usd"] == pytest.approx(1 - total["usd"] / naive["usd"])
    assert any("MORE" in w for w in warnings) == (total["usd"] > naive["usd"] or total["gpu_hours"] > naive["gpu_hours"])


def test_speedrun_study_follows_seed_001():
    config = load_study([str(SPEEDRUN)])
    stages = config["stages"]
    assert list(stages) == ["A", "B", "C"]
    assert stages["A"]["seeds"] == 2 and stages["B"]["seeds"] == 3 and stages["C"]["seeds"] == 5
    assert stages["A"]["train"] == {"num_iterations": 1000, "warmdown_iters": 284, "batch_size": 128,
                                    "device_batch_size": 16, "val_loss_every": 25}
    assert stages["B"]["train"]["num_iterations"] == 3000 and stages["C"]["train"]["num_iterations"] == 5100
    hardware = [(s["resources"]["gpus"], s["resources"]["gpu_model"], s["resources"]["slurm_partition"]) for s in stages.values()]
    assert hardware == [(1, "l40", "l40"), (4, "a100", "a100"), (8, "h100", "h100")]
    assert stages["B"]["gate"]["rule"] == "beats_baseline_ci" and stages["B"]["gate"]["pivot"] is True
    assert config["verdict"]["target_val_loss"] == 3.28 and config["verdict"]["alpha"] == 0.01
    assert config["cost"]["budget_usd"] == 96 and config["cost"]["reserve_usd"] == 7
    assert list(config["variants"]) == ["baseline", "palm", "curriculum", "depth_warm"]
    # schedules in fractions of the run: the same treatment at 1,000 and 5,100 iterations
    assert config["variants"]["curriculum"]["train"]["curriculum_fractions"] == [0.2, 0.4, 0.6]
    assert "depth_warm_fraction" in config["variants"]["depth_warm"]["model"]
    assert "stage overrides" not in SPEEDRUN.read_text()
