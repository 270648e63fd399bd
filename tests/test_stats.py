"""workflow.stats against scipy.stats / numpy on fixed numbers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from workflow.stats import describe, one_sample_ttest, summarize_runs, welch_ttest

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
