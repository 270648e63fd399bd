"""Gate rule ``top_k``: the k eligible variants with the lowest mean advance (ties at the cut too)."""

from __future__ import annotations

from typing import Mapping

from workflow.study.gate_rules.base import GateRule, fmt_loss, gate_default


class TopK(GateRule):
    """Advance the ``k`` best means; a mean within ``tie_tolerance`` of the k-th advances too."""

    name = "top_k"

    @staticmethod
    def _k(gate: Mapping) -> int:
        return int(gate.get("k", gate_default("k")))

    def most_advancing(self, gate: Mapping, candidates: int) -> int:
        return min(candidates, self._k(gate))

    def check(self, gate: Mapping, ranked: list[str]) -> str | None:
        if self._k(gate) > len(ranked):
            return (f"k: {self._k(gate)}, but the study has {len(ranked)} variants besides the baseline "
                    f"({', '.join(ranked) or 'none'}); top_k would advance every one of them (k <= {len(ranked)})")
        return None

    def decide(self, candidates: list[dict], base_row: dict | None, gate: Mapping, test: str) -> None:
        k, tol = gate["k"], gate["tie_tolerance"]
        cutoff = candidates[min(k, len(candidates)) - 1]["mean"] if candidates else None
        for rank, row in enumerate(candidates, start=1):
            if rank <= k:
                row["advanced"] = True
                row["reason"] = f"rank {rank} of {len(candidates)} by mean val_loss {fmt_loss(row['mean'])} (top {k})"
            elif row["mean"] <= cutoff + tol + 1e-9:
                row["advanced"] = True
                row["reason"] = (
                    f"rank {rank}: mean {fmt_loss(row['mean'])} ties the cut-off {fmt_loss(cutoff)} "
                    f"(within tie_tolerance {tol}); ties at the cut all advance"
                )
            else:
                row["reason"] = (f"rank {rank}: mean {fmt_loss(row['mean'])} above the cut-off "
                                 f"{fmt_loss(cutoff)} of the top {k}")

    def explanation(self, gate: Mapping, eligibility: str) -> str:
        return (
            f"top_k: the {gate['k']} eligible variants with the lowest mean val_loss advance; means within "
            f"{gate['tie_tolerance']} of the k-th mean count as ties and advance too; ties in mean are ordered by "
            f"lower std. {eligibility}"
        )
