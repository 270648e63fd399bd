"""Group-sequential confirmation (workflow.analysis.sequential): boundaries against published
values, and simulated studies through the real decision code (false winners, power)."""

import numpy as np
import pytest
from scipy import stats

from workflow.analysis.sequential import (
    conditional_power, efficacy_levels, sequential_holm, spent_alpha, t_efficacy_levels,
)
from workflow.study.staging import variant_look_seeds
from workflow.analysis.stats import holm_adjust, summarize_runs
from workflow.analysis.verdict import decide_verdict

pytestmark = pytest.mark.unit


def _z(levels):
    return [round(float(stats.norm.isf(x)), 3) for x in levels]


def test_boundaries_match_published_lan_demets_values():
    # Jennison & Turnbull (2000) Table 7.? / gsDesign: one-sided 0.025, equally spaced looks
    assert _z(efficacy_levels((0.5, 1.0), 0.025, "obrien_fleming")) == [2.963, 1.969]
    assert _z(efficacy_levels((0.5, 1.0), 0.025, "pocock")) == [2.157, 2.201]
    assert spent_alpha(1.0, 0.01, "obrien_fleming") == pytest.approx(0.01)
    assert spent_alpha(1.0, 0.01, "pocock") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="spending"):
        spent_alpha(0.5, 0.01, "haybittle")
    with pytest.raises(ValueError, match="fractions"):
        efficacy_levels((0.7, 0.5), 0.01, "pocock")


def test_t_boundaries_spend_the_alpha_on_the_t_statistics():
    """The first look's level is the exact alpha spent (t-test p-values are exact); later looks
    are stricter than the normal boundaries' levels, whose joint error is too high for t-tests
    with few degrees of freedom; a single look is the plain level."""
    t_levels = t_efficacy_levels((3, 5), 0.01, "pocock")
    z_levels = efficacy_levels((0.6, 1.0), 0.01, "pocock")
    assert t_levels[0] == pytest.approx(spent_alpha(0.6, 0.01, "pocock"))
    assert t_levels[1] < z_levels[1]
    assert t_efficacy_levels((5,), 0.01, "obrien_fleming") == pytest.approx((0.01,))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_efficacy_levels((1, 5), 0.01, "pocock")


def test_conditional_power_under_the_current_trend():
    # a p-value exactly at the final boundary's z at t = 1 is a crossing; a hopeless trend has ~0 power
    assert conditional_power(0.001, 5, 5, 0.01) == 1.0
    assert conditional_power(0.6, 3, 5, 0.005) < 0.01
    assert conditional_power(1e-4, 3, 5, 0.005) > 0.9


def simulate(n_studies, m, looks, alpha, spending, effect=None, futility=0.1, seed=0):
    """Simulated last stages: m variants and a baseline, seeds shared within a seed.

    val_loss[v, s] = base + seed_luck[s] + noise[v, s] - effect[v]: a seed's luck (its
    initialisation and batch order) is shared by every variant; the per-variant noise is
    independent. P-values come from scipy.stats.ttest_rel (the verdict's paired test) on the
    first n_k seeds; the decisions from workflow.analysis.sequential.sequential_holm."""
    rng = np.random.default_rng(seed)
    n = looks[-1]
    luck = rng.normal(0.0, 0.05, (n_studies, 1, n))
    base = 2.2 + luck[:, 0] + rng.normal(0.0, 0.01, (n_studies, n))
    variants = 2.2 + luck + rng.normal(0.0, 0.01, (n_studies, m, n))
    if effect is not None:
        variants = variants - np.asarray(effect)[None, :, None]
    p = np.stack([stats.ttest_rel(variants[..., :k], np.broadcast_to(base[:, None, :k], variants[..., :k].shape),
                                  axis=-1, alternative="less").pvalue for k in looks], axis=-1)
    # a variant decided at look k runs no more seeds: its later p-values are never seen
    out = sequential_holm(p, looks, alpha, spending, futility)
    decided_at = np.where(out["rejected"], out["rejected_look"], np.where(out["futile"], out["futile_look"], len(looks) - 1))
    seeds_used = np.asarray(looks)[decided_at]
    return out, p, seeds_used


def _rate(hits, n):
    ci = stats.binomtest(int(hits), n).proportion_ci(0.95)
    return hits / n, (ci.low, ci.high)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_null_studies_keep_the_family_wise_error(spending):
    """20,000 null studies (4 variants no better than the baseline): false-winner rate <= alpha
    for the sequential design (looks after 3 and 5 seeds) and for the fixed design (5 seeds)."""
    n, alpha = 20_000, 0.01
    seq, _, seeds_used = simulate(n, 4, [3, 5], alpha, spending)
    fixed, p_fixed, _ = simulate(n, 4, [5], alpha, spending)
    rate_seq, ci_seq = _rate(seq["rejected"].any(-1).sum(), n)
    rate_fixed, ci_fixed = _rate(fixed["rejected"].any(-1).sum(), n)
    print(f"\n{spending}: sequential false-winner rate {rate_seq:.4f} CI95 {ci_seq[0]:.4f}-{ci_seq[1]:.4f}; "
          f"fixed {rate_fixed:.4f} CI95 {ci_fixed[0]:.4f}-{ci_fixed[1]:.4f}; mean seeds per variant {seeds_used.mean():.2f}")
    # at most alpha: the rate's 95 % interval reaches alpha or lies below it (the fixed design
    # is Holm's procedure, whose error with a shared baseline is just below alpha: a point
    # estimate of 20,000 studies lands above alpha about as often as below)
    assert ci_seq[0] <= alpha and ci_fixed[0] <= alpha
    assert rate_seq <= 1.2 * alpha and rate_fixed <= 1.2 * alpha
    assert rate_seq > 0 and rate_fixed > 0  # the simulation can find false winners at all
    # the fixed design (one look) is Holm's procedure: the same decisions as statsmodels' Holm
    some = np.flatnonzero((p_fixed[:, :, 0] < alpha).any(-1))[:10]  # studies with a raw p below alpha
    for i in [*some, 0, 1]:
        adjusted = holm_adjust(list(p_fixed[i, :, 0]), alpha)
        assert list(fixed["rejected"][i]) == [a <= alpha for a in adjusted]


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_one_variant_t_statistic_error_at_small_seed_counts(spending):
    """The sharpest case for the t approximation (no Holm slack): one variant, t-tests with 2 and
    4 degrees of freedom; the rate stays consistent with alpha (CI covers or lies below it)."""
    n, alpha = 20_000, 0.01
    seq, _, _ = simulate(n, 1, [3, 5], alpha, spending, futility=None, seed=1)
    rate, ci = _rate(seq["rejected"].any(-1).sum(), n)
    print(f"\n{spending}, one variant: false-winner rate {rate:.4f} CI95 {ci[0]:.4f}-{ci[1]:.4f}")
    assert ci[0] <= alpha
    assert rate > alpha / 3  # not trivially conservative: the boundaries spend the alpha


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
@pytest.mark.parametrize("effect_sd", [2.5, 20.0])
def test_power_with_a_true_effect(spending, effect_sd):
    """Two of four variants better by ``effect_sd`` x the paired differences' sd: the power (each
    true variant a winner) of both designs, and the seeds the sequential design saves. A large
    effect (20 sd; the default study's muon is about 30) is decided at the first look with the fixed design's
    power; a moderate one (2.5 sd) costs the sequential design power, most with Pocock spending,
    which spends 70 % of alpha on a t-test with 2 degrees of freedom."""
    n, alpha = 20_000, 0.01
    delta = effect_sd * 0.01 * np.sqrt(2)  # sd of a paired difference: 0.01 * sqrt(2)
    effect = [delta, delta, 0.0, 0.0]
    seq, _, seeds_used = simulate(n, 4, [3, 5], alpha, spending, effect=effect, seed=2)
    fixed, _, _ = simulate(n, 4, [5], alpha, spending, effect=effect, seed=2)
    power_seq, power_fixed = seq["rejected"][:, :2].mean(), fixed["rejected"][:, :2].mean()
    false_seq = seq["rejected"][:, 2:].any(-1).mean()
    no_futility, _, seeds_no_futility = simulate(n, 4, [3, 5], alpha, spending, effect=effect, futility=None, seed=2)
    print(f"\n{spending}, effect {effect_sd} sd: power sequential {power_seq:.3f} (without futility "
          f"{no_futility['rejected'][:, :2].mean():.3f}), fixed {power_fixed:.3f}; mean seeds per variant "
          f"{seeds_used.mean():.2f} of 5 (without futility {seeds_no_futility.mean():.2f}); true variants decided at "
          f"the first look {np.mean(seeds_used[:, :2] == 3):.3f}; false winners among the null variants {false_seq:.4f}")
    assert seeds_used.mean() < 5
    assert false_seq <= alpha
    if effect_sd >= 20:
        assert power_seq >= power_fixed - 0.02
        # Pocock decides nearly every true variant at the first look; O'Brien-Fleming keeps its
        # alpha for the last look (a t-test with 2 degrees of freedom needs a huge statistic)
        assert np.mean(seeds_used[:, :2] == 3) > (0.9 if spending == "pocock" else 0.1)
    else:
        assert power_fixed > 0.5 and power_seq >= 0.5 * power_fixed


def _summary(variant: str, losses: dict[int, float]) -> dict:
    results = [{"stage": "C", "variant": variant, "seed": seed, "success": True, "final_val_loss": loss,
                "time_seconds": 1.0} for seed, loss in losses.items()]
    return summarize_runs(results)


def test_verdict_decides_each_variant_at_its_look():
    """A large effect wins at the first look (3 seeds: it runs no more), a variant no better than
    the baseline stops for futility there, and the verdict records looks, p-values and design."""
    settings = {"alpha": 0.01, "target_val_loss": None, "test": "paired", "correction": "holm", "winners": "baseline",
                "failed_run_policy": "disqualify", "sequential": {"looks": [3, 5], "spending": "obrien_fleming",
                                                                  "futility": 0.1}}
    seeds = [3337, 3338, 3339, 3340, 3341]
    luck = dict(zip(seeds, [0.0, 0.02, -0.01, 0.015, -0.02]))
    base = {s: 2.24 + luck[s] for s in seeds[:3]}
    summaries = {
        "baseline": _summary("baseline", base),
        "strong": _summary("strong", {s: 2.01 + luck[s] + 0.001 * i for i, s in enumerate(seeds[:3])}),
        "null": _summary("null", {s: 2.24 + luck[s] + d for s, d in zip(seeds[:3], [0.004, 0.001, 0.006])}),
    }
    verdict = decide_verdict(summaries, "baseline", settings, seeds=seeds)
    by = {e["variant"]: e for e in verdict["results"]}
    assert verdict["winners"] == ["strong"]
    assert by["strong"]["sequential"]["decision"] == "winner" and by["strong"]["sequential"]["look"] == 1
    assert by["null"]["sequential"]["decision"] == "not_winner" and "futility" in by["null"]["sequential"]["reason"]
    assert verdict["sequential"]["open"] == [] and verdict["sequential"]["looks_seen"] == 1
    design = verdict["sequential"]["design"]["families"]["vs_baseline"]
    assert design["alpha_spent"][-1] == pytest.approx(0.01) and set(design["nominal_levels"]) == {"1", "2"}
    assert "decided at look 1 of 2" in by["strong"]["verdict"]
    # without futility the null variant stays open: it (and the baseline) run seeds 4 and 5
    settings["sequential"]["futility"] = None
    assert decide_verdict(summaries, "baseline", settings, seeds=seeds)["sequential"]["open"] == ["null"]


def test_variant_look_seeds_follows_the_look_files():
    """Seeds per variant from the looks' ``open`` lists (rules/common.smk run_seeds and
    workflow.status count with it): a look not written yet counts as open (the most seeds)."""
    seeds, looks = [3337, 3338, 3339, 3340, 3341, 3342], [2, 4, 6]
    written = {1: {"open": ["a", "b"]}, 2: {"open": ["b"]}}
    calls = []

    def read(k):
        calls.append(k)
        return written.get(k)

    assert variant_look_seeds(seeds, looks, "a", "base", read) == (seeds[:4], 2)
    assert calls == [1, 2]
    assert variant_look_seeds(seeds, looks, "c", "base", read) == (seeds[:2], 1)
    assert variant_look_seeds(seeds, looks, "b", "base", read) == (seeds, None)  # open after look 2: the last look's
    assert variant_look_seeds(seeds, looks, "base", "base", read) == (seeds, None)  # while any variant is open
    assert variant_look_seeds(seeds, looks, "a", "base", lambda k: None) == (seeds, None)  # no look yet: the most
    assert variant_look_seeds(seeds, looks, "a", "base", read, through=2) == (seeds[:4], None)  # before look 2
    written[2]["open"] = []
    assert variant_look_seeds(seeds, looks, "base", "base", read) == (seeds[:4], 2)
