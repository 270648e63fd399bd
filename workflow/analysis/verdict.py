"""The study's verdict: the last stage's variants against the baseline, with Holm-adjusted p-values.

Paired (seed-matched) one-sided t-tests by default, Welch otherwise (scipy.stats;
statsmodels' ``multipletests`` for Holm). Failed runs count by the study's policy
(docs/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from workflow.analysis.sequential_verdict import sequential_decisions
from workflow.analysis.stats import (
    compare_to_baseline,
    describe,
    holm_adjust,
    metric_view,
    one_sample_ttest,
    val_losses_by_seed,
)
from workflow.study.gate_rules.base import fmt_p


def decide_verdict(
    summaries: Mapping[str, dict],
    baseline: str,
    settings: Mapping,
    vocab_size: int | None = None,
    seeds: list[int] | None = None,
) -> dict:
    """Significance verdict of the last stage.

    For each variant: a one-sided test against the baseline (H1: the variant's mean val_loss
    is lower; ``settings["test"]``: ``paired`` = ``scipy.stats.ttest_rel`` on the seed-matched
    runs, ``welch`` = ``ttest_ind(equal_var=False)``) and, for every variant and the baseline,
    a one-sided one-sample t-test against ``target_val_loss`` (H1: mean < target). Each
    family's p-values are Holm-adjusted over the variants it tests (``correction: holm``,
    statsmodels ``multipletests``); a test passes when the adjusted p < ``alpha``.

    Args:
        summaries: variant -> summary.json of the last stage.
        baseline: the baseline's name.
        settings: the study's ``verdict`` section with schema defaults: ``alpha``,
            ``target_val_loss`` (None: no target test), ``test``, ``correction``, ``winners``
            (``baseline`` | ``target`` | ``both``), ``failed_run_policy`` (``disqualify`` |
            ``penalty``), ``penalty_val_loss`` (None: ln(vocab_size)), ``metric`` (``val_loss``
            | ``val_loss_workers``: the final loss compared, :func:`workflow.analysis.stats.metric_view`;
            missing = val_loss).
        vocab_size: the dataset's vocabulary size (for the default penalty).
        seeds: the last stage's seeds in order (``verdict.sequential``: look k uses the first
            ``looks[k]``); None: the seeds the runs have, sorted.
    With ``settings["sequential"]`` (``{looks, spending, futility}``) the decisions are the
    group-sequential design's (:mod:`workflow.analysis.sequential_verdict`): each entry gets
    ``sequential: {decision, look, seeds, reason, p_values, rejected_look}``, its
    ``p_value_adjusted`` is None, and the verdict gets ``sequential`` (design, looks seen).
    Returns:
        ``{"baseline", "alpha", "target_val_loss", "test", "correction", "winners_rule",
        "failed_run_policy", "penalty_val_loss", "results": [{variant, n, failed_runs, mean, std,
        ci_95, vs_baseline: {..., p_value, p_value_adjusted}, vs_target: {...}, beats_baseline,
        beats_target, disqualified, winner, verdict}], "winners": [...], "explanation"}``.
    Raises:
        ValueError: ``winners`` needs a target but ``target_val_loss`` is None; penalty policy
            without a penalty loss or vocab_size.
    """
    alpha, target = settings["alpha"], settings["target_val_loss"]
    test, correction, rule = settings["test"], settings["correction"], settings["winners"]
    policy = settings["failed_run_policy"]
    if rule in ("target", "both") and target is None:
        raise ValueError(f"verdict.winners: {rule!r} needs verdict.target_val_loss (it is null)")
    penalty = None
    if policy == "penalty":
        penalty = settings.get("penalty_val_loss")
        if penalty is None:
            if not vocab_size:
                raise ValueError("verdict.failed_run_policy penalty: set penalty_val_loss or pass the dataset's vocab_size")
            penalty = math.log(vocab_size)
    metric = settings.get("metric", "val_loss")
    summaries = {name: metric_view(summ, metric) for name, summ in summaries.items()}
    base = summaries.get(baseline)
    base_losses = val_losses_by_seed(base, penalty) if base else {}
    results = []
    for name, summ in summaries.items():
        losses = val_losses_by_seed(summ, penalty)
        described = describe(list(losses.values()))  # with the penalty policy, failed runs included
        failed = summ["failed_runs"]
        entry = {
            "variant": name,
            "n": len(losses),
            "n_runs": summ["n_runs"],
            "failed_runs": failed,
            "excluded_runs": summ.get("excluded_runs", []),
            **{k: described[k] for k in ("mean", "std", "ci_95")},
            "vs_target": one_sample_ttest(list(losses.values()), target, "less") if target is not None else None,
            "vs_baseline": None if name == baseline else compare_to_baseline(losses, base_losses, test),
            "disqualified": policy == "disqualify" and bool(failed),
            "seed_ignored": summ.get("seed_ignored_reason") if summ.get("seed_ignored") else None,  # a script that ignores the seed
        }
        if summ.get("mixed_versions"):  # the script or an input changed between its runs
            entry["mixed_versions"] = summ["mixed_versions"]
        results.append(entry)
    # Holm over each family: variants vs the baseline; every tested variant vs the target.
    for key, members in (("vs_baseline", [e for e in results if e["vs_baseline"]]), ("vs_target", [e for e in results if e["vs_target"]])):
        raw = [e[key]["p_value"] for e in members]
        adjusted = holm_adjust(raw, alpha) if correction == "holm" else raw
        for e, p_adj in zip(members, adjusted):
            e[key]["p_value_adjusted"] = p_adj
            e[key]["family_size"] = sum(p is not None for p in raw)
    seq = None
    if settings.get("sequential"):
        if seeds is None:
            seeds = sorted({run["seed"] for summ in summaries.values() for run in summ["runs"]})
        seq = sequential_decisions(
            {name: val_losses_by_seed(summ, penalty) for name, summ in summaries.items()},
            {name: {run["seed"] for run in summ["runs"]} for name, summ in summaries.items()},
            {name: summ["failed_runs"] for name, summ in summaries.items()}, baseline, settings, seeds)
        for e in results:
            for key in ("vs_baseline", "vs_target"):
                if e[key]:
                    e[key]["p_value_adjusted"] = None
            e["sequential"] = seq["variants"].get(e["variant"])
    base_failure = baseline_failure(base, baseline, base_losses)
    for e in results:
        p_base = (e["vs_baseline"] or {}).get("p_value_adjusted")
        p_target = (e["vs_target"] or {}).get("p_value_adjusted")
        e["beats_target"] = p_target is not None and p_target < alpha
        if seq is not None and e["sequential"]:
            e["beats_target"] = e["sequential"]["rejected_look"].get("vs_target") is not None
        if e["variant"] == baseline:
            e["beats_baseline"] = None
            e["winner"] = False
            e["verdict"] = ("reference" + (f"; {base_failure}" if base_failure else "")
                            + (f"; {e['seed_ignored']}" if e["seed_ignored"] else ""))
            continue
        e["beats_baseline"] = p_base is not None and p_base < alpha
        if seq is not None:
            e["beats_baseline"] = e["sequential"]["rejected_look"].get("vs_baseline") is not None
        needed = {"baseline": [e["beats_baseline"]], "target": [e["beats_target"]], "both": [e["beats_baseline"], e["beats_target"]]}[rule]
        base_entry = next((b for b in results if b["variant"] == baseline), None)
        base_ignores = base_entry is not None and base_entry["seed_ignored"]
        mixed = e.get("mixed_versions") or (base_entry or {}).get("mixed_versions")
        e["winner"] = (all(needed) and not e["disqualified"] and not e["seed_ignored"] and not base_ignores
                       and not mixed)
        parts = []
        if seq is not None:
            parts.append(sequential_text(e, baseline, test, seq))
        elif p_base is None:
            parts.append(f"not testable against {baseline} ({base_failure or untestable_reason(e, test, baseline)})")
        else:
            raw = e["vs_baseline"]["p_value"]
            verb = "significantly better than" if e["beats_baseline"] else "not significantly better than"
            parts.append(f"{verb} {baseline} ({test}, p={fmt_p(raw)}, {correction}-adjusted p={fmt_p(p_base)}, alpha {alpha})")
        if target is not None and seq is None:
            verb = "below" if e["beats_target"] else "not significantly below"
            parts.append(f"{verb} target {target} (adjusted p={fmt_p(p_target)})")
        if e["disqualified"]:
            parts.append(
                f"cannot win: {len(e['failed_runs'])} of {e['n_runs']} seeds failed ({e['failed_runs'][0]['reason']}); "
                "a failed seed is a result of the variant (failed_run_policy: disqualify)"
            )
        elif e["seed_ignored"] or base_ignores:  # a script that ignores the seed: no winner on repeats that prove nothing
            who = e["seed_ignored"] if e["seed_ignored"] else f"{baseline}: {base_entry['seed_ignored']}"
            parts.append(f"cannot win: {who}")
        elif mixed:
            who = e.get("mixed_versions") or f"{baseline}: {base_entry['mixed_versions']}"
            parts.append(f"cannot win: {who}")
        elif not e["winner"]:
            parts.append(f"not a winner (winners: {rule})")
        e["verdict"] = ("WINNER: " if e["winner"] else "") + "; ".join(parts)
    results.sort(key=lambda e: (e["variant"] != baseline, e["mean"] if e["mean"] is not None else float("inf")))
    n_tested = sum(1 for e in results if e["vs_baseline"] is not None)
    if n_tested:
        target_text = (
            f" and a one-sided one-sample t-test against target_val_loss {target}" if target is not None else ""
        )
        need = {"baseline": f"beat {baseline}", "target": "beat the target", "both": f"beat {baseline} and the target"}[rule]
        explanation = (
            f"One-sided {test} t-test of each of the {n_tested} variants against {baseline}{target_text} (scipy.stats); "
            f"p-values {'Holm-adjusted over the variants tested (statsmodels)' if correction == 'holm' else 'not adjusted'}, "
            f"significant at adjusted p < {alpha}. A winner must {need} significantly"
            + (" and have no failed seed." if policy == "disqualify" else f"; failed runs count at val_loss {penalty:.4g}.")
        )
    else:
        explanation = "No variant reached the last stage: nothing to test against the baseline."
    if seq is not None and n_tested:
        d = seq["design"]
        explanation = explanation.replace(
            f"p-values {'Holm-adjusted over the variants tested (statsmodels)' if correction == 'holm' else 'not adjusted'}, "
            f"significant at adjusted p < {alpha}", f"decisions at the looks' boundaries, family-wise error {alpha}")
        explanation += (
            f" Group-sequential: looks after {', '.join(map(str, d['looks']))} seeds, {d['spending']} alpha spending "
            f"(Lan-DeMets), Holm across variants by Maurer & Bretz (2013)"
            + (f", non-binding futility below conditional power {d['futility']}" if d["futility"] is not None else "")
            + f"; each decision names its look. Looks seen: {seq['looks_seen']} of {len(d['looks'])}.")
    if base_failure and n_tested:
        explanation = f"No variant can be tested against {baseline}: {base_failure}. " + explanation
    return {
        "baseline": baseline,
        "alpha": alpha,
        "target_val_loss": target,
        "test": test,
        "correction": correction,
        "winners_rule": rule,
        "failed_run_policy": policy,
        "penalty_val_loss": penalty,
        "metric": metric,
        "results": results,
        "winners": [e["variant"] for e in results if e["winner"]],
        **({"sequential": {k: seq[k] for k in ("design", "looks_seen", "open")}} if seq is not None else {}),
        "explanation": explanation if metric == "val_loss" else
        f"Metric: {metric} (the mean of the workers' own models' final val_loss). {explanation}",
    }


def sequential_text(entry: dict, baseline: str, test: str, seq: dict) -> str:
    """A variant's sequential decision in words: the look, its seeds and p-values."""
    info = entry["sequential"]
    if info is None:
        return f"not testable against {baseline}"
    looks = seq["design"]["looks"]
    ps = ", ".join(f"look {k + 1} ({looks[k]} seeds) p={fmt_p(x)}" for k, x in enumerate(info["p_values"].get("vs_baseline", [])))
    when = f"decided at look {info['look']} of {len(looks)}" if info["look"] else "open"
    verb = {"winner": "significantly better than", "not_winner": "not significantly better than",
            "open": "not yet decided against"}[info["decision"]] if info["rejected_look"].get("vs_baseline") is None \
        else "significantly better than"
    return f"{verb} {baseline} ({test}; {ps}; {when}: {info['reason']})"


def baseline_failure(base: dict | None, baseline: str, base_losses: Mapping[int, float]) -> str | None:
    """Why the baseline gives the tests nothing to compare with (None: it has 2 or more runs that count).

    ``the baseline 'b' failed on every seed (3 of 3: diverged ...)`` when no run of it counts."""
    if base is None:
        return f"the baseline {baseline!r} has no summary in the last stage"
    if len(base_losses) >= 2:
        return None
    failed = base.get("failed_runs") or []
    reason = f": {failed[0]['reason']}" if failed else ""
    if not base_losses:
        return f"the baseline {baseline!r} failed on every seed ({len(failed)} of {base['n_runs']}{reason})"
    return f"the baseline {baseline!r} has only {len(base_losses)} run that counts ({len(failed)} of {base['n_runs']} failed{reason})"


def untestable_reason(entry: dict, test: str, baseline: str = "the baseline") -> str:
    """Why a variant's test against a baseline that has runs gave no p-value: too few runs, a
    script that ignores the seed, zero-variance differences, too few pairs."""
    if entry["n"] < 2:
        return f"the variant has {entry['n']} run(s) that count, fewer than 2"
    if entry.get("seed_ignored"):
        return entry["seed_ignored"]
    vs = entry.get("vs_baseline") or {}
    if test == "paired" and (vs.get("n_pairs") or 0) >= 2:
        return (f"its {vs['n_pairs']} per-seed differences from {baseline} are all equal ({vs['mean_difference']:+.6g}): "
                "zero variance, so a t-test gives no p-value; the seeds change nothing that differs between the two")
    if test == "welch" and (entry.get("std") == 0.0):
        return f"its losses have zero variance over {entry['n']} runs: Welch's t-test gives no p-value"
    return f"fewer than 2 {'seed-matched pairs' if test == 'paired' else 'successful runs on one side'}"


def verdict_markdown(verdict: dict) -> str:
    """The verdict as Markdown: explanation, winners and a table (pandas ``to_markdown``) with
    raw and adjusted p-values."""
    rows = []
    has_target = verdict["target_val_loss"] is not None
    for e in verdict["results"]:
        row = {
            "variant": e["variant"],
            "n": e["n"],
            "failed": len(e["failed_runs"]),
            "mean val_loss": e["mean"],
            "std": e["std"],
            "p vs baseline": (e["vs_baseline"] or {}).get("p_value"),
            "adjusted p vs baseline": (e["vs_baseline"] or {}).get("p_value_adjusted"),
        }
        if e.get("sequential"):  # verdict.sequential: the look it was decided at
            row["decided at look"] = e["sequential"]["look"]
        if has_target:
            row["p vs target"] = (e["vs_target"] or {}).get("p_value")
            row["adjusted p vs target"] = (e["vs_target"] or {}).get("p_value_adjusted")
        row["verdict"] = e["verdict"]
        rows.append(row)
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g") if rows else "(no runs)"
    winners = ", ".join(verdict["winners"]) or "none"
    return f"# Verdict\n\n{verdict['explanation']}\n\nWinners: **{winners}**\n\n{table}\n"
