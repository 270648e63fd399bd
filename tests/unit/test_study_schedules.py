"""Schedules that follow a time budget, curriculum and DepthWarm in
fractions of the run (the same treatment at every stage length), run length in tokens.

Pure functions of workflow.optim.optimizers / workflow.study.length first, then the real trainer on
tiny Shakespeare (characters, nanogpt-small, block 32)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from workflow.parallel.process_groups import DistContext
from workflow.study.length import resolve_num_iterations
from workflow.optim.schedules import (
    check_curriculum,
    curriculum_block_size,
    curriculum_marks,
    lr_multiplier,
    resolve_depth_warm,
    schedule_progress,
    steps_for_tokens,
    tokens_for_steps,
)
from workflow.train import configure_backends
from workflow.training.trainer import Trainer

CURRICULUM = {"batch_size": 32, "curriculum_block_sizes": [8, 16, 32], "curriculum_advance": "steps"}


# ---- item 6: the schedule follows the budget -----------------------------------------------


def test_schedule_progress_is_the_larger_of_steps_and_time():
    assert schedule_progress(50, 100) == 0.5
    assert schedule_progress(50, 100, elapsed_s=90, budget_s=100) == 0.9
    assert schedule_progress(90, 100, elapsed_s=10, budget_s=100) == 0.9
    assert schedule_progress(10, 100, elapsed_s=500, budget_s=100) == 1.0
    with pytest.raises(ValueError, match="budget"):
        schedule_progress(1, 10, 1.0, 0.0)


def test_a_budget_stopped_run_ends_with_its_learning_rate_decayed():
    """The issue: a run stopped by training_hours at step 40 of 500 kept lr at its peak."""
    cfg = {"schedule": "trapezoidal", "num_iterations": 500, "warmdown_iters": 150, "warmup_iters": 0}
    assert lr_multiplier(40, cfg) == 1.0                                    # steps alone: undecayed
    progress = schedule_progress(40, 500, elapsed_s=3600, budget_s=3600)     # budget spent
    assert lr_multiplier(40, cfg, progress) == 0.0                          # the warmdown is done
    half = schedule_progress(40, 500, elapsed_s=0.85 * 3600, budget_s=3600)  # 85 % of the time
    assert lr_multiplier(40, cfg, half) == pytest.approx((500 - 0.85 * 500) / 150)
    cosine = {"schedule": "cosine", "num_iterations": 500, "min_lr_ratio": 0.1}
    assert lr_multiplier(40, cosine, 1.0) == pytest.approx(0.1)
    assert lr_multiplier(400, cosine, 0.1) == lr_multiplier(400, cosine)   # steps ahead of time: steps win


# ---- item 7: curriculum and DepthWarm in fractions of the run ---------------------------------


def test_curriculum_fractions_are_the_same_treatment_at_every_length():
    for n in (500, 1900):
        cfg = {**CURRICULUM, "num_iterations": n, "curriculum_fractions": [0.2, 0.4]}
        marks = curriculum_marks(cfg)
        assert marks == [round(0.2 * n), round(0.4 * n)]
        assert curriculum_block_size(marks[0] - 1, cfg) == 8 and curriculum_block_size(marks[0], cfg) == 16
        assert curriculum_block_size(n - 1, cfg) == 32
    with pytest.raises(ValueError, match="'curriculum_steps' and 'curriculum_fractions' are both set"):
        curriculum_marks({**CURRICULUM, "num_iterations": 10, "curriculum_steps": [2, 4], "curriculum_fractions": [0.2, 0.4]})
    with pytest.raises(ValueError, match="curriculum_fractions' must list 2 increasing fractions"):
        curriculum_marks({**CURRICULUM, "num_iterations": 10, "curriculum_fractions": [0.5]})


def test_curriculum_must_end_at_block_size_before_the_end_of_the_run():
    ok = {**CURRICULUM, "num_iterations": 100, "curriculum_steps": [30, 60]}
    check_curriculum(ok, 32)
    with pytest.raises(ValueError, match=r"last rung must equal model.block_size 64"):
        check_curriculum(ok, 64)
    # absolute steps that were right for stage C never reach full length in a 50-step stage A
    with pytest.raises(ValueError, match=r"curriculum_steps: the last rung \(32\) starts at step 60, not before the end"):
        check_curriculum({**ok, "num_iterations": 50}, 32)
    check_curriculum({**CURRICULUM, "num_iterations": 50, "curriculum_fractions": [0.3, 0.6]}, 32)


def test_depth_warm_fractions_resolve_to_steps_of_the_run():
    model = {"depth_warm": True, "depth_warm_fraction": 0.3, "depth_warm_drop_until_fraction": 0.6}
    assert resolve_depth_warm(model, 500) == {"depth_warm": True, "depth_warm_steps": 150, "depth_warm_drop_until": 300}
    assert resolve_depth_warm(model, 1900)["depth_warm_steps"] == 570
    assert resolve_depth_warm(model, None) == {"depth_warm": True}
    with pytest.raises(ValueError, match="'depth_warm_fraction' and 'depth_warm_steps' are both set"):
        resolve_depth_warm({**model, "depth_warm_steps": 10}, 100)


# ---- item 10: equal data, not only equal steps --------------------------------------------


def test_tokens_of_a_curriculum_run_and_steps_for_equal_data():
    """The issue's numbers: 8 -> 16 -> 32 saw 64,000 tokens against the baseline's 102,400."""
    steps_cfg = {**CURRICULUM, "curriculum_steps": [30, 60]}
    assert tokens_for_steps(steps_cfg, 32, 100) == 64_000
    assert tokens_for_steps({"batch_size": 32}, 32, 100) == 102_400
    assert steps_for_tokens({"batch_size": 32}, 32, 102_400) == 100
    n = steps_for_tokens(steps_cfg, 32, 102_400)
    assert n == 138 and tokens_for_steps(steps_cfg, 32, n) >= 102_400 > tokens_for_steps(steps_cfg, 32, n - 1)
    frac_cfg = {**CURRICULUM, "curriculum_fractions": [0.3, 0.6]}
    assert steps_for_tokens(frac_cfg, 32, 102_400) == 160   # 32 x (0.3 x 8 + 0.3 x 16 + 0.4 x 32) = 640 tokens/step
    with pytest.raises(ValueError, match="plateau"):
        tokens_for_steps({**CURRICULUM, "curriculum_advance": "plateau"}, 32, 10)


def test_one_run_length_resolution_for_tokens_and_epochs():
    base = {"batch_size": 32, "num_iterations": 7, "strategy": {"name": "ddp"}}
    assert resolve_num_iterations(base, 1_000_000, 32) == 7
    assert resolve_num_iterations({**base, "num_tokens": 102_400}, 1_000_000, 32) == 100
    # num_epochs: the trainer's formula ceil(epochs * train_tokens / (batch * block)) without a curriculum
    assert resolve_num_iterations({**base, "num_epochs": 0.5}, 1_000_000, 32) == math.ceil(0.5 * 1_000_000 / (32 * 32))
    curriculum = {**base, **CURRICULUM, "curriculum_fractions": [0.3, 0.6]}
    assert resolve_num_iterations({**curriculum, "num_epochs": 0.1024}, 1_000_000, 32) == 160
    with pytest.raises(ValueError, match="num_tokens .* and train.num_epochs .* are both set"):
        resolve_num_iterations({**base, "num_tokens": 10, "num_epochs": 1.0}, 1_000_000, 32)


# ---- the real trainer ----------------------------------------------------------------------


def run_cfg(train: dict | None = None, model: dict | None = None) -> dict:
    base_train = {"batch_size": 16, "num_iterations": 20, "lr": 3e-3, "warmup_iters": 0, "val_loss_every": 0,
                  "log_every": 1, "val_tokens": 2048, "device": "cpu"}
    return {"study": "t", "stage": "A", "variant": "v", "seed": 1337, "run_id": 0, "stage_seed_offset": 0,
            "dataset": "shakespeare_char", "model": {"preset": "nanogpt-small", **(model or {})},
            "train": {**base_train, **(train or {})}}


def train(cfg: dict, out_dir: Path, meta: Path) -> tuple[dict, list[dict]]:
    torch.set_num_threads(1)
    ctx = DistContext()
    configure_backends(ctx)
    result = Trainer(cfg, out_dir, meta, ctx).run()
    return result, [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_time_budget_decays_the_learning_rate(tmp_path, shakespeare_char_meta):
    cfg = run_cfg({"num_iterations": 100_000, "schedule": "linear", "min_lr_ratio": 0.0,
                   "training_hours": 2.0 / 3600})   # two seconds: a few steps even on a loaded machine
    result, rows = train(cfg, tmp_path, shakespeare_char_meta)
    assert result["success"] is True and result["stopped_early"] == "training_hours"
    assert result["schedule_progress"] == 1.0
    steps = result["final_step"]
    assert steps >= 3
    lrs = [r["lr"] for r in rows if r["step"] > 0]
    assert lrs == sorted(lrs, reverse=True)
    # by steps alone the last lr would be 3e-3 * (1 - steps / 100000), i.e. at its peak; following the
    # budget it is 3e-3 * (1 - elapsed / budget) with elapsed the time before the last step
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] < 0.5 * 3e-3


def test_trainer_equal_tokens_and_fraction_schedules(tmp_path, shakespeare_char_meta):
    tokens = 20 * 16 * 32
    base, _ = train(run_cfg({"num_tokens": tokens}), tmp_path / "base", shakespeare_char_meta)
    cur_cfg = run_cfg({"num_tokens": tokens, "curriculum_block_sizes": [8, 16, 32], "curriculum_fractions": [0.25, 0.5]},
                      {"n_layer": 4, "depth_warm": True, "depth_warm_start_layers": 1, "depth_warm_fraction": 0.5})
    cur, rows = train(cur_cfg, tmp_path / "cur", shakespeare_char_meta)
    assert base["final_step"] == 20 and base["tokens_seen"] == tokens
    n = cur["final_step"]
    assert n == cur["num_iterations"] > 20 and cur["tokens_seen"] >= tokens
    assert cur["tokens_seen"] - tokens < 16 * 32       # the last step crosses num_tokens
    seq = {r["step"]: r["seq_len"] for r in rows if r["step"] > 0}
    assert seq[round(0.25 * n)] == 8 and seq[round(0.25 * n) + 1] == 16 and seq[n] == 32
    layers = {r["step"]: r["active_layers"] for r in rows}
    assert layers[round(0.5 * n) - 1] < 4 and layers[round(0.5 * n)] == 4
    assert cur["flops"] > 0 and cur["stage_seed_offset"] == 0 and cur["end_time"]


def test_trainer_refuses_a_curriculum_that_never_reaches_block_size(tmp_path, shakespeare_char_meta):
    cfg = run_cfg({"curriculum_block_sizes": [8, 16], "curriculum_steps": [5]})
    with pytest.raises(ValueError, match="last rung must equal model.block_size 32"):
        Trainer(cfg, tmp_path, shakespeare_char_meta, DistContext())


def test_study_check_names_the_stage_whose_curriculum_never_reaches_full_length():
    """Absolute curriculum steps right for a long stage are checked for every stage before any job runs."""
    import yaml

    from workflow.study.checks import check_model_configs
    from workflow.study.resolve import study_with_defaults
    from workflow.study.schema import ConfigError

    study = study_with_defaults(yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()))
    study["variants"]["cur"] = {"train": {"curriculum_block_sizes": [8, 16, 32], "curriculum_steps": [4, 10]}}
    with pytest.raises(ConfigError, match=r"stages\.A\.train \+ variants\.cur\.train: .*starts at step 10, not before the end"):
        check_model_configs(study, 65)
    study["variants"]["cur"] = {"train": {"curriculum_block_sizes": [8, 16, 32], "curriculum_fractions": [0.25, 0.5]}}
    check_model_configs(study, 65)
