"""Gate decisions and the verdict: ranking, ties, failed runs, too few seeds, Holm, paired
tests, winners rules, the B -> C rule and its pivot."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from workflow.analysis.gates import choose_pivot, decide_gate
from workflow.analysis.stats import summarize_runs
from workflow.analysis.verdict import decide_verdict, verdict_markdown
from workflow.study.schema import validate_section


def gate(**values):
    """A gate section with the schema's defaults filled (as Snakemake's validate does)."""
    return validate_section(values, "gate", "stages.X.gate")


def verdict_settings(**values):
    return validate_section(values, "verdict", "verdict")


def summary(variant, losses, stage="A", first_seed=1000):
    """A summary.json dict from final val_loss values; None marks a diverged run."""
    runs = [
        {
            "stage": stage, "variant": variant, "seed": first_seed + i,
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
    d = decide_gate("A", gate(**{"rule": "top_k", "k": 2}), s, "baseline")
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
    d = decide_gate("A", gate(**{"rule": "top_k", "k": 2}), s, "baseline")
    assert d["advanced"] == ["a", "b", "c"]
    assert "ties the cut-off" in by_variant(d)["c"]["reason"]
    # tie_tolerance widens what counts as a tie
    d2 = decide_gate("A", gate(**{"rule": "top_k", "k": 2, "tie_tolerance": 0.2}), s, "baseline")
    assert d2["advanced"] == ["a", "b", "c", "d"]


def test_failed_runs_and_too_few_successes_are_not_eligible():
    s = {
        "baseline": summary("baseline", [2.0, 2.1]),
        "best_but_one_seed": summary("best_but_one_seed", [1.0, None]),
        "all_failed": summary("all_failed", [None, None]),
        "ok": summary("ok", [1.9, 1.95]),
    }
    d = decide_gate("A", gate(**{"rule": "top_k", "k": 2}), s, "baseline")
    assert d["advanced"] == ["ok"]
    rows = by_variant(d)
    assert rows["best_but_one_seed"]["eligible"] is False
    assert "only 1 of 2 runs succeeded" in rows["best_but_one_seed"]["reason"]
    assert d["failed_runs"]["all_failed"][0]["reason"].startswith("diverged")
    # lowering both bars makes the single-seed variant eligible (and best)
    d1 = decide_gate("A", gate(rule="top_k", k=1, min_successful_runs=1, max_failed_fraction=0.5), s, "baseline")
    assert d1["advanced"] == ["best_but_one_seed"]


def test_beats_baseline():
    s = {
        "baseline": summary("baseline", [2.0, 2.1, 2.05], "B"),
        "better": summary("better", [1.9, 1.95, 1.92], "B"),
        "worse": summary("worse", [2.2, 2.1, 2.3], "B"),
        "equal": summary("equal", [2.0, 2.1, 2.05], "B"),
    }
    d = decide_gate("B", gate(**{"rule": "beats_baseline"}), s, "baseline")
    assert d["advanced"] == ["better"]
    rows = by_variant(d)
    assert "does not beat" in rows["equal"]["reason"]
    assert 0 < rows["better"]["p_vs_baseline"] < 0.05


def test_beats_baseline_without_a_usable_baseline_advances_nothing():
    s = {"baseline": summary("baseline", [2.0, None], "B"), "better": summary("better", [1.0, 1.1], "B")}
    d = decide_gate("B", gate(**{"rule": "beats_baseline"}), s, "baseline")
    assert d["advanced"] == []
    assert "baseline has too few" in by_variant(d)["better"]["reason"]


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown rule"):
        decide_gate("A", {**gate(rule="top_k"), "rule": "coin_flip"}, {"baseline": summary("baseline", [1, 2])}, "baseline")


def test_verdict_welch_and_target():
    s = {
        "baseline": summary("baseline", [2.01, 1.98, 2.05, 2.02, 1.99], "C"),
        "better": summary("better", [1.91, 1.87, 1.95, 1.89, 1.93], "C"),
        "noisy": summary("noisy", [1.5, 2.5, 1.9, 2.3, 1.8], "C"),
    }
    v = decide_verdict(s, "baseline", verdict_settings(alpha=0.01, target_val_loss=2.0, test="welch"))
    res = {e["variant"]: e for e in v["results"]}
    assert v["winners"] == ["better"]
    assert res["better"]["beats_target"] is True
    assert res["noisy"]["beats_baseline"] is False
    assert res["baseline"]["verdict"] == "reference"
    assert res["baseline"]["beats_target"] is False


# ---- failed seeds, Holm, paired tests, winners rules, B -> C rule, pivot --------------------


def test_verdict_a_variant_with_diverged_seeds_cannot_win():
    """[2.10, 2.101, NaN, NaN, NaN] against a baseline at ~2.20 used to be
    "significantly better (p = 2.5e-06)" and a winner."""
    s = {
        "baseline": summary("baseline", [2.20, 2.21, 2.19, 2.205, 2.195], "C"),
        "unstable": summary("unstable", [2.10, 2.101, None, None, None], "C"),
    }
    v = decide_verdict(s, "baseline", verdict_settings(test="welch"))
    entry = next(e for e in v["results"] if e["variant"] == "unstable")
    assert v["winners"] == []
    assert entry["disqualified"] is True and entry["winner"] is False
    assert "cannot win: 3 of 5 seeds failed" in entry["verdict"] and "diverged" in entry["verdict"]
    # the test itself is still reported
    assert entry["vs_baseline"]["p_value"] < 1e-4


def test_verdict_penalty_policy_counts_failed_runs_at_ln_vocab():
    s = {
        "baseline": summary("baseline", [2.20, 2.21, 2.19, 2.205, 2.195], "C"),
        "unstable": summary("unstable", [2.10, 2.101, None, None, None], "C"),
        "good": summary("good", [2.10, 2.09, 2.11, 2.1, 2.105], "C"),
    }
    v = decide_verdict(s, "baseline", verdict_settings(failed_run_policy="penalty"), vocab_size=65)
    res = {e["variant"]: e for e in v["results"]}
    assert v["penalty_val_loss"] == pytest.approx(math.log(65))
    assert res["unstable"]["n"] == 5
    assert res["unstable"]["mean"] == pytest.approx((2.10 + 2.101 + 3 * math.log(65)) / 5)
    assert res["unstable"]["beats_baseline"] is False
    assert v["winners"] == ["good"]
    # an explicit penalty replaces ln(vocab_size)
    v2 = decide_verdict(s, "baseline", verdict_settings(failed_run_policy="penalty", penalty_val_loss=3.0))
    assert v2["penalty_val_loss"] == 3.0


def test_gate_max_failed_fraction():
    """A variant with one diverged seed of three used to advance on its two good seeds."""
    s = {
        "baseline": summary("baseline", [2.0, 2.1, 2.05]),
        "fragile": summary("fragile", [1.5, None, 1.6]),
        "ok": summary("ok", [1.9, 1.95, 1.92]),
    }
    d = decide_gate("A", gate(rule="top_k", k=1), s, "baseline")
    rows = by_variant(d)
    assert d["advanced"] == ["ok"]
    assert rows["fragile"]["eligible"] is False
    assert "1 of 3 runs failed" in rows["fragile"]["reason"] and "max_failed_fraction=0%" in rows["fragile"]["reason"]
    d2 = decide_gate("A", gate(rule="top_k", k=1, max_failed_fraction=0.34), s, "baseline")
    assert d2["advanced"] == ["fragile"]


def test_verdict_holm_adjusts_over_the_variants_and_decides_on_adjusted_p():
    base = [2.00, 2.02, 1.98, 2.01, 1.99]
    rng = np.random.default_rng(3)
    s = {"baseline": summary("baseline", base, "C")}
    # three variants whose raw p-values (Welch) sit just below alpha = 0.01
    for name, shift in (("v1", 0.032), ("v2", 0.031), ("v3", 0.033)):
        s[name] = summary(name, list(np.array(base) - shift + rng.normal(0, 0.004, 5)), "C")
    v = decide_verdict(s, "baseline", verdict_settings(test="welch"))
    tested = [e for e in v["results"] if e["vs_baseline"]]
    raw = [e["vs_baseline"]["p_value"] for e in tested]
    expected = multipletests(raw, alpha=0.01, method="holm")[1]
    assert [e["vs_baseline"]["p_value_adjusted"] for e in tested] == pytest.approx(list(expected))
    # Holm by hand: sorted p_(i) * (m - i + 1), cumulative max
    order = np.argsort(raw)
    hand = np.maximum.accumulate(np.array(raw)[order] * (3 - np.arange(3)))
    assert sorted(expected) == pytest.approx(list(np.minimum(hand, 1)))
    assert any(p < 0.01 for p in raw)
    for e in tested:
        assert e["beats_baseline"] == (e["vs_baseline"]["p_value_adjusted"] < 0.01)
    # without the correction the raw p-values decide: more winners
    v_none = decide_verdict(s, "baseline", verdict_settings(test="welch", correction="none"))
    assert len(v_none["winners"]) > len(v["winners"])
    assert "adjusted p" in verdict_markdown(v)


def test_paired_test_uses_seed_matched_runs_and_is_more_powerful_with_shared_seeds():
    """Seed effects shared by the variants (same init and batch order) hide a small effect
    from Welch's test; the paired test on per-seed differences finds it."""
    seed_effect = [0.00, 0.05, -0.04, 0.03, -0.02]
    base = [2.0 + e for e in seed_effect]
    better = [2.0 - 0.01 + e + d for e, d in zip(seed_effect, [0.001, -0.001, 0.0005, 0.0, -0.0005])]
    s = {"baseline": summary("baseline", base, "C"), "better": summary("better", better, "C")}
    paired = decide_verdict(s, "baseline", verdict_settings(test="paired"))
    welch = decide_verdict(s, "baseline", verdict_settings(test="welch"))
    p_paired = next(e for e in paired["results"] if e["variant"] == "better")["vs_baseline"]
    p_welch = next(e for e in welch["results"] if e["variant"] == "better")["vs_baseline"]
    assert p_paired["p_value"] == pytest.approx(sps.ttest_rel(better, base, alternative="less").pvalue)
    assert p_paired["n_pairs"] == 5
    assert p_paired["p_value"] < 0.001 < 0.3 < p_welch["p_value"]
    assert paired["winners"] == ["better"] and welch["winners"] == []


def test_paired_test_pairs_only_shared_seeds():
    s = {
        "baseline": summary("baseline", [2.0, 2.1, 2.05, None], "C"),
        "v": summary("v", [1.9, None, 1.96, 1.9], "C"),
    }
    v = decide_verdict(s, "baseline", verdict_settings(test="paired", failed_run_policy="penalty", penalty_val_loss=4.0))
    # seeds 1000..1003; penalty fills failed runs: every seed is a pair
    assert next(e for e in v["results"] if e["variant"] == "v")["vs_baseline"]["n_pairs"] == 4
    v = decide_verdict(s, "baseline", verdict_settings(test="paired"))
    assert next(e for e in v["results"] if e["variant"] == "v")["vs_baseline"]["n_pairs"] == 2


def test_winners_rule_baseline_target_or_both():
    """Winners used to ignore beats_target."""
    s = {
        "baseline": summary("baseline", [2.01, 1.98, 2.05, 2.02, 1.99], "C"),
        "better": summary("better", [1.91, 1.87, 1.95, 1.89, 1.93], "C"),  # beats baseline, not target 1.8
    }
    both = decide_verdict(s, "baseline", verdict_settings(target_val_loss=1.8, winners="both", test="welch"))
    assert both["winners"] == []
    entry = next(e for e in both["results"] if e["variant"] == "better")
    assert entry["beats_baseline"] is True and entry["beats_target"] is False
    assert "not a winner (winners: both)" in entry["verdict"]
    assert decide_verdict(s, "baseline", verdict_settings(target_val_loss=1.8, winners="baseline", test="welch"))["winners"] == ["better"]
    assert decide_verdict(s, "baseline", verdict_settings(target_val_loss=2.0, winners="target", test="welch"))["winners"] == ["better"]
    with pytest.raises(ValueError, match="verdict.winners: 'both' needs verdict.target_val_loss"):
        decide_verdict(s, "baseline", verdict_settings(winners="both"))


def test_verdict_markdown_without_a_target_never_prints_none():
    """The explanation said "target_val_loss (None)" when no target was set."""
    s = {
        "baseline": summary("baseline", [2.01, 1.98, 2.05], "C"),
        "better": summary("better", [1.91, 1.87, 1.95], "C"),
    }
    v = decide_verdict(s, "baseline", verdict_settings())
    md = verdict_markdown(v)
    assert "None" not in md and "target" not in md.lower()
    assert "p vs target" not in md
    with_target = verdict_markdown(decide_verdict(s, "baseline", verdict_settings(target_val_loss=2.5)))
    assert "target_val_loss 2.5" in with_target and "adjusted p vs target" in with_target


def test_beats_baseline_ci_needs_mean_below_and_disjoint_intervals():
    s = {
        "baseline": summary("baseline", [2.00, 2.02, 1.98], "B"),
        "clear": summary("clear", [1.80, 1.81, 1.79], "B"),
        "overlapping": summary("overlapping", [1.97, 2.01, 1.96], "B"),  # mean below, CIs overlap
        "worse": summary("worse", [2.10, 2.11, 2.12], "B"),
    }
    d = decide_gate("B", gate(rule="beats_baseline_ci"), s, "baseline")
    rows = by_variant(d)
    assert d["advanced"] == ["clear"]
    assert "overlaps the baseline's" in rows["overlapping"]["reason"]
    assert rows["overlapping"]["ci_95"][1] > rows["baseline"]["ci_95"][0]
    assert "not below" in rows["worse"]["reason"]
    # the plain rule would have advanced the overlapping one too
    assert decide_gate("B", gate(rule="beats_baseline"), s, "baseline")["advanced"] == ["clear", "overlapping"]


def test_pivot_to_the_next_best_of_the_previous_gate_within_the_reserve():
    a = {
        "baseline": summary("baseline", [2.0, 2.1]),
        "first": summary("first", [1.5, 1.6]),
        "second": summary("second", [1.7, 1.8]),
        "third": summary("third", [1.9, 1.95]),
        "broken": summary("broken", [1.0, None]),
    }
    gate_a = decide_gate("A", gate(rule="top_k", k=1), a, "baseline")
    b = {"baseline": summary("baseline", [2.0, 2.02, 1.98], "B"), "first": summary("first", [2.1, 2.2, 2.15], "B")}
    gate_b = decide_gate("B", gate(rule="beats_baseline_ci", pivot=True), b, "baseline")
    assert gate_b["advanced"] == []
    pivot = choose_pivot(gate_b, gate_a, seeds=3, run_cost_usd=10.0, reserve_usd=30.0)
    assert pivot["variant"] == "second" and pivot["run"] is True and pivot["cost_usd"] == 30.0
    # seed 001: $7 of reserve does not pay for 3 runs at $10
    short = choose_pivot(gate_b, gate_a, seeds=3, run_cost_usd=10.0, reserve_usd=7.0)
    assert short["variant"] == "second" and short["run"] is False and "exceed the reserve $7.00" in short["reason"]
    # no pivot when the gate is not configured for it, or when something advanced
    assert choose_pivot(decide_gate("B", gate(rule="beats_baseline_ci"), b, "baseline"), gate_a, 3, 10.0, 30.0) is None


# ---- only the baseline diverges

@pytest.mark.parametrize("test", ["paired", "welch"])
def test_verdict_says_the_baseline_failed_on_every_seed(test):
    s = {"baseline": summary("baseline", [None, None, None], "C"),
         "a": summary("a", [1.9, 1.95, 1.92], "C"), "b": summary("b", [2.0, 2.1, 2.05], "C")}
    v = decide_verdict(s, "baseline", verdict_settings(test=test, target_val_loss=None))
    rows = {e["variant"]: e for e in v["results"]}
    failed = "the baseline 'baseline' failed on every seed (3 of 3: diverged: train_loss is nan at step 5)"
    assert rows["a"]["verdict"].startswith(f"not testable against baseline ({failed})"), rows["a"]["verdict"]
    assert "fewer than 2" not in rows["a"]["verdict"] and "fewer than 2" not in rows["b"]["verdict"]
    assert rows["baseline"]["verdict"] == f"reference; {failed}"
    assert v["explanation"].startswith(f"No variant can be tested against baseline: {failed}.")
    assert v["winners"] == [] and failed in verdict_markdown(v)


def test_verdict_names_a_baseline_with_one_run_and_a_variant_with_too_few():
    s = {"baseline": summary("baseline", [2.0, None, None], "C"), "a": summary("a", [1.9, 1.95, 1.92], "C")}
    v = decide_verdict(s, "baseline", verdict_settings(target_val_loss=None))
    assert "the baseline 'baseline' has only 1 run that counts (2 of 3 failed" in v["results"][1]["verdict"]
    s = {"baseline": summary("baseline", [2.0, 2.1, 2.05], "C"), "a": summary("a", [1.9, None, None], "C")}
    v = decide_verdict(s, "baseline", verdict_settings(target_val_loss=None))
    row = [e for e in v["results"] if e["variant"] == "a"][0]
    assert "not testable against baseline (the variant has 1 run(s) that count, fewer than 2)" in row["verdict"]


def workers_summary(variant, losses, workers):
    """Like :func:`summary`, with each run's final_val_loss_workers (None: the workers share one
    model, as DDP's do)."""
    runs = [
        {"stage": "A", "variant": variant, "seed": 1000 + i, "success": True, "reason": None,
         "final_val_loss": loss, "final_val_loss_workers": w, "time_seconds": 1.0, "tokens_seen": 10, "world_size": 1}
        for i, (loss, w) in enumerate(zip(losses, workers))
    ]
    return summarize_runs(runs)


def test_gate_and_verdict_metric_val_loss_workers():
    """gate.metric / verdict.metric choose which final loss is compared: the averaged model's
    val_loss (default) or the mean of the workers' own losses (DeMuon's reported number); a run
    without the record (DDP) counts its val_loss for both."""
    s = {
        "ddp": workers_summary("ddp", [2.00, 2.02, 2.01], [None, None, None]),
        # gossip "a": a good average model but poor workers; "b": the other way round
        "a": workers_summary("a", [1.80, 1.81, 1.79], [2.30, 2.31, 2.29]),
        "b": workers_summary("b", [1.95, 1.96, 1.94], [1.90, 1.91, 1.89]),
    }
    assert s["ddp"]["val_loss_workers"]["mean"] == pytest.approx(2.01)
    assert s["a"]["val_loss_workers"]["mean"] == pytest.approx(2.30)
    by_avg = decide_gate("A", gate(rule="top_k", k=1), s, "ddp")
    by_workers = decide_gate("A", gate(rule="top_k", k=1, metric="val_loss_workers"), s, "ddp")
    assert by_avg["advanced"] == ["a"] and by_workers["advanced"] == ["b"]
    assert by_variant(by_workers)["a"]["mean"] == pytest.approx(2.30)
    assert by_workers["params"]["metric"] == "val_loss_workers" and "val_loss_workers" in by_workers["explanation"]
    v_avg = decide_verdict(s, "ddp", verdict_settings(alpha=0.05))
    v_workers = decide_verdict(s, "ddp", verdict_settings(alpha=0.05, metric="val_loss_workers"))
    assert set(v_avg["winners"]) == {"a", "b"}
    assert v_workers["winners"] == ["b"] and v_workers["metric"] == "val_loss_workers"
    with pytest.raises(Exception, match="val_loss_workerz|is not one of"):
        gate(rule="top_k", metric="val_loss_workerz")
