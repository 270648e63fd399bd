"""Process-group setup and the training strategies that decide how workers communicate.

:func:`init_distributed` reads the launcher's environment: torchrun's (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or, for one task per
GPU started by ``srun``, SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
master = first host of ``SLURM_JOB_NODELIST``; ``GLOO_SOCKET_IFNAME``, unless set, is the
interface that reaches the master: :func:`interface_towards`). Backend: NCCL on CUDA, gloo on CPU.

How workers communicate during training (DDP, DiLoCo, gossip) is a strategy:
see ``workflow/strategies/``. Every message they send is counted by ``workflow.parallel.comm``.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import os
import re
import socket
import struct
import subprocess
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


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
        dp_rank, dp_size, dp_group: this process's coordinates in the data-parallel
            dimension (the workers that see different data). Without tensor parallelism
            they equal rank, world_size and the world group (None).
        tp_rank, tp_size, tp_group, mesh: the tensor-parallel dimension and the 2-D
            ``DeviceMesh`` (dp x tp) when a model is sharded (workflow.model.tp_blocks);
            tp_size 1 and mesh None otherwise.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"
    launcher: str = "single"
    dp_rank: int | None = None
    dp_size: int | None = None
    dp_group: Any = None
    tp_rank: int = 0
    tp_size: int = 1
    tp_group: Any = None
    mesh: Any = None

    def __post_init__(self) -> None:
        if self.dp_rank is None:
            self.dp_rank = self.rank
        if self.dp_size is None:
            self.dp_size = self.world_size

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


def interface_towards(host: str) -> str | None:
    """Name of this machine's network interface whose address it uses to reach ``host``.

    The kernel picks the source address of a (never sent) UDP datagram to ``host``; the interface
    is the one holding that address. For ``host`` on this machine that is its own address's
    interface. Used for ``GLOO_SOCKET_IFNAME`` on several nodes: gloo otherwise binds to the
    address its host name resolves to, which on many clusters (and in network namespaces) is a
    loopback or an interface the other nodes cannot reach.

    Returns:
        The interface name, or None when ``host`` does not resolve, is reached over loopback,
        or no interface holds the source address (the caller then leaves gloo's default).
    """
    try:
        addr = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((addr, 9))  # no packet is sent: this only selects the route
            source = probe.getsockname()[0]
            if source.startswith("127."):
                return None
            for _, name in socket.if_nameindex():
                try:  # SIOCGIFADDR: the interface's IPv4 address
                    packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue
                if socket.inet_ntoa(packed[20:24]) == source:
                    return name
    except OSError:
        return None
    return None


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
        if "GLOO_SOCKET_IFNAME" not in env:  # gloo (CPU, and NCCL's store) on the path to the master
            ifname = interface_towards(env["MASTER_ADDR"])
            if ifname:
                env["GLOO_SOCKET_IFNAME"] = ifname
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


def init_tensor_parallel(ctx: DistContext, tp_size: int) -> DistContext:
    """``ctx`` with a 2-D DeviceMesh (dp x tp) for real tensor parallelism (``model.tp_mode: real``).

    Ranks ``r = dp_rank * tp_size + tp_rank``: the tp_size processes of one model replica are
    consecutive (on one node when nproc_per_node is a multiple of tp_size), data-parallel
    workers are the ranks with the same tp_rank. Built with
    ``torch.distributed.device_mesh.init_device_mesh(device, (dp, tp), mesh_dim_names=("dp", "tp"))``.

    Returns:
        a copy of ``ctx`` with dp_rank / dp_size / dp_group, tp_rank / tp_size / tp_group and mesh.
    Raises:
        ValueError: world_size is not a multiple of tp_size (names both and the launch setting).
    """

    from torch.distributed.device_mesh import (
        init_device_mesh,  # deferred heavy import: device mesh, only with tensor parallelism
    )

    if tp_size < 2 or not ctx.distributed or ctx.world_size % tp_size:
        raise ValueError(
            f"model.tp_mode 'real' with tp_size {tp_size} needs tp_size processes per model replica: "
            f"world_size ({ctx.world_size}) must be a multiple of tp_size (stages.<S>.resources: nproc_per_node "
            "or gpus); tp_mode 'simulated' runs on any number of processes")
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size // tp_size, tp_size), mesh_dim_names=("dp", "tp"))
    return dataclasses.replace(
        ctx, dp_rank=mesh.get_local_rank("dp"), dp_size=mesh["dp"].size(), dp_group=mesh["dp"].get_group(),
        tp_rank=mesh.get_local_rank("tp"), tp_size=tp_size, tp_group=mesh["tp"].get_group(), mesh=mesh)
