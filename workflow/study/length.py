"""How long a run trains: ``num_iterations``, ``num_tokens``, ``num_epochs``, or DiLoCo's ``outer_steps``."""

from __future__ import annotations

import math
from typing import Any, Mapping

from workflow.study.schedules import steps_for_tokens


def resolve_num_iterations(train_cfg: Mapping[str, Any], train_tokens: int, block_size: int) -> int:
    """Optimizer steps of the run.

    - ``num_tokens`` set: the fewest steps whose training tokens reach it
      (:func:`workflow.optim.steps_for_tokens`: ``batch_size x`` each step's sequence length, a
      curriculum's shorter sequences included), so variants compare at equal data;
    - ``num_epochs`` set: the same with ``num_tokens = num_epochs * train_tokens`` (one epoch =
      as many tokens as the training split holds; batches are sampled, so an epoch is a token
      count, not a permutation); without a curriculum
      ``ceil(num_epochs * train_tokens / (batch_size * block_size))``;
    - ``strategy.outer_steps`` set (DiLoCo): ``outer_steps * tau``;
    - a token length and outer_steps: the shorter one (the seeds give both: "100 outer steps,
      max 10 epochs");
    - none: ``num_iterations``.

    Args:
        train_cfg: the validated ``train`` section.
        train_tokens: tokens in the training split.
        block_size: tokens per training sequence.
    Raises:
        ValueError: ``num_tokens`` and ``num_epochs`` both set; the resolved length is below 1
            (names the keys).
    """
    lengths = []
    if train_cfg.get("num_tokens") is not None and train_cfg.get("num_epochs") is not None:
        raise ValueError(
            f"train.num_tokens ({train_cfg['num_tokens']}) and train.num_epochs ({train_cfg['num_epochs']}) are both "
            "set: give the run length once"
        )
    if train_cfg.get("num_epochs") is not None:
        num_tokens = math.ceil(train_cfg["num_epochs"] * train_tokens)
        if num_tokens < 1:
            raise ValueError(f"train.num_epochs {train_cfg['num_epochs']} gives no tokens for {train_tokens} training tokens")
        lengths.append(steps_for_tokens(train_cfg, block_size, num_tokens))
    elif train_cfg.get("num_tokens") is not None:
        lengths.append(steps_for_tokens(train_cfg, block_size, int(train_cfg["num_tokens"])))
    strategy = train_cfg.get("strategy") or {}
    if strategy.get("outer_steps") is not None:
        lengths.append(int(strategy["outer_steps"]) * int(strategy["tau"]))
    n = min(lengths) if lengths else int(train_cfg["num_iterations"])
    if n < 1:
        raise ValueError(f"train.num_epochs {train_cfg.get('num_epochs')} gives {n} steps (< 1) "
                         f"for {train_tokens} training tokens")
    return n
