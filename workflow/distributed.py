"""Process-group setup and the training strategies that decide how workers communicate.

:func:`init_distributed` reads the launcher's environment: torchrun's (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or, for one task per
GPU started by ``srun``, SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
master = first host of ``SLURM_JOB_NODELIST``). Backend: NCCL on CUDA, gloo on CPU.

A :class:`TrainingStrategy` owns everything the step does to keep workers consistent.
:class:`DDPStrategy` all-reduces gradients every step (PyTorch DDP). Low-communication
methods (DiLoCo's outer Nesterov step on pseudo-gradients every ``tau`` inner steps,
gossip averaging with a ``mixing_matrix``) subclass it and override ``wrap`` /
``after_optimizer_step`` without touching the trainer's loop.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        local_rank: rank on this node; selects the CUDA device.
        world_size: number of processes.
        device: ``torch.device`` this process computes on.
        backend: ``"nccl"``, ``"gloo"`` or ``"none"`` (single process, no process group).
        launcher: ``"torchrun"``, ``"srun"`` or ``"single"``.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the process that writes outputs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is initialized."""
        return self.backend != "none"


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list such as ``gpu[03-05,07],cpu1``.

    Uses ``scontrol show hostnames`` when available, else expands the first bracket.
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=10
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot find a host name")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _launcher_env() -> tuple[str, int, int, int]:
    """(launcher, rank, local_rank, world_size) from torchrun's or srun's environment."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun", int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        env.setdefault("MASTER_ADDR", first_slurm_host(env["SLURM_JOB_NODELIST"]))
        # A port derived from the job id: tasks of one job agree, concurrent jobs differ.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        env["RANK"], env["WORLD_SIZE"] = str(rank), str(world)
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        return "srun", rank, int(env["LOCAL_RANK"]), world
    return "single", 0, 0, 1


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Initialize the process group (if the job has more than one process) and pick the device.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        timeout_s: collective timeout in seconds.
    Returns:
        The :class:`DistContext` of this process.
    Raises:
        RuntimeError: ``device="cuda"`` but CUDA is not available.
    """
    launcher, rank, local_rank, world_size = _launcher_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False")
    if use_cuda:
        torch_device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    backend = "none"
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=torch_device if use_cuda else None,
        )
    return DistContext(rank, local_rank, world_size, torch_device, backend, launcher)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if one was created."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``value`` over all processes (returns ``value`` itself in a single process)."""
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``value`` over all processes."""
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


class TrainingStrategy:
    """How workers stay consistent during training. Subclass hooks, called by the trainer:

    - :meth:`wrap` once, to get the module the forward pass runs through;
    - :meth:`micro_step_context` around each micro-batch's forward/backward
      (``last`` is True on the micro-step after which gradients must be final);
    - :meth:`after_optimizer_step` after every optimizer step (outer loops live here);
    - :attr:`communication` counts collective operations, for communication-vs-loss studies.
    """

    name = "base"

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.communication = {"all_reduce_calls": 0, "bytes": 0}

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """The module the forward pass runs through (``model`` itself by default).

        ``find_unused_parameters``: some parameters may get no gradient in a step (DepthWarm's
        inactive or dropped layers); strategies that reduce gradients must allow it.
        """
        return model

    def micro_step_context(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        return None

    def state_dict(self) -> dict:
        return {"communication": dict(self.communication)}

    def load_state_dict(self, state: dict) -> None:
        self.communication.update(state.get("communication", {}))


class DDPStrategy(TrainingStrategy):
    """Synchronous data parallelism: gradients all-reduced on the last micro-step (PyTorch DDP).

    With ``world_size == 1`` the model is used as is, so 1-process and N-process runs of
    the same global batch follow the same arithmetic up to floating-point reduction order.
    """

    name = "ddp"

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DDP around ``model`` when distributed (else ``model``).

        ``find_unused_parameters=True`` (DepthWarm) makes DDP traverse the autograd graph after
        each forward to mark parameters that get no gradient; gradients of parameters unused on
        every rank stay None, as in a single process. Costs one graph traversal per step.
        Source: torch.nn.parallel.DistributedDataParallel docs.
        """
        if not self.ctx.distributed:
            return model
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        self._numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self._elem = next(model.parameters()).element_size()
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    @contextlib.contextmanager
    def micro_step_context(self, module: nn.Module, last: bool) -> Iterator[None]:
        if not self.ctx.distributed:
            yield
        elif last:
            yield
            self.communication["all_reduce_calls"] += 1
            self.communication["bytes"] += self._numel * self._elem
        else:
            with module.no_sync():
                yield


STRATEGIES: dict[str, type[TrainingStrategy]] = {"ddp": DDPStrategy}
