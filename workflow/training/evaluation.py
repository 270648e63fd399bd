"""Evaluation: which model is scored, on which windows, and how far the workers disagree.

Every run of a study scores the same validation windows (``workflow.data.loader.val_window_ids``:
evenly spaced full ``block_size`` windows covering about ``val_tokens`` tokens, independent of
the seed), so val_loss values are comparable across variants and strategies.

- ``val_loss``: the strategy's *scored* model (``Strategy.scored_model``): the model every
  worker shares (DDP), DiLoCo's global model, or the average of the gossip workers' models.
  It is identical on every data-parallel worker, so the windows are split across them and the
  loss sums all-reduced (kind ``eval``).
- When workers' models differ (``Strategy.models_differ``), also
  ``val_loss_workers``: the mean over workers of each worker's own model's val_loss on ALL the
  windows; and ``consensus_distance``: ``mean_k ||theta_k - mean_j theta_j||^2`` (squared L2
  over all parameters, averaged over the workers; 0 when they agree).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from workflow.data.loader import TokenSplit, rank_slice, val_window_ids
from workflow.parallel.comm import CommCounter
from workflow.parallel.process_groups import DistContext
from workflow.strategies.base import Strategy, flat_parameters
from workflow.strategies.mixing import distributed_consensus_distance


class Evaluator:
    """Scores models on a dataset's fixed validation windows.

    Args:
        split: the ``val`` split. block_size: window length T. val_tokens: about how many tokens.
        batch_size: windows per forward pass. ctx, comm: process coordinates and the counter.
        autocast: context manager factory of the forward precision.
    """

    def __init__(self, split: TokenSplit, block_size: int, val_tokens: int, batch_size: int,
                 ctx: DistContext, comm: CommCounter, autocast: Callable):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.ctx, self.comm, self.autocast = ctx, comm, autocast
        self.window_ids = val_window_ids(split.num_windows(block_size), block_size, val_tokens)

    def _loss_sums(self, forward: nn.Module, ids: np.ndarray) -> torch.Tensor:
        """float64 [2]: summed cross-entropy (nats) and token count over windows ``ids``."""
        totals = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for start in range(0, len(ids), self.batch_size):
            x, y = self.split.read(ids[start : start + self.batch_size], self.block_size)
            with self.autocast():
                _, loss = forward(x.to(self.ctx.device), y.to(self.ctx.device))
            totals[0] += loss.double() * y.numel()
            totals[1] += y.numel()
        return totals

    @torch.no_grad()
    def evaluate(self, forward: nn.Module, model: nn.Module, strategy: Strategy) -> dict:
        """``{"val_loss", "val_loss_workers", "consensus_distance", "scored_model"}``.

        ``forward`` runs the forward pass (the compiled model, if any) of ``model``'s parameters.
        The last two are None when every worker holds the same model.
        """
        forward.eval()
        out: dict = {"val_loss_workers": None, "consensus_distance": None}
        if strategy.models_differ and self.ctx.dp_size > 1:
            own = self._loss_sums(forward, self.window_ids)
            mean_own = torch.tensor([float(own[0] / own[1])], dtype=torch.float64, device=self.ctx.device)
            self.comm.all_reduce(mean_own, "eval", group=self.ctx.dp_group)
            out["val_loss_workers"] = float(mean_own) / self.ctx.dp_size
            out["consensus_distance"] = distributed_consensus_distance(
                flat_parameters(model), self.comm, "eval", group=self.ctx.dp_group)
        with strategy.scored_model(model) as name:
            local_ids = rank_slice(self.window_ids, self.ctx.dp_rank, self.ctx.dp_size)
            totals = self._loss_sums(forward, local_ids)
            self.comm.all_reduce(totals, "eval", group=self.ctx.dp_group)
        out["val_loss"] = float(totals[0] / totals[1])
        out["scored_model"] = name
        if out["val_loss_workers"] is None:
            out["val_loss_workers"] = out["val_loss"] if strategy.models_differ else None
        return out
