"""Stage tables and compute accounting for the report (pandas).

The library part; the CLI is ``python -m workflow.tables`` (workflow/tables.py).
"""

from __future__ import annotations

import pandas as pd

from workflow.analysis.compute_plan import stage_hardware
from workflow.analysis.stats import compare_to_baseline, val_losses_by_seed
from workflow.core.io import atomic_write, write_text_atomic
from workflow.data.registry import study_meta_path
from workflow.study.length import model_block_size, run_steps, study_train_tokens
from workflow.study.resolve import run_config, stage_order, stage_seeds
from workflow.optim.schedules import tokens_for_steps


def stage_table(stage: str, summaries: list[dict], baseline: str, decision: dict | None, test: str = "paired") -> pd.DataFrame:
    """One row per variant of a stage: val_loss mean, std, CI95, min/median/max, runs (failed,
    excluded), time, tokens and FLOPs per run, bytes_per_token (when the trainer reported
    communication), the one-sided p-value against the baseline (``test``: paired or welch; H1:
    lower loss), at the last stage also the verdict's Holm-adjusted p-value, and what the gate
    (or verdict) decided.

    Args:
        stage: stage name.
        summaries: summary.json dicts of the stage's variants.
        baseline: baseline variant name.
        decision: the stage's gate decision, or the verdict for the last stage, or None.
        test: ``"paired"`` or ``"welch"`` (the study's verdict.test).
    Returns:
        DataFrame sorted with the baseline first, then by mean val_loss.
    """
    base = next((s for s in summaries if s["variant"] == baseline), None)
    base_losses = val_losses_by_seed(base) if base else {}
    outcome: dict[str, str] = {}
    adjusted: dict[str, float | None] = {}
    if decision and "ranking" in decision:
        outcome = {r["variant"]: ("advanced" if r["advanced"] else "stopped") for r in decision["ranking"]}
        outcome[baseline] = "baseline"
    elif decision and "results" in decision:
        outcome = {r["variant"]: r["verdict"] for r in decision["results"]}
        adjusted = {r["variant"]: (r["vs_baseline"] or {}).get("p_value_adjusted") for r in decision["results"]}
    rows = []
    for summ in summaries:
        vl = summ["val_loss"]
        ci = vl["ci_95"] or [None, None]
        p = None if summ["variant"] == baseline else compare_to_baseline(val_losses_by_seed(summ), base_losses, test)["p_value"]
        n = summ["n_runs"] or 1
        row = {
            "stage": stage,
            "variant": summ["variant"],
            "runs": summ["n_runs"],
            "successful_runs": summ["successful_runs"],
            "failed_runs": len(summ["failed_runs"]),
            "excluded_runs": len(summ.get("excluded_runs", [])),
            "val_loss_mean": vl["mean"],
            "val_loss_std": vl["std"],
            "ci95_low": ci[0],
            "ci95_high": ci[1],
            "val_loss_min": vl["min"],
            "val_loss_median": vl["median"],
            "val_loss_max": vl["max"],
            f"p_vs_baseline ({test})": p,
        }
        if adjusted:
            row["p_vs_baseline_holm"] = adjusted.get(summ["variant"])
        row.update({
            "time_mean_s": summ["time_seconds"]["mean"],
            "time_std_s": summ["time_seconds"]["std"],
            "time_total_s": summ["time_seconds"]["total"],
            # "unknown" where a training script reported no tokens / FLOPs
            "tokens_per_run": "unknown" if summ.get("tokens_unknown_runs") else summ["tokens_seen_total"] / n,
            "flops_per_run": "unknown" if summ.get("flops_unknown_runs") else summ.get("flops_total", 0.0) / n,
        })
        if summ.get("seed_ignored"):
            row["seed_ignored"] = summ["seed_ignored_reason"]
        if any(s.get("bytes_per_token") is not None for s in summaries):
            row["bytes_per_token"] = summ.get("bytes_per_token")
        row["outcome"] = outcome.get(summ["variant"], "")
        rows.append(row)
    columns = list(rows[0]) if rows else ["stage", "variant"]
    frame = pd.DataFrame(rows, columns=columns)
    if rows:
        frame["_order"] = frame["variant"] != baseline
        frame = frame.sort_values(["_order", "val_loss_mean"], na_position="last").drop(columns="_order")
    return frame.reset_index(drop=True)


def _hours(summ: dict, unit: str) -> float:
    return summ.get("gpu_hours_total", 0.0) if unit == "gpu" else summ.get("process_hours_total", 0.0)


def compute_table(summaries: list[dict], plan: dict) -> tuple[pd.DataFrame, list[str]]:
    """Compute spent per stage against the naive plan, in FLOPs, GPU-hours and dollars.

    Staged: per stage the runs' FLOPs (the trainer's ``flops``: ``flops_per_token`` x the tokens
    actually seen, a curriculum's shorter sequences included, summed over a run's resumed
    attempts), GPU-hours (``train_time`` x GPUs; CPU stages: process-hours) and dollars (hours x
    the stage's price). Naive: every variant with the last stage's seeds and length,
    extrapolated per variant from FLOPs: its measured FLOPs per token (latest stage it ran) x
    the last stage's tokens per run x seeds; hours = those FLOPs / the FLOPs per hour measured at
    the last stage (not stage A's wall time with its start-up costs); dollars at its price.

    Args:
        summaries: summary.json dicts of every (stage, variant) that ran.
        plan: :func:`naive_compute`'s dict.
    Returns:
        (frame, warnings): one row per stage, ``staged total``, ``naive (all variants at final
        stage)`` and ``saving`` (1 - staged / naive, per unit); warnings when staging cost more.
    """
    rows = []
    prices = plan["prices"]
    for stage in plan["stages"]:
        ss = [s for s in summaries if s["stage"] == stage]
        unit = prices[stage]["unit"]
        hours = sum(_hours(s, unit) for s in ss)
        rows.append({
            "stage": stage,
            "variants": len(ss),
            "runs": sum(s["n_runs"] for s in ss),
            "tokens": sum(s["tokens_seen_total"] - s.get("inherited_tokens_total", 0) for s in ss),  # continued runs: own steps
            "flops": sum(s.get("flops_total", 0.0) for s in ss),
            "gpu_hours": sum(s.get("gpu_hours_total", 0.0) for s in ss),
            "process_hours": sum(s.get("process_hours_total", 0.0) for s in ss),
            "usd": hours * prices[stage]["hour_usd"],
            "process_seconds": sum(s["process_seconds_total"] for s in ss),
        })
    keys = ("runs", "tokens", "flops", "gpu_hours", "process_hours", "usd", "process_seconds")
    total = {"stage": "staged total", "variants": len({s["variant"] for s in summaries}),
             **{k: sum(r[k] for r in rows) for k in keys}}

    final = plan["final_stage"]
    final_unit = prices[final]["unit"]
    order = {stage: i for i, stage in enumerate(plan["stages"])}
    latest: dict[str, dict] = {}
    for summ in sorted(summaries, key=lambda s: order.get(s["stage"], -1)):
        if summ["tokens_seen_total"]:
            latest[summ["variant"]] = summ
    # FLOPs per hour at the last stage (or the latest stage that ran) turn naive FLOPs into hours.
    rate_stage = next((st for st in reversed(plan["stages"]) if any(s["stage"] == st for s in summaries)), None)
    rate_summaries = [s for s in summaries if s["stage"] == rate_stage]
    rate_hours = sum(_hours(s, final_unit) for s in rate_summaries)
    flops_per_hour = sum(s.get("flops_total", 0.0) for s in rate_summaries) / rate_hours if rate_hours else None
    naive_flops, naive_tokens, missing = 0.0, 0, []
    for variant, spec in plan["naive"].items():
        measured = latest.get(variant)
        if measured is None or not measured.get("flops_total"):
            missing.append(variant)
            continue
        tokens = spec["tokens_per_run"]
        if tokens is None:  # length from the data (num_epochs): the variant's measured tokens per run
            tokens = measured["tokens_seen_total"] / measured["n_runs"]
        naive_tokens += tokens * spec["runs"]
        per_token = (measured["flops_total"] + measured.get("inherited_flops_total", 0.0)) / measured["tokens_seen_total"]
        naive_flops += per_token * tokens * spec["runs"]
    naive_hours = naive_flops / flops_per_hour if flops_per_hour else 0.0
    naive = {
        "stage": "naive (all variants at final stage)",
        "variants": len(plan["naive"]),
        "runs": sum(spec["runs"] for spec in plan["naive"].values()),
        "tokens": naive_tokens,
        "flops": naive_flops,
        "gpu_hours": naive_hours if final_unit == "gpu" else 0.0,
        "process_hours": naive_hours if final_unit == "process" else None,
        "usd": naive_hours * prices[final]["hour_usd"],
        "process_seconds": None,
    }
    saving = {"stage": "saving (1 - staged / naive)", "variants": None}
    for k in ("runs", "tokens", "flops", "gpu_hours", "process_hours", "usd"):
        saving[k] = 1.0 - total[k] / naive[k] if naive[k] else None
    frame = pd.DataFrame([*rows, total, naive, saving])
    frame["fraction_of_naive_flops"] = [r["flops"] / naive_flops if naive_flops and r["flops"] is not None else None
                                        for r in [*rows, total, naive, saving]]
    frame.loc[frame.index[-1], "fraction_of_naive_flops"] = None
    # a script that reports no tokens / FLOPs leaves them "unknown", never a made-up 0
    unknown = {"flops": "flops_unknown_runs", "tokens": "tokens_unknown_runs"}
    for key, count in unknown.items():
        stages = [i for i, stage in enumerate(plan["stages"])
                  if any(s.get(count) for s in summaries if s["stage"] == stage)]
        if stages:
            frame[key] = frame[key].astype(object)
            for i in [*stages, len(rows), len(rows) + 1, len(rows) + 2]:  # those stages, total, naive, saving
                frame.loc[frame.index[i], key] = "unknown"
            if key == "flops":  # the naive plan extrapolates from FLOPs: its hours and dollars are unknown too
                for other in ("gpu_hours", "process_hours", "usd"):
                    frame[other] = frame[other].astype(object)
                    for i in (len(rows) + 1, len(rows) + 2):
                        frame.loc[frame.index[i], other] = "unknown"
                frame["fraction_of_naive_flops"] = frame["fraction_of_naive_flops"].astype(object)
                for i in [*stages, len(rows)]:
                    frame.loc[frame.index[i], "fraction_of_naive_flops"] = None
    warnings = []
    dearer = [k for k in ("flops", "gpu_hours", "process_hours", "usd")
              if naive[k] and total[k] > naive[k]]
    if dearer:
        warnings.append(
            "staging cost MORE than running every variant at the last stage in " + ", ".join(dearer)
            + f" ({', '.join(f'{total[k]:.4g} vs {naive[k]:.4g}' for k in dearer)}); see docs/statistics.md, "
            "'When staging pays off'"
        )
    if missing:
        warnings.append(f"naive plan without {', '.join(missing)}: no FLOPs measured for them")
    return frame, warnings


def naive_compute(config: dict) -> dict:
    """What running every variant with the final stage's seeds and length would take, and the
    price of every stage (what :func:`compute_table` needs; computed where Snakemake runs).

    Returns:
        ``{"stages", "first_stage", "final_stage", "naive": {variant: {"runs", "tokens_per_run"}},
        "prices": {stage: {"unit": "gpu" | "process", "hour_usd"}}}``; tokens per run =
        ``batch_size x`` each step's sequence length over the final stage's run
        (workflow.optim.schedules.tokens_for_steps), None when the length needs the data (num_epochs).
    """

    stages = stage_order(config)
    final = stages[-1]
    train_tokens = study_train_tokens(study_meta_path(config))
    naive = {}
    for variant in config["variants"]:
        cfg = run_config(config, final, variant, stage_seeds(config, final)[0])
        train = cfg["train"]
        block_size = model_block_size(cfg["model"])
        tokens = None
        n = run_steps(cfg, train_tokens)
        if n is not None and "trainer" not in cfg:  # a script's tokens are what it reports
            tokens = tokens_for_steps({**train, "num_iterations": n}, block_size, n)
        naive[variant] = {"runs": config["stages"][final]["seeds"], "tokens_per_run": tokens}
    # one source of prices: the compute plan's stage hardware (workflow.analysis.compute_plan)
    prices = {}
    for stage in stages:
        hardware = stage_hardware(config, stage)
        prices[stage] = {"unit": hardware["unit"], "hour_usd": hardware["hour_usd"]}
    return {"stages": stages, "first_stage": stages[0], "final_stage": final, "naive": naive, "prices": prices}


def write_frame(frame: pd.DataFrame, csv_path: str, md_path: str, title: str, notes: list[str] = ()) -> None:
    """Write ``frame`` atomically as CSV (``csv_path``) and as a Markdown table under ``title``
    with ``notes`` below it (``md_path``)."""
    with atomic_write(csv_path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)
    shown = frame.copy()
    for column in shown.columns:  # columns with "unknown" cells (script runs): their numbers as floatfmt would
        if shown[column].dtype == object:
            shown[column] = [f"{v:.4g}" if isinstance(v, float) else v for v in shown[column]]
    body = shown.to_markdown(index=False, floatfmt=".4g") if len(frame) else "(no runs)"
    extra = "".join(f"\n{note}\n" for note in notes)
    write_text_atomic(md_path, f"# {title}\n\n{body}\n{extra}")
