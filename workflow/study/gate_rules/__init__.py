"""Gate rules by name: ``stages.<stage>.gate.rule`` -> a :class:`~workflow.study.gate_rules.base.GateRule`.

| name                | module            | advances                                               |
|---------------------|-------------------|--------------------------------------------------------|
| `top_k`             | top_k.py          | the k lowest means (ties at the cut too)               |
| `beats_baseline`    | beats_baseline.py | every mean below the baseline's                        |
| `beats_baseline_ci` | beats_baseline.py | mean and whole CI95 below the baseline's               |

:func:`workflow.analysis.gates.decide_gate` applies a rule to a stage's summaries; the printed
plan, the compute plan and the status count the variants a gate can advance with
:func:`most_advancing`. Adding a rule: a module with a ``GateRule`` subclass, one line in
:data:`GATE_RULES`, its name in config/schema.yaml's ``gate.rule`` enum (tests/unit/
test_registries.py checks they agree); docs/architecture.md ("Adding a gate rule").
"""

from __future__ import annotations

from typing import Mapping

from workflow.study.gate_rules.base import GateRule
from workflow.study.gate_rules.beats_baseline import BeatsBaseline, BeatsBaselineCI
from workflow.study.gate_rules.top_k import TopK

GATE_RULES: dict[str, GateRule] = {
    TopK.name: TopK(),
    BeatsBaseline.name: BeatsBaseline(),
    BeatsBaselineCI.name: BeatsBaselineCI(),
}


def gate_rule(name: str) -> GateRule:
    """The rule registered as ``name``.

    Raises:
        ValueError: an unknown rule (lists the registered names).
    """
    if name not in GATE_RULES:
        raise ValueError(f"gate.rule: unknown rule {name!r} (known: {', '.join(GATE_RULES)})")
    return GATE_RULES[name]


def most_advancing(gate: Mapping, candidates: int) -> int:
    """The most variants besides the baseline that ``gate`` advances out of ``candidates``
    (ties at the cut aside): what the printed plan, the compute plan and the status count.

    Args:
        gate: a stage's gate section (``k`` missing takes the schema default).
        candidates: non-baseline variants that reach the gate (>= 0).
    Returns:
        an int in [0, candidates].
    Raises:
        ValueError: an unknown rule.
    """
    return gate_rule(gate["rule"]).most_advancing(gate, candidates)
