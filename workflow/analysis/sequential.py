"""Group-sequential confirmation: alpha-spending boundaries, Holm across variants, futility.

The last stage may look at its results after ``looks = [n_1, ..., n_K]`` seeds per variant
(``verdict.sequential``). At look k every open variant's one-sided p-value (the verdict's
paired or Welch t-test on its first n_k seeds) is compared with a nominal level from an
alpha-spending function; a variant that crosses is decided a winner, one whose conditional
power falls below ``futility`` is decided not a winner, and only the open ones run more seeds.

Boundaries (Lan & DeMets 1983, Biometrika 70:659; Jennison & Turnbull 2000, *Group Sequential
Methods with Applications to Clinical Trials*, ch. 7): with information fractions
t_k = n_k / n_K and the spending function f (cumulative alpha spent by t), the one-sided
efficacy boundaries z_1..z_K solve

    P(Z_1 < z_1, ..., Z_{k-1} < z_{k-1}, Z_k >= z_k) = f(t_k) - f(t_{k-1})

for the canonical joint distribution of the look statistics, Corr(Z_i, Z_j) = sqrt(t_i / t_j)
(``scipy.stats.multivariate_normal``; no maintained Python package for group-sequential designs
was found: ``gsdesign`` 0.1.5 and ``gsmethods`` 0.0.2 are early releases). Spending functions:
``obrien_fleming`` f(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt t) and ``pocock``
f(t) = alpha ln(1 + (e - 1) t) (Lan & DeMets 1983). The futility rule is non-binding: the
efficacy boundaries ignore it, so stopping a variant early never raises the error.

t statistics at small seed counts: using the normal boundaries as nominal levels for the
t-test's p-value (the significance-level approach, Jennison & Turnbull 2000, section 3.8)
keeps each look's marginal error exact but not the joint one: with 3 and 5 seeds it gives
0.0105 (O'Brien-Fleming) and 0.011 (Pocock) at alpha 0.01 for one variant (simulated,
200,000 studies). The paired and one-sample t statistics have a joint null distribution
that depends only on the seed counts, so :func:`t_efficacy_levels` spends the same alpha
increments on that distribution (simulated once, with a fixed generator) instead;
tests/unit/test_analysis_sequential.py checks the error over all looks with independent
simulated studies.

Holm across variants (Maurer & Bretz 2013, "Multiple testing in group sequential trials using
graphical approaches", Statistics in Biopharmaceutical Research 5:311; Holm is the graph
with equal weights passed on equally): with j hypotheses not yet rejected each is tested with
the boundaries of local level alpha / j, at this look and, with the recomputed boundaries,
at its earlier looks; every rejection passes its level on and the step repeats until nothing
more is rejected. This keeps the family-wise error at most alpha (closed testing).
Torch-free (the Snakemake process imports it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

SPENDING = ("obrien_fleming", "pocock")


def spent_alpha(fraction: float, alpha: float, spending: str) -> float:
    """Cumulative one-sided alpha spent at information fraction ``fraction`` (0..1).

    Raises:
        ValueError: unknown spending function.
    """
    t = min(max(float(fraction), 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if spending == "obrien_fleming":
        return float(2.0 * stats.norm.sf(stats.norm.isf(alpha / 2.0) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1.0 + (math.e - 1.0) * t))
    raise ValueError(f"verdict.sequential.spending: unknown spending function {spending!r} (known: {', '.join(SPENDING)})")


def fractions_of(looks: Sequence[int]) -> tuple[float, ...]:
    """Information fractions n_k / n_K of the looks (seeds per variant at each look)."""
    return tuple(n / looks[-1] for n in looks)


@functools.lru_cache(maxsize=256)
def efficacy_levels(fractions: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """Nominal one-sided levels 1 - Phi(z_k) of the efficacy boundaries for normal (z) statistics.

    Args:
        fractions: increasing information fractions, the last 1.0.
        alpha: the one-sided level the design spends in total.
        spending: ``obrien_fleming`` or ``pocock``.
    Returns:
        one nominal level per look; a p-value at look k at or below it crosses.
    Raises:
        ValueError: fractions not increasing in (0, 1] or unknown spending.
    """
    _check_fractions(fractions)
    spent = [spent_alpha(t, alpha, spending) for t in fractions]
    bounds: list[float] = []
    rng = np.random.default_rng(0)  # the integration of 3 or more looks is quasi-Monte Carlo: fixed for reproducibility
    for k in range(len(fractions)):
        increment = spent[k] - (spent[k - 1] if k else 0.0)
        if k == 0:
            bounds.append(float(stats.norm.isf(increment)))
            continue
        t = np.asarray(fractions[: k + 1])
        cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
        previous = np.asarray(bounds)
        below = _mvn_cdf(previous, cov[:k, :k], rng) if k > 1 else stats.norm.cdf(previous[0])

        def excess(z: float) -> float:  # P(no crossing before k, cross at k) - increment
            return below - _mvn_cdf(np.append(previous, z), cov, rng) - increment

        bounds.append(float(optimize.brentq(excess, -1.0, 12.0, xtol=1e-10)))
    return tuple(float(stats.norm.sf(z)) for z in bounds)


def _check_fractions(fractions: Sequence[float]) -> None:
    if not fractions or any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[0] <= 0 or abs(fractions[-1] - 1) > 1e-12:
        raise ValueError(f"information fractions must increase in (0, 1] and end at 1, got {list(fractions)}")


#: Null draws of the joint t statistics (fixed generator: the boundaries are reproducible).
T_DRAWS = 1 << 20


@functools.lru_cache(maxsize=16)
def _null_t_statistics(looks: tuple[int, ...]) -> np.ndarray:
    """T_k = sqrt(n_k) mean_k / sd_k of the first n_k of n_K iid N(0, 1) values, for every look:
    the joint null distribution of a one-sample (or paired) t-test repeated at the looks. It
    does not depend on the variance (the statistic is scale-free). Shape (T_DRAWS, K)."""
    x = np.random.default_rng(20240607).standard_normal((T_DRAWS, looks[-1]))
    out = np.empty((T_DRAWS, len(looks)))
    for k, n in enumerate(looks):
        part = x[:, :n]
        out[:, k] = part.mean(1) * math.sqrt(n) / part.std(1, ddof=1)
    return out


@functools.lru_cache(maxsize=1024)
def t_efficacy_levels(looks: tuple[int, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """Nominal one-sided p-value levels of the efficacy boundaries for t-tests at the looks.

    The spending function's increments are met by the joint null distribution of the t
    statistics themselves (:func:`_null_t_statistics`, 2^20 draws), not by the normal
    approximation: with 3 and 5 seeds (2 and 4 degrees of freedom), levels from the normal
    boundaries (the significance-level approach) give a one-variant error of 0.011 at
    alpha 0.01 with Pocock spending (simulated). The first look is exact
    (``scipy.stats.t``); later looks have a relative Monte Carlo error of about
    1 / sqrt(increment x 2^20) (2 % for an increment of 0.002).

    Args:
        looks: seeds per variant at each look (increasing; the first at least 2).
        alpha, spending: as :func:`efficacy_levels`.
    Returns:
        one level per look: the t-test's p-value with n_k seeds at or below it crosses.
    Raises:
        ValueError: looks not increasing or a look with fewer than 2 seeds; unknown spending.
    """
    if looks[0] < 2:
        raise ValueError(f"verdict.sequential.looks: a look needs at least 2 seeds (t-test), got {list(looks)}")
    fractions = fractions_of(list(looks))
    _check_fractions(fractions)
    spent = [spent_alpha(t, alpha, spending) for t in fractions]
    draws = _null_t_statistics(tuple(looks))
    alive = np.ones(len(draws), bool)
    levels = []
    for k, n in enumerate(looks):
        increment = spent[k] - (spent[k - 1] if k else 0.0)
        if k == 0:
            c = float(stats.t.isf(increment, n - 1))
        else:
            survivors = np.sort(draws[alive, k])[::-1]
            hits = int(round(increment * len(draws)))
            c = float(survivors[hits - 1]) if hits >= 1 else float(survivors[0]) + 1.0
        alive &= draws[:, k] < c
        levels.append(float(stats.t.sf(c, n - 1)))
    return tuple(levels)


def _mvn_cdf(upper: np.ndarray, cov: np.ndarray, rng: np.random.Generator) -> float:
    """P(X < upper) for X ~ N(0, cov) (scipy, Genz; absolute error 1e-8)."""
    return float(stats.multivariate_normal.cdf(upper, mean=np.zeros(len(upper)), cov=cov, abseps=1e-8, releps=0.0, rng=rng))


def level_table(looks: Sequence[int], alpha: float, spending: str, m: int, statistic: str = "t") -> np.ndarray:
    """Nominal levels for Holm's local levels: row j (1..m) holds the levels at ``alpha / j``
    (:func:`t_efficacy_levels` for ``statistic`` ``t``, :func:`efficacy_levels` for ``z``);
    row 0 is zeros (no hypothesis open). Shape (m + 1, K)."""
    table = np.zeros((m + 1, len(looks)))
    for j in range(1, m + 1):
        table[j] = (t_efficacy_levels(tuple(looks), alpha / j, spending) if statistic == "t"
                    else efficacy_levels(fractions_of(list(looks)), alpha / j, spending))
    return table


def conditional_power(p_value: np.ndarray | float, n: int, n_final: int, final_level: np.ndarray | float) -> np.ndarray:
    """Conditional power after ``n`` of ``n_final`` seeds under the current trend.

    Assumption (stated): the true effect, in units of the per-seed standard deviation, equals
    the one observed so far, T / sqrt(n) (Lan & Wittes 1988, Biometrics 44:579; Jennison &
    Turnbull 2000, section 10.2). With the observed t statistic T = t_{n-1}^-1(1 - p), the
    final boundary c = t_{n_final-1}^-1(1 - final_level) and the fraction f = n / n_final, the
    final statistic is about T / sqrt(f) + N(0, 1 - f) (the B-value of Lan & Wittes), so
    CP = 1 - Phi((c - T / sqrt f) / sqrt(1 - f)). Returns an array (NaN where p is NaN).
    """
    t_obs = stats.t.isf(np.asarray(p_value, float), n - 1)
    c = stats.t.isf(np.asarray(final_level, float), n_final - 1)
    f = n / n_final
    if f >= 1.0:
        return np.where(np.isnan(t_obs), np.nan, (t_obs >= c).astype(float))
    return stats.norm.sf((c - t_obs / math.sqrt(f)) / math.sqrt(1.0 - f))


def sequential_holm(p: np.ndarray, looks: Sequence[int], alpha: float, spending: str,
                    futility: float | None = None, stopped: np.ndarray | None = None, statistic: str = "t") -> dict:
    """Run the looks of a group-sequential design with Holm's procedure across variants.

    Args:
        p: one-sided p-values, shape (..., m, L) for m variants and the L <= K looks seen so
            far (NaN: not observed, e.g. the variant stopped or was not testable). Leading axes
            are independent studies (the simulation) or absent (one study).
        looks: seeds per variant at each of the K looks (increasing).
        alpha: family-wise one-sided level.
        spending: ``obrien_fleming`` | ``pocock``.
        futility: stop an open variant whose conditional power (:func:`conditional_power`, at
            its current Holm level) is below this; None: no futility stop. Non-binding.
        stopped: bool (..., m): variants decided not a winner for another reason (e.g. a failed
            seed); they stay in the Holm family (conservative) and are never rejected.
        statistic: ``t`` (p-values of t-tests with n_k - 1 degrees of freedom: the paired and
            one-sample tests; boundaries exact for them) or ``z`` (normal boundaries used as
            nominal levels: Welch's test, whose null distribution depends on the variances).
    Returns:
        ``{"rejected": bool (..., m), "rejected_look": int (..., m) (0-based look, -1 never),
        "futile": bool, "futile_look": int, "open": bool (..., m) (undecided after the last
        look seen), "levels": (m + 1, K) :func:`level_table`, "fractions"}``.
    """
    p = np.asarray(p, float)
    m, seen = p.shape[-2], p.shape[-1]
    fractions = fractions_of(list(looks))
    table = level_table(looks, alpha, spending, m, statistic)
    shape = p.shape[:-1]
    rejected = np.zeros(shape, bool)
    rejected_look = np.full(shape, -1)
    futile = np.zeros(shape, bool) if stopped is None else np.broadcast_to(np.asarray(stopped, bool), shape).copy()
    futile_look = np.where(futile, 0, -1)
    for k in range(seen):
        past = p[..., : k + 1]
        for _ in range(m):
            j = m - rejected.sum(-1)  # hypotheses not rejected (futile ones included)
            levels = table[np.maximum(j, 1)][..., None, : k + 1]  # (..., 1, k+1)
            cross = np.any(past <= levels, axis=-1) & ~rejected & ~futile
            if not cross.any():
                break
            rejected |= cross
            rejected_look = np.where(cross, k, rejected_look)
        if futility is not None and k < len(looks) - 1:
            j = np.maximum(m - rejected.sum(-1), 1)
            final = table[j, -1][..., None]
            power = conditional_power(p[..., k], looks[k], looks[-1], final)
            stop = (power < futility) & ~rejected & ~futile & ~np.isnan(p[..., k])
            futile |= stop
            futile_look = np.where(stop, k, futile_look)
    return {"rejected": rejected, "rejected_look": rejected_look, "futile": futile, "futile_look": futile_look,
            "open": ~rejected & ~futile, "levels": table, "fractions": fractions}


def design_summary(looks: Sequence[int], alpha: float, spending: str, m: int, statistic: str = "t") -> dict:
    """The design as verdict.json records it: looks, fractions, cumulative alpha spent per look
    and the nominal levels for each Holm local level alpha / j (j = 1..m)."""
    fractions = fractions_of(list(looks))
    table = level_table(looks, alpha, spending, max(m, 1), statistic)
    return {
        "looks": list(looks),
        "spending": spending,
        "statistic": statistic,
        "fractions": list(fractions),
        "alpha_spent": [spent_alpha(t, alpha, spending) for t in fractions],
        "nominal_levels": {str(j): [float(x) for x in table[j]] for j in range(1, max(m, 1) + 1)},
    }
