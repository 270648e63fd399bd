"""The verdict's group-sequential decisions (``verdict.sequential``) from the last stage's runs.

At look k (``looks[k]`` seeds per variant) every variant's one-sided test against the
baseline (and against ``target_val_loss`` when the winners need it) is recomputed on its
first ``looks[k]`` seeds (the stage's seeds in order), and
:func:`workflow.analysis.sequential.sequential_holm` decides who is a winner, who is not
(futility, or a failed seed under ``failed_run_policy: disqualify``) and who stays open.
The decisions of earlier looks are recomputed from the same runs, so a look's checkpoint
(``looks/look_<k>.json``) and the final verdict agree. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from workflow.analysis.sequential import design_summary, sequential_holm
from workflow.analysis.stats import compare_to_baseline, one_sample_ttest


def look_p_values(losses: Mapping[str, Mapping[int, float]], ran: Mapping[str, set], baseline: str,
                  seeds: Sequence[int], looks: Sequence[int], test: str, target: float | None) -> dict:
    """One-sided p-values per look: ``{"vs_baseline": {variant: [p per look]}, "vs_target": {...}}``.

    Args:
        losses: variant -> seed -> val_loss that counts (failed runs dropped, or at the penalty).
        ran: variant -> the seeds it ran (counted or not): a look needs all of its seeds run.
        seeds: the last stage's seeds in order; look k uses the first ``looks[k]``.
    NaN where a variant did not run the look's seeds or the test had no p-value.
    """
    out: dict[str, dict[str, list[float]]] = {"vs_baseline": {}, "vs_target": {}}
    for name in losses:
        by_look_base, by_look_target = [], []
        for n in looks:
            done = set(seeds[:n]) <= ran[name] and len(seeds) >= n
            mine = {s: v for s, v in losses[name].items() if s in set(seeds[:n])}
            base = {s: v for s, v in losses.get(baseline, {}).items() if s in set(seeds[:n])}
            base_done = set(seeds[:n]) <= ran.get(baseline, set())
            p = None
            if done and base_done and name != baseline:
                p = compare_to_baseline(mine, base, test)["p_value"]
            by_look_base.append(np.nan if p is None else p)
            q = one_sample_ttest(list(mine.values()), target, "less")["p_value"] if (done and target is not None) else None
            by_look_target.append(np.nan if q is None else q)
        if name != baseline:
            out["vs_baseline"][name] = by_look_base
        if target is not None:
            out["vs_target"][name] = by_look_target
    return out


def sequential_decisions(losses: Mapping[str, Mapping[int, float]], ran: Mapping[str, set], failed: Mapping[str, list],
                         baseline: str, settings: Mapping, seeds: Sequence[int]) -> dict:
    """Decisions of the looks seen so far.

    Args:
        losses, ran: as :func:`look_p_values`.
        failed: variant -> its failed runs ([{seed, reason}]).
        settings: the verdict section (``alpha``, ``test``, ``winners``, ``target_val_loss``,
            ``failed_run_policy``, ``sequential: {looks, spending, futility}``).
        seeds: the last stage's seeds in order.
    Returns:
        ``{"design": {...}, "looks_seen": L, "variants": {variant: {"decision": "winner" |
        "not_winner" | "open", "look": 1-based look it was decided at (None: open), "seeds":
        seeds it ran, "reason", "p_values": {family: [p per look]}, "rejected_look":
        {family: 1-based or None}}}, "open": [variants still open]}``.
    """
    seq = settings["sequential"]
    looks, alpha, spending = list(seq["looks"]), settings["alpha"], seq["spending"]
    futility = seq.get("futility")
    rule, target = settings["winners"], settings["target_val_loss"]
    base_ran = ran.get(baseline, set())
    seen = sum(1 for n in looks if len(seeds) >= n and set(seeds[:n]) <= base_ran)
    p = look_p_values(losses, ran, baseline, seeds, looks[:seen], settings["test"], target)
    needed = {"baseline": ["vs_baseline"], "target": ["vs_target"], "both": ["vs_baseline", "vs_target"]}[rule]
    names = [v for v in losses if v != baseline]
    disqualified = {v: settings["failed_run_policy"] == "disqualify" and bool(failed.get(v)) for v in names}
    outcome: dict[str, dict] = {v: {"rejected_look": {}, "futile_look": {}} for v in names}
    designs = {}
    for family in needed:
        members = list(p[family])
        if not members or not seen:
            continue
        arr = np.array([p[family][v] for v in members], float).reshape(len(members), seen)
        stopped = np.array([disqualified.get(v, v == baseline) for v in members])  # the baseline never wins
        statistic = "t" if family == "vs_target" or settings["test"] == "paired" else "z"
        res = sequential_holm(arr, looks, alpha, spending, futility, stopped=stopped, statistic=statistic)
        designs[family] = design_summary(looks, alpha, spending, len(members), statistic)
        for i, v in enumerate(members):
            if v == baseline:
                continue
            outcome[v]["rejected_look"][family] = int(res["rejected_look"][i]) + 1 if res["rejected"][i] else None
            futile = res["futile"][i] and not stopped[i]
            outcome[v]["futile_look"][family] = int(res["futile_look"][i]) + 1 if futile else None
    variants = {}
    for v in names:
        rejected = [outcome[v]["rejected_look"].get(f) for f in needed]
        futile = [x for x in (outcome[v]["futile_look"].get(f) for f in needed) if x]
        ran_seeds = sorted(ran.get(v, set()))
        if disqualified[v]:
            first_fail = min(f["seed"] for f in failed[v])
            look = next((k + 1 for k, n in enumerate(looks) if first_fail in seeds[:n]), seen)
            decision, reason = "not_winner", "a failed seed (failed_run_policy: disqualify)"
        elif all(r is not None for r in rejected):
            decision, look, reason = "winner", max(rejected), "crossed the efficacy boundary"
        elif futile:
            decision, look = "not_winner", min(futile)
            reason = f"futility: conditional power under the current trend below {futility}"
        elif seen == len(looks):
            decision, look, reason = "not_winner", seen, "did not cross the boundary at the last look"
        else:
            decision, look, reason = "open", None, "undecided: runs the next look's seeds"
        variants[v] = {
            "decision": decision, "look": look, "seeds": ran_seeds, "reason": reason,
            "p_values": {f: [None if np.isnan(x) else float(x) for x in p[f][v]] for f in needed if v in p[f]},
            "rejected_look": outcome[v]["rejected_look"],
        }
    return {
        "design": {"looks": looks, "spending": spending, "futility": futility, "alpha": alpha,
                   "families": designs},
        "looks_seen": seen,
        "variants": variants,
        "open": [v for v in names if variants[v]["decision"] == "open"],
    }
