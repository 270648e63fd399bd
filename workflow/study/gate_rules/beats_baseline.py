"""Gate rules against the baseline: ``beats_baseline`` (mean below the baseline's) and
``beats_baseline_ci`` (also the CI95 of the mean entirely below the baseline's)."""

from __future__ import annotations

from typing import Mapping

from workflow.study.gate_rules.base import GateRule, fmt_loss, fmt_p


class BeatsBaseline(GateRule):
    """Advance every eligible variant whose mean val_loss is below the baseline's."""

    name = "beats_baseline"
    needs_baseline = True

    def decide(self, candidates: list[dict], base_row: dict | None, gate: Mapping, test: str) -> None:
        for row in candidates:
            delta = row["mean"] - base_row["mean"]
            below = delta < 0
            row["advanced"] = below
            verb = "beats" if below else "does not beat"
            row["reason"] = (
                f"mean {fmt_loss(row['mean'])} {verb} the baseline's {fmt_loss(base_row['mean'])} "
                f"(delta {delta:+.4f}, one-sided {test} p={fmt_p(row['p_vs_baseline'])})"
            )

    def explanation(self, gate: Mapping, eligibility: str) -> str:
        return (
            "beats_baseline: eligible variants whose mean val_loss is below the baseline's advance; the p-value "
            f"is reported for information, significance is tested at the verdict. {eligibility}"
        )


class BeatsBaselineCI(GateRule):
    """Advance a variant whose mean is below the baseline's and whose CI95 lies entirely below
    the baseline's (non-overlapping intervals: a consistent improvement)."""

    name = "beats_baseline_ci"
    needs_baseline = True
    compares_intervals = True

    def decide(self, candidates: list[dict], base_row: dict | None, gate: Mapping, test: str) -> None:
        base_ci = base_row["ci_95"]
        for row in candidates:
            delta = row["mean"] - base_row["mean"]
            below = delta < 0
            ci = row["ci_95"]
            disjoint = ci is not None and base_ci is not None and ci[1] < base_ci[0]
            row["advanced"] = below and disjoint
            mean, base_mean = fmt_loss(row["mean"]), fmt_loss(base_row["mean"])
            if not below:
                why = f"mean {mean} is not below the baseline's {base_mean}"
            elif not disjoint:
                why = (
                    f"mean {mean} is below the baseline's {base_mean} but its CI95 "
                    f"[{fmt_loss(ci[0])}, {fmt_loss(ci[1])}] overlaps the baseline's "
                    f"[{fmt_loss(base_ci[0])}, {fmt_loss(base_ci[1])}]: no consistent improvement"
                )
            else:
                why = (
                    f"mean {mean} below the baseline's {base_mean} and CI95 "
                    f"[{fmt_loss(ci[0])}, {fmt_loss(ci[1])}] entirely below the baseline's "
                    f"[{fmt_loss(base_ci[0])}, {fmt_loss(base_ci[1])}]"
                )
            row["reason"] = f"{why} (delta {delta:+.4f}, one-sided {test} p={fmt_p(row['p_vs_baseline'])})"

    def explanation(self, gate: Mapping, eligibility: str) -> str:
        return (
            "beats_baseline_ci: eligible variants advance when their mean val_loss is below the baseline's AND "
            "their 95 % CI of the mean lies entirely below the baseline's (a consistent improvement, seed 001's "
            f"B -> C rule). {eligibility}"
        )
