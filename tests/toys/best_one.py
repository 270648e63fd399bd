"""A toy gate rule: only the best eligible variant advances, if its mean is below the
baseline's; registered as ``best_one`` by tests/unit/test_registries.py."""

from __future__ import annotations

from typing import Mapping

from workflow.study.gate_rules.base import GateRule, fmt_loss


class BestOne(GateRule):
    """The lowest mean advances when it beats the baseline's; nothing else does."""

    name = "best_one"
    needs_baseline = True

    def most_advancing(self, gate: Mapping, candidates: int) -> int:
        return min(1, candidates)

    def decide(self, candidates: list[dict], base_row: dict | None, gate: Mapping, test: str) -> None:
        for rank, row in enumerate(candidates, start=1):
            row["advanced"] = rank == 1 and row["mean"] < base_row["mean"]
            row["reason"] = f"rank {rank}, mean {fmt_loss(row['mean'])} vs the baseline's {fmt_loss(base_row['mean'])}"

    def explanation(self, gate: Mapping, eligibility: str) -> str:
        return f"best_one: the best eligible variant advances if it beats the baseline. {eligibility}"
