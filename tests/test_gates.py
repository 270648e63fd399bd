"""Gate decisions and the verdict: ranking, ties, failed runs, too few seeds."""

import pytest

from workflow.gates import decide_gate, decide_verdict
from workflow.stats import summarize_runs


def summary(variant, losses, stage="A"):
    """A summary.json dict from final val_loss values; None marks a diverged run."""
    runs = [
        {
            "stage": stage, "variant": variant, "seed": 1000 + i,
            "success": loss is not None, "reason": None if loss is not None else "diverged: train_loss is nan at step 5",
            "final_val_loss": loss, "time_seconds": 1.0, "tokens_seen": 10, "world_size": 1,
        }
        for i, loss in enumerate(losses)
    ]
    return summarize_runs(runs)


def by_variant(decision):
    return {row["variant"]: row for row in decision["ranking"]}


def test_top_k_advances_lowest_means_and_never_the_baseline():
    s = {
        "baseline": summary("baseline", [2.0, 2.1]),
        "a": summary("a", [1.5, 1.6]),
        "b": summary("b", [1.8, 1.9]),
        "c": summary("c", [2.5, 2.4]),
    }
    d = decide_gate("A", {"rule": "top_k", "k": 2}, s, "baseline")
    assert d["advanced"] == ["a", "b"]
    assert d["carried"] == ["baseline"]
    rows = by_variant(d)
    assert rows["c"]["advanced"] is False and "above the cut-off" in rows["c"]["reason"]
    assert rows["a"]["reason"].startswith("rank 1")


def test_top_k_ties_at_the_cut_all_advance():
    s = {
        "baseline": summary("baseline", [2.0, 2.0]),
        "a": summary("a", [1.5, 1.7]),
        "b": summary("b", [1.8, 1.8]),   # same mean as c, smaller std -> ranked first
        "c": summary("c", [1.7, 1.9]),
        "d": summary("d", [1.95, 1.95]),
    }
    d = decide_gate("A", {"rule": "top_k", "k": 2}, s, "baseline")
    assert d["advanced"] == ["a", "b", "c"]
    assert "ties the cut-off" in by_variant(d)["c"]["reason"]
    # tie_tolerance widens what counts as a tie
    d2 = decide_gate("A", {"rule": "top_k", "k": 2, "tie_tolerance": 0.2}, s, "baseline")
    assert d2["advanced"] == ["a", "b", "c", "d"]


def test_failed_runs_and_too_few_successes_are_not_eligible():
    s = {
        "baseline": summary("baseline", [2.0, 2.1]),
        "best_but_one_seed": summary("best_but_one_seed", [1.0, None]),
        "all_failed": summary("all_failed", [None, None]),
        "ok": summary("ok", [1.9, 1.95]),
    }
    d = decide_gate("A", {"rule": "top_k", "k": 2}, s, "baseline")
    assert d["advanced"] == ["ok"]
    rows = by_variant(d)
    assert rows["best_but_one_seed"]["eligible"] is False
    assert "only 1 of 2 runs succeeded" in rows["best_but_one_seed"]["reason"]
    assert d["failed_runs"]["all_failed"][0]["reason"].startswith("diverged")
    # lowering the bar makes the single-seed variant eligible (and best)
    d1 = decide_gate("A", {"rule": "top_k", "k": 1, "min_successful_runs": 1}, s, "baseline")
    assert d1["advanced"] == ["best_but_one_seed"]


def test_beats_baseline():
    s = {
        "baseline": summary("baseline", [2.0, 2.1, 2.05], "B"),
        "better": summary("better", [1.9, 1.95, 1.92], "B"),
        "worse": summary("worse", [2.2, 2.1, 2.3], "B"),
        "equal": summary("equal", [2.0, 2.1, 2.05], "B"),
    }
    d = decide_gate("B", {"rule": "beats_baseline"}, s, "baseline")
    assert d["advanced"] == ["better"]
    rows = by_variant(d)
    assert "does not beat" in rows["equal"]["reason"]
    assert 0 < rows["better"]["welch_p_value"] < 0.05


def test_beats_baseline_without_a_usable_baseline_advances_nothing():
    s = {"baseline": summary("baseline", [2.0, None], "B"), "better": summary("better", [1.0, 1.1], "B")}
    d = decide_gate("B", {"rule": "beats_baseline"}, s, "baseline")
    assert d["advanced"] == []
    assert "baseline has too few" in by_variant(d)["better"]["reason"]


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown rule"):
        decide_gate("A", {"rule": "coin_flip"}, {"baseline": summary("baseline", [1, 2])}, "baseline")


def test_verdict_welch_and_target():
    s = {
        "baseline": summary("baseline", [2.01, 1.98, 2.05, 2.02, 1.99], "C"),
        "better": summary("better", [1.91, 1.87, 1.95, 1.89, 1.93], "C"),
        "noisy": summary("noisy", [1.5, 2.5, 1.9, 2.3, 1.8], "C"),
    }
    v = decide_verdict(s, "baseline", alpha=0.01, target_val_loss=2.0)
    res = {e["variant"]: e for e in v["results"]}
    assert v["winners"] == ["better"]
    assert res["better"]["beats_target"] is True
    assert res["noisy"]["beats_baseline"] is False
    assert res["baseline"]["verdict"] == "reference"
    assert res["baseline"]["beats_target"] is False
