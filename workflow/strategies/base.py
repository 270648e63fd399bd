"""The contract between the trainer and a training strategy (how workers communicate).

The trainer's step is, for every strategy::

    for each micro-batch:                       with strategy.micro_step_context(module, last):
        loss = module(x, y); loss.backward()        (DDP reduces gradients on the last one)
    strategy.optimizer_step(model, optimizers, step)  clip, step the optimizers, then e.g.
                                                      DiLoCo's outer step every tau steps or
                                                      gossip's mixing with the neighbours

and evaluation scores ``strategy.scored_model(model)``: the model every worker shares (DDP),
the global model (DiLoCo) or the average of the workers' models (gossip). When workers hold
different models between synchronizations (``models_differ``), the trainer also reports the
mean of the workers' own val_loss and the ``consensus_distance``.

A strategy is built from its own config section, ``train.strategy`` (schema
``definitions/strategy_<name>``: defaults live there, not here), and holds per-worker state
(:meth:`state_dict`) that goes into every rank's checkpoint. Every message goes through the
run's :class:`workflow.parallel.comm.CommCounter`.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import nn

from workflow.model.parallelize import tp_reduce_grads
from workflow.optim.registry import build_optimizers
from workflow.parallel.comm import CommCounter
from workflow.parallel.process_groups import DistContext


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` (each distinct tensor once, in ``parameters()`` order) as
    one detached 1-D float tensor (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a :func:`flat_parameters` vector back into ``model``'s parameters (in place)."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
    if offset != flat.numel():
        raise ValueError(f"flat parameter vector has {flat.numel()} values, the model {offset}")


class Strategy:
    """Base class: no communication at all (every worker trains alone).

    Args:
        cfg: the strategy's config section (validated, defaults filled), e.g.
            ``{"name": "diloco", "tau": 50, ...}``.
        train_cfg: the run's whole ``train`` section (grad_clip, optimizer, ...).
        ctx: this process's :class:`DistContext`.
        comm: the run's communication counter.
    """

    name: ClassVar[str] = "base"
    #: True when workers hold different parameters between synchronizations.
    models_differ: ClassVar[bool] = False

    def __init__(self, cfg: Mapping[str, Any], train_cfg: Mapping[str, Any], ctx: DistContext, comm: CommCounter):
        self.cfg = dict(cfg)
        self.train_cfg = train_cfg
        self.ctx = ctx
        self.comm = comm

    # ---- building ------------------------------------------------------------------
    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """The module forward passes run through (``model`` itself unless overridden).

        ``find_unused_parameters``: some parameters may get no gradient in a step (DepthWarm's
        inactive or dropped layers); strategies that reduce gradients must allow it.
        """
        return model

    def build_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        """The (inner) optimizers of this worker: ``train.optimizer`` by default."""
        return build_optimizers(model, self.train_cfg)

    def setup(self, model: nn.Module) -> None:
        """Called once after the model and optimizers exist, before a resume loads state."""

    # ---- the step --------------------------------------------------------------------
    def micro_step_context(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context around one micro-batch's forward and backward (``last``: gradients must be
        final after it)."""
        return contextlib.nullcontext()

    def optimizer_step(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], step: int) -> None:
        """Clip gradients (``train.grad_clip``; a tensor-parallel model through
        ``tensor_parallel.tp_reduce_grads``), step and zero every optimizer, then
        :meth:`after_optimizer_step`. ``step`` is the 0-based step just computed."""
        if getattr(model, "tp", None) is not None:  # tensor parallel: shards' norms summed, partial grads reduced

            tp_reduce_grads(model, self.train_cfg["grad_clip"])
        elif self.train_cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.train_cfg["grad_clip"])
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.after_optimizer_step(model, step)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Synchronization after the local update (outer steps, gossip); nothing by default."""

    def end_training(self, model: nn.Module, steps: int) -> None:
        """Called once after the run's last optimizer step (``steps`` = steps done: the run's
        length, or fewer when the time budget stopped it), before the final evaluation: e.g.
        DiLoCo's outer step on a partial last round. Nothing by default."""

    # ---- evaluation --------------------------------------------------------------------
    @contextlib.contextmanager
    def scored_model(self, model: nn.Module) -> Iterator[str]:
        """Load the model evaluation scores into ``model`` for the duration of the context and
        yield its name (``"shared"``, ``"global"``, ``"average"``); restore afterwards. The
        scored model is identical on every worker."""
        yield "shared"

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Per-worker strategy state for the checkpoint (tensors, plain containers, numbers)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def describe(self) -> str:
        """One line for the log."""
        keys = ", ".join(f"{k} {v}" for k, v in self.cfg.items() if k != "name")
        return f"strategy {self.name}" + (f" ({keys})" if keys else "")
