"""workflow.stats against scipy.stats / numpy on fixed numbers."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from workflow.analysis.stats import (
    comparable_reason,
    describe,
    holm_adjust,
    one_sample_ttest,
    paired_ttest,
    summarize_runs,
    welch_ttest,
)

LOSSES = [1.91, 1.87, 1.95, 1.89, 1.93]
BASE = [2.01, 1.98, 2.05, 2.02, 1.99]


def test_describe_matches_numpy_and_scipy():
    out = describe(LOSSES)
    assert out["n"] == 5
    assert out["mean"] == pytest.approx(1.91)
    assert out["std"] == pytest.approx(np.std(LOSSES, ddof=1))
    assert out["median"] == pytest.approx(1.91)
    assert (out["min"], out["max"]) == (1.87, 1.95)
    # t-interval by hand: mean +- t_{0.975, 4} * s / sqrt(n)
    half = sps.t.ppf(0.975, 4) * np.std(LOSSES, ddof=1) / math.sqrt(5)
    assert out["ci_95"] == pytest.approx([1.91 - half, 1.91 + half])


def test_describe_small_samples():
    assert describe([])["mean"] is None
    one = describe([2.0])
    assert one["mean"] == 2.0 and one["std"] is None and one["ci_95"] is None
    same = describe([2.0, 2.0])
    assert same["std"] == 0.0 and same["ci_95"] == [2.0, 2.0]


def test_welch_matches_scipy_and_hand_formula():
    out = welch_ttest(LOSSES, BASE, "less")
    ref = sps.ttest_ind(LOSSES, BASE, equal_var=False, alternative="less")
    assert out["p_value"] == pytest.approx(ref.pvalue)
    a, b = np.array(LOSSES), np.array(BASE)
    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 5
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)
    assert out["statistic"] == pytest.approx(t)
    assert out["df"] == pytest.approx(df)
    assert out["p_value"] == pytest.approx(sps.t.cdf(t, df))
    assert out["p_value"] < 0.01


def test_one_sample_matches_scipy():
    out = one_sample_ttest(LOSSES, 2.0, "less")
    ref = sps.ttest_1samp(LOSSES, 2.0, alternative="less")
    assert out["p_value"] == pytest.approx(ref.pvalue)
    t = (np.mean(LOSSES) - 2.0) / (np.std(LOSSES, ddof=1) / math.sqrt(5))
    assert out["statistic"] == pytest.approx(t)
    assert one_sample_ttest([1.0], 2.0)["p_value"] is None


def _result(seed, loss, success=True, reason=None, variant="v", stage="A"):
    return {
        "stage": stage, "variant": variant, "seed": seed, "success": success, "reason": reason,
        "final_val_loss": loss, "time_seconds": 2.0, "tokens_seen": 100, "world_size": 2,
    }


def test_summarize_runs_counts_failures():
    runs = [_result(1, 1.5), _result(2, None, False, "diverged: train_loss is nan at step 3"), _result(3, 1.7)]
    out = summarize_runs(runs)
    assert out["n_runs"] == 3 and out["successful_runs"] == 2
    assert out["failed_runs"] == [{"seed": 2, "reason": "diverged: train_loss is nan at step 3"}]
    assert out["val_loss"]["mean"] == pytest.approx(1.6)
    assert out["time_seconds"]["total"] == 6.0
    assert out["process_seconds_total"] == 12.0
    assert [r["seed"] for r in out["runs"]] == [1, 2, 3]


def test_summarize_runs_rejects_mixed_variants():
    with pytest.raises(ValueError, match="several stage/variant"):
        summarize_runs([_result(1, 1.0, variant="a"), _result(2, 1.0, variant="b")])


def test_paired_matches_scipy_ttest_rel_on_shared_seeds():
    a = {1: 1.91, 2: 1.87, 3: 1.95, 4: 1.89, 5: 1.93, 9: 0.5}   # seed 9 has no partner: left out
    b = {1: 2.01, 2: 1.98, 3: 2.05, 4: 2.02, 5: 1.99, 7: 3.0}
    out = paired_ttest(a, b, "less")
    ref = sps.ttest_rel(LOSSES, BASE, alternative="less")
    assert out["n_pairs"] == 5 and out["df"] == 4
    assert out["p_value"] == pytest.approx(ref.pvalue)
    d = np.array(LOSSES) - np.array(BASE)
    assert out["statistic"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(5)))
    assert out["mean_difference"] == pytest.approx(d.mean())
    assert paired_ttest({1: 1.0}, {1: 2.0})["p_value"] is None


def test_holm_matches_statsmodels_and_keeps_untestable_entries():
    raw = [0.004, None, 0.03, 0.012]
    out = holm_adjust(raw, 0.01)
    expected = multipletests([0.004, 0.03, 0.012], alpha=0.01, method="holm")[1]
    assert out[1] is None
    assert [out[0], out[2], out[3]] == pytest.approx(list(expected))
    assert out[0] == pytest.approx(0.012)        # smallest of 3: x 3
    assert out[3] == pytest.approx(0.024)        # second: x 2
    assert out[2] == pytest.approx(0.03)         # largest: x 1 (monotone)
    assert holm_adjust([None], 0.01) == [None]


def test_summary_has_seed_001_statistics_and_metadata():
    runs = [
        {**_result(1, 1.5), "study": "s", "git_commit": "abc", "git_dirty": False, "device": "cuda:0",
         "device_name": "NVIDIA H100", "train_time_ms": 3.6e6, "flops": 1e15, "end_time": "2025-01-01T10:00:00",
         "communication": {"total_bytes": 100, "bytes_per_token": 4.0}},
        {**_result(2, 1.7), "study": "s", "git_commit": "abc", "git_dirty": False, "device": "cuda:0",
         "device_name": "NVIDIA H100", "train_time_ms": 1.8e6, "flops": 2e15, "end_time": "2025-01-01T11:00:00",
         "communication": {"total_bytes": 300, "bytes_per_token": 6.0}},
    ]
    out = summarize_runs(runs)
    st = out["statistics"]
    assert st["n_runs"] == 2 and st["successful_runs"] == 2
    assert set(st["val_loss"]) == {"mean", "std", "min", "max", "median", "ci_95"}
    assert st["val_loss"]["mean"] == pytest.approx(1.6)
    assert st["time"] == {"mean": 2.0, "std": 0.0, "total": 4.0}
    assert out["experiment_name"] == "s_v_stage_A"
    assert out["end_time"] == "2025-01-01T11:00:00"
    assert out["git_info"] == {"commit": "abc", "dirty": False}
    assert out["gpu_info"]["device_name"] == "NVIDIA H100" and out["gpu_info"]["gpus_per_run"] == 2
    assert out["bytes_per_token"] == pytest.approx(5.0)
    assert out["flops_total"] == pytest.approx(3e15)
    assert out["gpu_hours_total"] == pytest.approx((1.0 + 0.5) * 2)   # train time x world_size GPUs
    # CPU runs: no GPU-hours, process-hours instead; no communication field: None
    cpu = summarize_runs([{**_result(1, 1.5), "train_time_ms": 3.6e6, "device": "cpu"}])
    assert cpu["gpu_hours_total"] == 0.0 and cpu["process_hours_total"] == pytest.approx(2.0)
    assert cpu["bytes_per_token"] is None


def test_budget_stopped_run_with_an_unfinished_schedule_is_excluded():
    finished = {**_result(1, 1.5), "stopped_early": "training_hours", "schedule_progress": 1.0}
    cut = {**_result(2, 1.2), "stopped_early": "training_hours", "schedule_progress": 0.6}
    assert comparable_reason(finished) is None
    assert "schedule progress 0.60" in comparable_reason(cut)
    out = summarize_runs([finished, cut, _result(3, 1.7)])
    assert out["successful_runs"] == 2 and out["failed_runs"] == []
    assert out["excluded_runs"][0]["seed"] == 2 and "not comparable" in out["excluded_runs"][0]["reason"]
    assert out["val_loss"]["mean"] == pytest.approx(1.6)
    assert [r["status"] for r in out["runs"]] == ["ok", "excluded", "ok"]
