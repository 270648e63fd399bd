"""Real tensor parallelism applied to a built GPT from outside (torchtitan's ``parallelize.py``).

:func:`parallelize_gpt` shards a model over a 1-D tensor-parallel DeviceMesh (DTensor
``ColwiseParallel`` / ``RowwiseParallel`` on tp blocks, weight slices on spd / parallel blocks);
the state-dict helpers gather shards back into the unsharded layout; :func:`tp_comm_counts` and
:func:`tp_reduce_grads` read the model's counters and reduce replicated gradients
(docs/tensor_parallel.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from workflow.model.tp_blocks import TensorParallelBlock, TPBlockBase
from workflow.parallel.mappings import TPRuntime
from workflow.model.block_spec import known_block_types
from workflow.model.spec import GPTConfig

# --------------------------------------------------------------------------------------
# Real mode: sharding a GPT over a tensor-parallel DeviceMesh
# --------------------------------------------------------------------------------------


def tp_sharded_params(config: GPTConfig) -> dict[str, int]:
    """State-dict names of the sharded weights -> the dimension split over shards (real mode)."""
    out = {}
    for i, name in enumerate(config.layer_block_types):
        if known_block_types()[name].tensor_parallel:  # the registry, not a list of names
            for key, dim in (("attn.c_attn", 0), ("attn.c_proj", 1), ("mlp.c_fc", 0), ("mlp.c_proj", 1)):
                out[f"transformer.h.{i}.{key}.weight"] = dim
    return out


def parallelize_gpt(model: nn.Module, tp_mesh) -> nn.Module:
    """Shard a GPT in place for real tensor parallelism on ``tp_mesh`` (1-D, tp_size ranks).

    Every rank must hold the same full model (same seed). tp blocks: ``parallelize_module``
    with ``ColwiseParallel`` on ``attn.c_attn`` / ``mlp.c_fc`` and ``RowwiseParallel`` on both
    ``c_proj`` (then :meth:`TPLinear.localize`); spd / parallel blocks: the weights are sliced
    to this rank's shard (their collectives are the hand-written f / g). Replicated parameters
    (embeddings, norms, head) stay whole on every rank.

    Args:
        model: a ``workflow.model.GPT`` with ``config.tp_size == tp_mesh.size()``.
        tp_mesh: ``torch.distributed.device_mesh.DeviceMesh`` of the tensor-parallel dimension
            (e.g. ``init_device_mesh(dev, (dp, tp), mesh_dim_names=("dp", "tp"))["tp"]``).

    Returns:
        ``model`` (its runtime switched to real mode).

    Raises:
        ValueError: the model has no tensor-parallel blocks or tp_size != mesh size.
    """
    from torch.distributed.tensor.parallel import (  # deferred heavy import: DTensor, only in real tensor-parallel mode
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    rt: TPRuntime | None = getattr(model, "tp", None)
    if rt is None:
        raise ValueError("parallelize_gpt: the model has no tensor-parallel blocks (tp_size 1)")
    if tp_mesh.size() != rt.tp_size:
        raise ValueError(f"parallelize_gpt: model tp_size {rt.tp_size} != tensor-parallel mesh size {tp_mesh.size()}")
    rt.mode, rt.mesh, rt.group, rt.rank = "real", tp_mesh, tp_mesh.get_group(), tp_mesh.get_local_rank()
    for block in model.transformer.h:
        if isinstance(block, TensorParallelBlock):
            parallelize_module(block, tp_mesh, {
                "attn.c_attn": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
                "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel(),
            })
            for linear, _ in block.sharded_linears().values():
                linear.localize()
        elif isinstance(block, TPBlockBase):
            for linear, dim in block.sharded_linears().values():
                local = linear.weight.detach().chunk(rt.tp_size, dim=dim)[rt.rank].clone()
                linear.register_parameter("weight", nn.Parameter(local))
        if isinstance(block, TPBlockBase):
            block.attn.qkv_shards = 1  # the local c_attn shard holds one [q; k; v]
            for linear, _ in block.sharded_linears().values():
                linear.weight._tp_sharded = True
    return model


def qkv_to_shard_major(weight: torch.Tensor, tp_size: int) -> torch.Tensor:
    """GPT-2's c_attn weight [3C, C] (rows q; k; v, heads in order) -> the shard-major layout of
    the tensor-parallel blocks (rows of shard p: its heads' q; k; v). Inverse:
    :func:`qkv_from_shard_major`. Use it to load a ``sequential`` checkpoint into tp blocks."""
    C3, C = weight.shape
    return weight.view(3, tp_size, C3 // (3 * tp_size), C).transpose(0, 1).reshape(C3, C)


def qkv_from_shard_major(weight: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Inverse of :func:`qkv_to_shard_major`: shard-major [3C, C] -> GPT-2's q; k; v rows."""
    C3, C = weight.shape
    return weight.view(tp_size, 3, C3 // (3 * tp_size), C).transpose(0, 1).reshape(C3, C)


def unshard_state_dicts(shard_states: list[dict], config: GPTConfig) -> dict:
    """The full (simulated-layout) model state dict from the tp_size real-mode shards' state
    dicts, in tensor-parallel rank order (for sampling or converting a real-mode checkpoint).

    Raises:
        ValueError: the number of shards is not config.tp_size.
    """
    if len(shard_states) != config.tp_size:
        raise ValueError(f"unshard_state_dicts: {len(shard_states)} shards for tp_size {config.tp_size}")
    sharded = tp_sharded_params(config)
    full = dict(shard_states[0])
    for name, dim in sharded.items():
        full[name] = torch.cat([s[name] for s in shard_states], dim=dim)
    return full


def full_state_dict(model: nn.Module, record=None) -> dict:
    """The whole model's state dict in the simulated (unsharded) layout, on every rank.

    Real mode: each sharded weight is all-gathered over the tensor-parallel group (one
    ``all_gather`` per weight, collective: every rank must call it; ``record(calls, nbytes)``
    is called with the payload sent, for the run's communication counter). Simulated or
    unsharded: ``model.state_dict()``.
    """
    state = model.state_dict()
    rt = getattr(model, "tp", None)
    if rt is None or rt.mode != "real":
        return state
    calls = nbytes = 0
    for name, dim in tp_sharded_params(model.config).items():
        local = state[name].contiguous()
        parts = [torch.empty_like(local) for _ in range(rt.tp_size)]
        dist.all_gather(parts, local, group=rt.group)
        state[name] = torch.cat(parts, dim=dim)
        calls, nbytes = calls + 1, nbytes + local.numel() * local.element_size()
    if record is not None:
        record(calls, nbytes)
    return state


# --------------------------------------------------------------------------------------
# Counting, gradient sync and clipping
# --------------------------------------------------------------------------------------


def tp_comm_counts(model: nn.Module, reset: bool = True) -> dict | None:
    """Tensor-parallel collectives of ``model`` since the last reset (None without tp blocks).

    Returns:
        ``{"forward": {"calls", "bytes"}, "backward": {...}, "grad": {...}, "passes": n}``:
        calls and payload bytes per phase, summed over the ``passes`` forward passes
        (training step: micro-steps; evaluation: batches). Real mode: this rank's collectives;
        simulated: the collectives one rank of a real run would make.
    """
    rt = getattr(model, "tp", None)
    if rt is None:
        return None
    snap = rt.counter.snapshot()
    if reset:
        rt.counter.reset()
    return snap


def tp_reduce_grads(model: nn.Module, max_norm: float = 0.0) -> torch.Tensor:
    """Finish a step's gradients of a tensor-parallel model and clip them by the global norm.

    Call after the last micro-step's backward (after the data-parallel all-reduce), instead
    of ``torch.nn.utils.clip_grad_norm_``. Real mode: ONE all-reduce over the tensor-parallel
    group of [partial gradients of replicated params used per shard (spd / parallel norms),
    squared norm of this rank's sharded gradients]; then the global norm is
    sqrt(sum of sharded squares over ranks + replicated squares counted once) on every rank,
    so all shards clip by the same factor. Simulated: ``clip_grad_norm_`` on the full model;
    the all-reduce a real run makes is counted (phase ``grad``).

    Args:
        model: a GPT with tensor-parallel blocks.
        max_norm: clip to this global L2 norm (torch's rule: scale by
            max_norm / (norm + 1e-6) when below 1); <= 0: no clipping.

    Returns:
        The global gradient norm (0-dim float32 tensor) before clipping.
    """
    rt: TPRuntime = model.tp
    params = [p for p in dict.fromkeys(model.parameters()) if p.grad is not None]
    local_partial = [p for block in model.transformer.h if isinstance(block, TPBlockBase)
                     for p in block.shard_local_params() if p.grad is not None]
    numel = sum(p.numel() for p in local_partial) + 1
    if rt.mode != "real":
        rt.counter.add("grad", numel * 4)
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
    sharded = [p for p in params if getattr(p, "_tp_sharded", False)]
    dev = params[0].grad.device
    sq_sharded = torch.zeros((), dtype=torch.float32, device=dev)
    for p in sharded:
        sq_sharded += p.grad.float().pow(2).sum()
    buf = torch.cat([*(p.grad.float().reshape(-1) for p in local_partial), sq_sharded.reshape(1)])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=rt.group)
    rt.counter.add("grad", buf.numel() * buf.element_size())
    offset = 0
    for p in local_partial:
        p.grad.copy_(buf[offset: offset + p.numel()].view_as(p.grad))
        offset += p.numel()
    sharded_ids = {id(p) for p in sharded}
    sq = buf[-1].clone()
    for p in params:
        if id(p) not in sharded_ids:
            sq += p.grad.float().pow(2).sum()
    total = sq.sqrt()
    if max_norm > 0:
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_([p.grad for p in params], coef.to(params[0].grad.dtype))
    return total
