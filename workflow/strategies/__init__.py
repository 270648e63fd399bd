"""Training strategies: how the workers of one run communicate.

| name     | module     | what moves between workers                                   |
|----------|------------|--------------------------------------------------------------|
| `ddp`    | ddp.py     | gradients, all-reduced every step (PyTorch DDP)              |
| `diloco` | diloco.py  | parameters, all-reduced every `tau` steps; outer Nesterov    |
| `gossip` | gossip.py  | parameters (and trackers) to graph neighbours, point-to-point|

Each strategy is a small :class:`~workflow.strategies.base.Strategy` subclass built from its own
config section ``train.strategy: {name: ..., ...}`` (defaults in config/schema.yaml).
"""

from __future__ import annotations

from typing import Any, Mapping

from workflow.parallel.comm import CommCounter
from workflow.parallel.process_groups import DistContext
from workflow.strategies.base import Strategy
from workflow.strategies.ddp import DDPStrategy
from workflow.strategies.diloco import DiLoCoStrategy
from workflow.strategies.gossip import GossipStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    DDPStrategy.name: DDPStrategy,
    DiLoCoStrategy.name: DiLoCoStrategy,
    GossipStrategy.name: GossipStrategy,
}


def build_strategy(train_cfg: Mapping[str, Any], ctx: DistContext, comm: CommCounter) -> Strategy:
    """The strategy of ``train_cfg["strategy"]`` (a validated section with ``name``).

    Raises:
        ValueError: an unknown strategy name (lists the known ones).
    """
    cfg = train_cfg["strategy"]
    if cfg["name"] not in STRATEGIES:
        raise ValueError(f"train.strategy.name: unknown strategy {cfg['name']!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[cfg["name"]](cfg, train_cfg, ctx, comm)
