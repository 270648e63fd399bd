"""Gate decisions between stages and the final verdict.

The library part; the CLI is ``python -m workflow.gates`` (workflow/gates.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from workflow.analysis.stats import compare_to_baseline, metric_view, val_losses_by_seed
from workflow.study.gate_rules import gate_rule


def decide_gate(
    stage: str, gate: Mapping, summaries: Mapping[str, dict], baseline: str, test: str = "paired"
) -> dict:
    """Decide which variants of ``stage`` advance to the next stage.

    Args:
        stage: stage name, e.g. ``"A"``.
        gate: the stage's gate section with schema defaults filled: ``{"rule": a name of
            :data:`workflow.study.gate_rules.GATE_RULES`, "metric": "val_loss" | "val_loss_workers",
            "k", "min_successful_runs", "tie_tolerance", "max_failed_fraction", "pivot"}``
            (missing keys raise KeyError: defaults live in config/schema.yaml only). ``metric``
            is the final loss compared (:func:`workflow.analysis.stats.metric_view`); the
            ranking's ``mean`` / ``std`` / ``ci_95`` are of it.
        summaries: variant name -> its summary.json dict for this stage (the baseline included,
            when it ran in this stage).
        baseline: name of the baseline variant.
        test: test of the reported p-value against the baseline (``"paired"`` or ``"welch"``).
    Returns:
        ``{"stage", "rule", "params", "baseline", "advanced": [names], "carried": [baseline],
        "ranking": [{variant, mean, std, ci_95, successful_runs, n_runs, failed_runs,
        failed_fraction, eligible, advanced, reason, p_vs_baseline}], "failed_runs": {variant:
        [...]}, "explanation": str}``.
    Raises:
        ValueError: unknown rule.
    """
    rule = gate["rule"]
    rule_impl = gate_rule(rule)
    params = {k: v for k, v in gate.items() if k != "rule"}
    metric = params.get("metric", "val_loss")
    summaries = {name: metric_view(summ, metric) for name, summ in summaries.items()}
    min_ok, max_failed = params["min_successful_runs"], params["max_failed_fraction"]
    base_summary = summaries.get(baseline)
    base_losses = val_losses_by_seed(base_summary) if base_summary else {}
    rows = []
    for name, summ in summaries.items():
        failed = len(summ["failed_runs"])
        frac = failed / summ["n_runs"] if summ["n_runs"] else 0.0
        row = {
            "variant": name,
            "mean": summ["val_loss"]["mean"],
            "std": summ["val_loss"]["std"],
            "ci_95": summ["val_loss"]["ci_95"],
            "successful_runs": summ["successful_runs"],
            "n_runs": summ["n_runs"],
            "failed_runs": summ["failed_runs"],
            "failed_fraction": frac,
            "eligible": True,
            "advanced": False,
            "reason": "",
            "p_vs_baseline": None,
        }
        if summ["successful_runs"] < min_ok:
            row["eligible"] = False
            row["reason"] = (
                f"only {summ['successful_runs']} of {summ['n_runs']} runs succeeded (< min_successful_runs={min_ok}): "
                "variance cannot be estimated, not eligible"
            )
        elif frac > max_failed + 1e-12:
            row["eligible"] = False
            row["reason"] = (
                f"{failed} of {summ['n_runs']} runs failed ({frac:.0%} > max_failed_fraction={max_failed:.0%}; "
                f"{summ['failed_runs'][0]['reason']}): a failed seed is a result of the variant, not eligible"
            )
        if summ.get("seed_ignored"):  # a script that ignores the seed: said in the reason; no CI and no winner on such repeats
            row["seed_ignored"] = summ["seed_ignored_reason"]
            row["script_runs"] = bool(summ.get("script_runs"))
        if summ.get("mixed_versions") and row["eligible"]:  # the script or an input changed between its runs
            row["eligible"] = False
            row["reason"] = f"not eligible: {summ['mixed_versions']}"
        if name != baseline and base_losses and row["eligible"]:
            row["p_vs_baseline"] = compare_to_baseline(val_losses_by_seed(summ), base_losses, test)["p_value"]
        rows.append(row)
    others = [r for r in rows if r["variant"] != baseline]
    for row in others:  # a script's repeats that prove nothing do not advance, unless nothing else could
        if row.get("seed_ignored") and row["script_runs"] and row["eligible"] and len(others) > 1:
            row["eligible"] = False
            row["reason"] = "not eligible (other variants can advance)"
    by_name = {row["variant"]: row for row in rows}
    base_row = by_name.get(baseline)
    base_ok = base_row is not None and base_row["successful_runs"] >= min_ok
    if base_row is not None:
        base_row["reason"] = "baseline: runs in every stage as the reference" + (
            "" if base_row["eligible"] else f"; {base_row['reason']}"
        )

    candidates = sorted(
        (r for r in rows if r["eligible"] and r["variant"] != baseline),
        # Means are compared at 1e-9 so float round-off (1.8 vs 1.7999999999999998) is a tie.
        key=lambda r: (round(r["mean"], 9), r["std"] if r["std"] is not None else float("inf"), r["variant"]),
    )
    eligibility = (
        f"Variants need >= {min_ok} successful runs and at most {max_failed:.0%} failed runs to be eligible."
    )
    if rule_impl.needs_baseline and not base_ok:
        for row in candidates:
            row["reason"] = "baseline has too few successful runs to compare with: nothing advances"
        explanation = f"{rule}: no eligible baseline in this stage, so no variant can advance."
    else:
        rule_impl.decide(candidates, base_row, params, test)
        explanation = rule_impl.explanation(params, eligibility)

    for row in rows:  # the seed-ignoring script variants (and baseline) say so
        if row.get("seed_ignored"):
            if rule_impl.compares_intervals and row["advanced"]:
                row["advanced"] = False
                row["reason"] += "; not advanced: a confidence interval of identical repeats means nothing"
            row["reason"] += f"; {row['seed_ignored']}"
    if rule_impl.compares_intervals and base_row is not None and base_row.get("seed_ignored"):
        for row in candidates:
            if row["advanced"]:
                row["advanced"] = False
                row["reason"] += "; not advanced: the baseline's repeats are identical (it ignores the seed)"

    order = {row["variant"]: i for i, row in enumerate(candidates)}
    rows.sort(key=lambda r: (r["variant"] != baseline, order.get(r["variant"], len(order)), r["variant"]))
    return {
        "stage": stage,
        "rule": rule,
        "params": params,
        "test": test,
        "baseline": baseline,
        "advanced": [row["variant"] for row in candidates if row["advanced"]],
        "carried": [baseline],
        "ranking": rows,
        "failed_runs": {row["variant"]: row["failed_runs"] for row in rows if row["failed_runs"]},
        "explanation": explanation if metric == "val_loss" else
        f"metric {metric} (the mean of the workers' own models' val_loss) in place of val_loss. {explanation}",
    }


def stage_cost_usd(summaries: Mapping[str, dict], hour_usd: float) -> tuple[float, int]:
    """Measured dollars and runs of a stage's summaries.

    Args:
        summaries: the stage's summary.json dicts.
        hour_usd: price of one GPU-hour of the stage's gpu_model (GPU stages), or of one
            process-hour (CPU stages, ``cost.cpu_hour_usd``).
    Returns:
        (dollars, runs): GPU-hours (or process-hours when no run used a GPU) x ``hour_usd``.
    """
    dollars, runs = 0.0, 0
    for summ in summaries.values():
        hours = summ["gpu_hours_total"] if summ["gpu_hours_total"] > 0 else summ["process_hours_total"]
        dollars += hours * hour_usd
        runs += summ["n_runs"]
    return dollars, runs


def choose_pivot(decision: dict, previous: dict, seeds: int, run_cost_usd: float, reserve_usd: float) -> dict | None:
    """The pivot of a gate that advanced nothing: the next-best variant of the previous gate.

    Args:
        decision: this stage's gate decision (:func:`decide_gate`).
        previous: the previous stage's gate decision.
        seeds: runs the pivot variant needs in this stage.
        run_cost_usd: estimated dollars of one run of this stage (measured mean).
        reserve_usd: ``cost.reserve_usd``.
    Returns:
        None when the gate advanced something or pivots are off; else ``{"variant", "run",
        "cost_usd", "reserve_usd", "reason"}`` (``variant`` None when there is no candidate;
        ``run`` False when there is none or its cost exceeds the reserve).
    """
    if decision["advanced"] or not decision["params"].get("pivot"):
        return None
    tried = set(previous["advanced"]) | {previous["baseline"]}
    candidates = [r["variant"] for r in previous["ranking"] if r["eligible"] and r["variant"] not in tried]
    if not candidates:
        return {"variant": None, "run": False, "cost_usd": 0.0, "reserve_usd": reserve_usd,
                "reason": f"no variant of stage {previous['stage']} is left to pivot to"}
    variant = candidates[0]
    cost = run_cost_usd * seeds
    run = cost <= reserve_usd + 1e-9
    reason = (
        f"no variant passed gate {decision['stage']}: pivot to {variant}, the next-best of stage {previous['stage']}; "
        f"{seeds} runs at ~${run_cost_usd:.2f} = ${cost:.2f} "
        + ("fit in" if run else "exceed")
        + f" the reserve ${reserve_usd:.2f}"
        + ("" if run else ": not run")
    )
    return {"variant": variant, "run": run, "cost_usd": cost, "reserve_usd": reserve_usd, "reason": reason}
