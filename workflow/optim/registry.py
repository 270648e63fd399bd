"""The optimizers by name: ``train.optimizer`` -> a builder ``(model, train_cfg) -> [optimizers]``.

| name    | builder                                      | optimizers                       |
|---------|----------------------------------------------|----------------------------------|
| `adamw` | :func:`workflow.optim.optimizers.build_adamw` | AdamW (decay / no-decay groups) |
| `muon`  | :func:`workflow.optim.optimizers.build_muon`  | AdamW + Muon (hidden matrices)  |
| `sgd`   | :func:`workflow.optim.optimizers.build_sgd`   | SGD (same groups as adamw)      |

Adding an optimizer: a module with its builder, one line in :data:`OPTIMIZERS`, its name in
config/schema.yaml's ``train.optimizer`` enum (tests/unit/test_registries.py checks they agree)
and its keys beside it; docs/architecture.md ("Adding an optimizer").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from workflow.optim.optimizers import build_adamw, build_muon, build_sgd
from workflow.optim.schedules import train_option

OptimizerBuilder = Callable[[nn.Module, Mapping[str, Any]], list[torch.optim.Optimizer]]

OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "adamw": build_adamw,
    "muon": build_muon,
    "sgd": build_sgd,
}


def build_optimizers(model: nn.Module, train_cfg: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """The optimizers of one training run, built by ``OPTIMIZERS[train_cfg["optimizer"]]``.

    Args:
        model: the model (GPT or any nn.Module; Muon finds the head as ``model.lm_head``).
        train_cfg: the run's ``train`` section; missing keys take the schema's defaults.

    Returns:
        list of optimizers, to be stepped (and zero_grad'ed) together; ``set_lr`` scales each
        group's lr from the lr it was built with.

    Raises:
        ValueError: unknown optimizer name (names the key and the registered names).
    """
    name = train_option(train_cfg, "optimizer")
    if name not in OPTIMIZERS:
        raise ValueError(f"train key 'optimizer': unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, train_cfg)
