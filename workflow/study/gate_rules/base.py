"""What a gate rule is: which eligible variants of a stage advance, and the most that can.

A rule sees the stage's ranking rows after the generic part of
:func:`workflow.analysis.gates.decide_gate` (eligibility, p-values against the baseline) and
marks the ``candidates`` it advances. Torch-free: the printed plan and the status read
:meth:`GateRule.most_advancing` in the Snakemake process.
"""

from __future__ import annotations

from typing import Mapping

from workflow.study.schema import load_schema


def fmt_loss(x: float | None, digits: int = 4) -> str:
    """A loss for a reason text (``n/a`` for None)."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_p(x: float | None) -> str:
    """A p-value for a reason text (two significant digits; ``n/a`` for None)."""
    return "n/a" if x is None else f"{x:.2g}"


def gate_default(key: str):
    """The schema's default of a gate key (config/schema.yaml definitions/gate)."""
    return load_schema()["definitions"]["gate"]["properties"][key].get("default")


class GateRule:
    """A gate rule, registered by :attr:`name` in :data:`workflow.study.gate_rules.GATE_RULES`.

    Attributes:
        name: the value of ``stages.<stage>.gate.rule``.
        needs_baseline: the rule compares with the baseline; without an eligible baseline in
            the stage nothing advances (and :meth:`decide` is not called).
        compares_intervals: the rule reads confidence intervals; a variant (or baseline) whose
            repeats are identical (it ignores the seed) cannot advance by it.
    """

    name: str = ""
    needs_baseline: bool = False
    compares_intervals: bool = False

    def most_advancing(self, gate: Mapping, candidates: int) -> int:
        """The most variants (besides the baseline) this gate advances out of ``candidates``
        (ties at the cut aside); the default: every one of them."""
        return candidates

    def check(self, gate: Mapping, ranked: list[str]) -> str | None:
        """A problem of ``gate`` in a study whose non-baseline variants are ``ranked`` (the text
        after ``stages.<stage>.gate.``), or None."""
        return None

    def decide(self, candidates: list[dict], base_row: dict | None, gate: Mapping, test: str) -> None:
        """Set ``advanced`` and ``reason`` of each row of ``candidates`` (eligible non-baseline
        rows, best mean first). ``base_row``: the baseline's row (eligible when
        :attr:`needs_baseline`); ``gate``: the section with its defaults; ``test``: the test of
        the rows' ``p_vs_baseline``."""
        raise NotImplementedError

    def explanation(self, gate: Mapping, eligibility: str) -> str:
        """The rule in one paragraph for gate_<stage>.json; ``eligibility`` is the sentence on
        eligible variants."""
        raise NotImplementedError
