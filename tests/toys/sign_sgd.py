"""A toy optimizer: sign SGD, ``p <- p - lr * sign(grad)`` (signSGD, Bernstein et al. 2018,
arXiv 1802.04434), registered as ``sign_sgd`` by tests/unit/test_registries.py."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from workflow.optim.schedules import train_option


class SignSGD(torch.optim.Optimizer):
    """``p <- p - lr * sign(grad)`` for every parameter with a gradient."""

    def __init__(self, params, lr: float):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


def build_sign_sgd(model: nn.Module, train_cfg: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """[SignSGD] over the trainable parameters at lr ``train.lr``."""
    return [SignSGD([p for p in model.parameters() if p.requires_grad], lr=float(train_option(train_cfg, "lr")))]
