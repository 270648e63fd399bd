"""How long a run trains: ``num_iterations``, or ``num_epochs``, or DiLoCo's ``outer_steps``."""

from __future__ import annotations

import math
from typing import Any, Mapping


def resolve_num_iterations(train_cfg: Mapping[str, Any], train_tokens: int, block_size: int) -> int:
    """Optimizer steps of the run.

    - ``num_epochs`` set: ``ceil(num_epochs * train_tokens / (batch_size * block_size))``
      (one epoch = as many tokens as the training split holds; batches are sampled, so an
      epoch is a token count, not a permutation);
    - ``strategy.outer_steps`` set (DiLoCo): ``outer_steps * tau``;
    - both: the shorter one (the seeds give both: "100 outer steps, max 10 epochs");
    - neither: ``num_iterations``.

    Args:
        train_cfg: the validated ``train`` section.
        train_tokens: tokens in the training split.
        block_size: tokens per training sequence.
    Raises:
        ValueError: the resolved length is below 1 (names the keys).
    """
    lengths = []
    if train_cfg.get("num_epochs") is not None:
        per_step = train_cfg["batch_size"] * block_size
        lengths.append(math.ceil(train_cfg["num_epochs"] * train_tokens / per_step))
    strategy = train_cfg.get("strategy") or {}
    if strategy.get("outer_steps") is not None:
        lengths.append(int(strategy["outer_steps"]) * int(strategy["tau"]))
    n = min(lengths) if lengths else int(train_cfg["num_iterations"])
    if n < 1:
        raise ValueError(f"train.num_epochs {train_cfg.get('num_epochs')} gives {n} steps (< 1) "
                         f"for {train_tokens} training tokens")
    return n
