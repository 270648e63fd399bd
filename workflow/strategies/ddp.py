"""Synchronous data parallelism: PyTorch DDP all-reduces gradients on every step."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from workflow.strategies.base import Strategy


class DDPStrategy(Strategy):
    """Gradients averaged over the data-parallel workers on the last micro-step (PyTorch
    ``DistributedDataParallel`` over ``ctx.dp_group``), so every worker holds the same model.

    Every gradient bucket DDP all-reduces is counted (``grad_all_reduce``) through a DDP
    communication hook that runs PyTorch's default all-reduce. With one data-parallel worker
    the model is used as is, so 1-process and N-process runs of the same global batch follow
    the same arithmetic up to floating-point reduction order.

    Config (``train.strategy``): ``{name: ddp}``, no other keys.
    Source: Li et al. 2020, "PyTorch Distributed", arXiv 2006.15704.
    """

    name = "ddp"

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DDP around ``model`` when there is more than one data-parallel worker.

        ``find_unused_parameters=True`` (DepthWarm) makes DDP traverse the autograd graph after
        each forward to mark parameters that get no gradient; gradients of parameters unused on
        every rank stay None, as in a single process.
        """
        if not self.ctx.distributed or self.ctx.dp_size == 1:
            return model
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
            process_group=self.ctx.dp_group,
        )
        ddp.register_comm_hook(self.ctx.dp_group, self.comm.ddp_hook("grad_all_reduce"))
        return ddp

    @contextlib.contextmanager
    def micro_step_context(self, module: nn.Module, last: bool) -> Iterator[None]:
        if last or not isinstance(module, nn.parallel.DistributedDataParallel):
            yield
        else:
            with module.no_sync():
                yield
