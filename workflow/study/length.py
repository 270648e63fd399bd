"""How long a run trains, the one source: ``num_iterations``, ``num_tokens``, ``num_epochs``, DiLoCo's ``outer_steps``.

The trainer (:func:`resolve_num_iterations`), the plan printed at every start, the compute plan
and the tables all call :func:`run_steps` / :func:`resolve_num_iterations` with the block size of
:func:`model_block_size`, so they agree on every run's steps (tests/unit/test_study_length.py).
Torch-free.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from workflow.core.io import read_json
from workflow.model.spec import build_model_config
from workflow.optim.schedules import resolve_depth_warm, steps_for_tokens


def model_block_size(model_cfg: Mapping[str, Any]) -> int:
    """Tokens per training sequence (``block_size``) of a ``model`` section: preset + overrides.

    DepthWarm fractions do not change the architecture, so they are dropped first (the one
    place that derives a block size from a model section; the launcher's data check, the plans
    and the tables use it).

    Raises:
        ValueError: an invalid model section (names the key; from build_model_config).
    """
    return build_model_config(resolve_depth_warm(dict(model_cfg or {}), None), 256).block_size


def study_train_tokens(meta_path: str | os.PathLike) -> int | None:
    """Tokens in the training split of a tokenized dataset (its ``meta.json``); None before tokenization."""
    if not os.path.isfile(meta_path):
        return None
    return int(read_json(meta_path)["splits"]["train"]["tokens"])


def run_steps(run_cfg: Mapping[str, Any], train_tokens: int | None) -> int | None:
    """Optimizer steps of a resolved run config (workflow.study.resolve.run_config).

    Returns:
        :func:`resolve_num_iterations` of its ``train`` section at :func:`model_block_size`; None
        when the length is in epochs and the training split's token count is not known yet
        (``train_tokens`` None: the dataset is not tokenized).
    Raises:
        ValueError: as :func:`resolve_num_iterations`.
    """
    train = run_cfg["train"]
    if train.get("num_epochs") is not None and train_tokens is None:
        return None
    return resolve_num_iterations(train, train_tokens or 0, model_block_size(run_cfg["model"]))


def resolve_num_iterations(train_cfg: Mapping[str, Any], train_tokens: int, block_size: int) -> int:
    """Optimizer steps of the run.

    - ``num_tokens`` set: the fewest steps whose training tokens reach it
      (:func:`workflow.optim.schedules.steps_for_tokens`: ``batch_size x`` each step's sequence length, a
      curriculum's shorter sequences included), so variants compare at equal data;
    - ``num_epochs`` set: the same with ``num_tokens = num_epochs * train_tokens`` (one epoch =
      as many tokens as the training split holds; batches are sampled, so an epoch is a token
      count, not a permutation; ``epoch: stride_1``: one epoch = every stride-1 window,
      ``(train_tokens - block_size) * block_size`` tokens, MozarTuring/DeMuon's); without a curriculum
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
        if train_cfg.get("epoch") == "stride_1":  # every stride-1 window once (DeMuon's epoch)
            train_tokens = max(train_tokens - block_size, 0) * block_size
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
