"""DiLoCo: tau local steps per worker, then one outer Nesterov step on the pseudo-gradient.

Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models",
arXiv 2311.08105, Algorithm 1.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from workflow.strategies.base import Strategy, flat_parameters, load_flat_parameters


class DiLoCoStrategy(Strategy):
    """Local inner steps, then an outer SGD step with Nesterov momentum on the pseudo-gradient.

    Every worker keeps its own inner optimizer (``train.optimizer``, AdamW in the paper; its
    moments persist across rounds) and trains on its own shard of every global batch without
    any gradient communication. After every ``tau`` inner steps (inner step t with
    ``(t + 1) % tau == 0``):

    1. one all-reduce of the workers' flattened parameters gives ``mean_k theta_k``
       (kind ``outer_all_reduce``: ``n_params * 4`` bytes per worker and round);
    2. ``pseudo_gradient = theta_global - mean_k theta_k`` (shape: every parameter, flattened);
    3. ``torch.optim.SGD([theta_global], lr=outer_lr, momentum=outer_momentum,
       nesterov=nesterov)`` steps with the pseudo-gradient as the gradient;
    4. every worker copies ``theta_global`` into its model and starts the next round from it.

    With ``tau = 1``, ``outer_lr = 1`` and no momentum, the outer step sets theta_global to the
    mean of the workers' one-step updates: with a linear inner optimizer (``optimizer: sgd``)
    that is exactly synchronous DDP; with AdamW it is the mean of per-worker Adam updates,
    which is not DDP's Adam of the mean gradient.

    The last round of a run whose length is not a multiple of ``tau`` is a partial round: the
    trainer calls :meth:`end_training` after the last step (``num_iterations``, or a spent
    ``training_hours`` budget), which takes one more outer step on the pseudo-gradient of the
    partial round's ``steps % tau`` inner steps, so the final (global) model includes every
    trained step: 25 steps at tau 10 make 3 outer steps (rounds of 10, 10 and 5 steps).
    ``outer_steps`` gives whole rounds (``num_iterations = outer_steps * tau``); a length from
    ``num_iterations`` / ``num_epochs`` makes ``ceil(num_iterations / tau)`` outer steps.
    (torchft's ``DiLoCo``, ``torchft/local_sgd.py``, syncs only after ``sync_every`` steps: its
    trailing partial round stays unsynchronized.)

    Gradient clipping (``train.grad_clip > 0``) clips each worker's own gradient before its
    inner step; DDP clips the all-reduced (averaged) gradient. So the tau-1 equivalence above
    holds only with clipping off: ``grad_clip: 0``.

    Evaluation scores the global model (``theta_global``, identical on every worker); the
    workers' own models differ from it mid-round (``models_differ``).

    State (per worker, in the checkpoint): ``theta_global`` and the outer optimizer's momentum.

    Config (``train.strategy``, schema ``definitions/strategy_diloco``): ``tau`` (inner steps
    per round), ``outer_lr``, ``outer_momentum``, ``nesterov``, ``outer_steps`` (run length in
    rounds; null = from num_iterations / num_epochs).
    """

    name = "diloco"
    models_differ = True

    def setup(self, model: nn.Module) -> None:
        # Every worker built the same initial model (same seed), so theta_global starts equal.
        self.global_params = flat_parameters(model).float()
        self.global_params.grad = torch.zeros_like(self.global_params)
        self.outer_optimizer = torch.optim.SGD(
            [self.global_params], lr=self.cfg["outer_lr"], momentum=self.cfg["outer_momentum"],
            nesterov=bool(self.cfg["nesterov"]) and self.cfg["outer_momentum"] > 0,
        )
        self.rounds = 0

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.cfg["tau"]:
            return
        self._outer_step(model)

    def end_training(self, model: nn.Module, steps: int) -> None:
        """After the run's last step (``steps`` inner steps done): an outer step on the partial
        round's ``steps % tau`` inner steps, if any (none when ``steps`` is a multiple of tau)."""
        if steps % self.cfg["tau"]:
            self._outer_step(model)

    def _outer_step(self, model: nn.Module) -> None:
        """All-reduce the workers' parameters, step the outer optimizer on the pseudo-gradient,
        reset every worker to the new global model."""
        mean = flat_parameters(model).float()
        self.comm.all_reduce(mean, "outer_all_reduce", group=self.ctx.dp_group)
        mean /= self.ctx.dp_size
        self.global_params.grad.copy_(self.global_params.detach() - mean)  # the pseudo_gradient
        self.outer_optimizer.step()
        load_flat_parameters(model, self.global_params.detach())
        self.rounds += 1

    @contextlib.contextmanager
    def scored_model(self, model: nn.Module) -> Iterator[str]:
        local = flat_parameters(model)
        load_flat_parameters(model, self.global_params.detach())
        try:
            yield "global"
        finally:
            load_flat_parameters(model, local)

    def state_dict(self) -> dict:
        return {
            "global_params": self.global_params.detach().clone(),
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.global_params.copy_(state["global_params"])
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.rounds = int(state["rounds"])
