"""Tensor-parallel blocks (tp, spd, parallel), their two execution modes and measured communication.

The full specification, with the derivation of every count, is ``docs/tensor_parallel.md``.

Notation: P = ``tp_size`` shards, shard p in [0, P); H = n_head heads (P divides H: shard p owns
heads p*H/P .. (p+1)*H/P - 1, Hl = H/P of them); F = mlp_ratio * C MLP width (shard p owns
hidden units p*F/P .. (p+1)*F/P - 1); S = shards held by this process (P when simulated, 1 in
real mode). Weights have the shapes of the unsharded ``sequential`` block (same names, same
count: 12 C^2 + 2 C per layer without biases), so all three block types have exactly the
parameters of GPT-2's block. ``attn.c_attn.weight`` [3C, C] is stored shard-major: rows
p*3C/P .. (p+1)*3C/P - 1 are shard p's [q; k; v] rows (C/P each) - with P = 1 the GPT-2 layout.
A row-parallel projection (attention ``c_proj`` [C, C], MLP ``c_proj`` [C, F]) gives each shard
the input columns of its heads / hidden units, so each shard produces a *partial* output
[B, T, C] and the sum over shards is the unsharded output.

Residual stream: *replicated* (one [B, T, C] tensor, equal on all shards) or *split*
(:class:`ShardedStream`: the replicated value ``base`` at the split point plus per-shard
partial updates ``delta`` [S, B, T, C]; shard p's stream is base + delta[p]).

Collectives (Megatron-LM's conjugate operators, Shoeybi et al. 2019, arXiv 1909.08053, section 3):
  * f: identity forward, all-reduce (sum over shards) of the gradient backward;
  * g: all-reduce (sum over shards) forward, identity backward.
  * split (replicated -> split stream): f on ``base``.  merge (split -> replicated):
    base + g(delta), i.e. one all-reduce of a [B, T, C] tensor.

Blocks (forward; the backward follows from f and g):
  * ``tp`` (Megatron, Fig. 3-4): merge if split; h = ln_1(x); each shard computes its heads from
    f(h) (column-parallel QKV), its partial projection (row-parallel c_proj), g sums; x += that;
    the same for the MLP (column-parallel c_fc, row-parallel c_proj, g). 2 forward and 2
    backward all-reduces. Mathematically the unsharded sequential block.
  * ``spd`` (Sync-Point Drop, Kim et al. 2025, arXiv 2502.20727): on shard p with stream
    s_p (= x after a split), o_p = partial attention output from ln_1(s_p); the all-reduce after
    attention is dropped: m_p = partial MLP output from ln_2(s_p + o_p); one merge at the
    end of the block: x_out = base + sum_p (delta_p + o_p + m_p). 1 forward all-reduce; 1
    backward all-reduce where it splits a replicated stream (none when it continues a stream
    a ``parallel`` block left split).
  * ``parallel``: the spd shard computation without the closing merge: the shards keep their
    own residual streams s_p + o_p + m_p. The next spd, tp, unsharded block or the model's
    end (before ln_f) merges them. No collective inside; the split costs 1 backward all-reduce,
    the merge 1 forward all-reduce (where the seed counted 2 at the model's boundaries).

Execution modes (``GPTConfig.tp_mode``), one math:
  * simulated: one process holds all P shards (S = P). A merge is the sum over the shard
    dimension, the split's backward all-reduce is autograd's sum over the broadcast shard
    dimension; the dropped syncs leave exactly the per-shard partial sums of a real run.
  * real: :func:`parallelize_gpt` shards the model over a 1-D tensor-parallel DeviceMesh (S = 1).
    tp blocks use ``torch.distributed.tensor.parallel`` (``ColwiseParallel`` on c_attn / c_fc,
    ``RowwiseParallel`` on the c_proj's: DTensor issues f's and g's all-reduces); spd and
    parallel blocks, whose dropped / deferred syncs DTensor cannot express, slice their weights
    and use the hand-written :class:`_SplitReal` (f) and :class:`_MergeReal` (g).

Measured communication: every sync point counts the collective that runs (real) or that a real
run would make (simulated) in the model's :class:`TPCommCounter` (calls and payload bytes =
numel x element size of the all-reduced tensor, forward / backward / once-per-step gradient
sync separately). :func:`tp_comm_counts` reads it; :class:`TPCommMode` (a
``torch.distributed.tensor.debug.CommDebugMode`` that also sums bytes) measures the
collectives independently of the counters (tests check they agree).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from workflow.model.blocks import Block, activation, make_norm, register_block, rotate_qk
from workflow.parallel.mappings import ShardedStream, TPRuntime
from workflow.model.spec import GPTConfig

__all__ = [
    "TPRuntime",
    "ShardedStream",
    "TPLinear",
    "TPBlockBase",
    "TensorParallelBlock",
    "SPDBlock",
    "ParallelStreamsBlock",
]


class TPLinear(nn.Linear):
    """``nn.Linear`` whose weight can be the local shard of a DTensor (real mode, tp blocks).

    ``ColwiseParallel`` / ``RowwiseParallel`` turn the weight into a DTensor parameter and
    install the input / output redistribution hooks; :meth:`localize` then keeps only the
    local shard as a plain ``nn.Parameter`` (so DDP over the data-parallel group, the
    optimizers and per-rank checkpoints see ordinary tensors) and ``forward`` wraps it as the
    DTensor again (``DTensor.from_local``: no communication; its gradient is the local shard's).
    Simulated (never localized), it is an ``nn.Linear``.
    """

    _mesh = None
    _placements = None

    def localize(self) -> None:
        from torch.distributed.tensor import (
            DTensor,  # deferred heavy import: DTensor, only in real tensor-parallel mode
        )

        weight = self.weight
        if isinstance(weight, DTensor):
            self._mesh, self._placements = weight.device_mesh, tuple(weight.placements)
            self.register_parameter("weight", nn.Parameter(weight.to_local().detach().clone(),
                                                           requires_grad=weight.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self._placements is not None:
            from torch.distributed.tensor import (
                DTensor,  # deferred heavy import: DTensor, only in real tensor-parallel mode
            )

            if isinstance(x, DTensor):
                weight = DTensor.from_local(weight, self._mesh, self._placements, run_check=False)
        return F.linear(x, weight, self.bias)


class _TPAttention(nn.Module):
    """Causal self-attention with shard-major QKV (module docstring): ``c_attn`` C -> 3C,
    ``c_proj`` C -> C (a residual projection: scaled init)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.tp_size = config.n_head, config.head_dim, config.tp_size
        self.config = config
        self.qkv_shards = config.tp_size  # c_attn rows: shard-major [q; k; v] (1 once sharded for real)
        self.c_attn = TPLinear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = TPLinear(config.n_embd, config.n_embd, bias=False)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv [S, B, T, 3 C/P] or [B, T, S * 3 C/P] (replicated input) -> y [S, B, T, C/P]."""
        hl, hd = self.n_head // self.tp_size, self.head_dim
        if qkv.dim() == 3:  # replicated input: one matmul for all local shards
            B, T = qkv.shape[:2]
            S = qkv.shape[2] // (3 * hl * hd)
            qkv = qkv.view(B, T, S, 3, hl, hd).permute(3, 2, 0, 4, 1, 5)  # [3, S, B, hl, T, hd]
        else:
            S, B, T = qkv.shape[:3]
            qkv = qkv.view(S, B, T, 3, hl, hd).permute(3, 0, 1, 4, 2, 5)
        q, k, v = (t.reshape(S * B, hl, T, hd) for t in qkv.unbind(0))
        q, k = rotate_qk(q, k, self.config)  # per head, so per shard of heads
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [S*B, hl, T, hd]
        return y.view(S, B, hl, T, hd).permute(0, 1, 3, 2, 4).reshape(S, B, T, hl * hd)

    def replicated(self, h: torch.Tensor) -> torch.Tensor:
        """Megatron attention on a replicated [B, T, C] input -> the summed output [B, T, C]
        (simulated: full-width c_proj = sum of the shards' partial outputs; real: c_attn is
        ColwiseParallel, c_proj RowwiseParallel and DTensor all-reduces)."""
        y = self._attend(self.c_attn(h))  # [S, B, T, C/P]
        S, B, T, w = y.shape
        return self.c_proj(y.permute(1, 2, 0, 3).reshape(B, T, S * w))

    def sharded(self, h: torch.Tensor) -> torch.Tensor:
        """Per-shard partial outputs, no collective: h [B, T, C] (replicated) or [S, B, T, C]
        (split stream) -> [S, B, T, C], entry p = shard p's heads through its c_proj columns."""
        w_qkv = self.c_attn.weight  # [S * 3C/P, C]
        if h.dim() == 3:
            qkv = F.linear(h, w_qkv)
        else:
            S = h.shape[0]
            qkv = torch.matmul(h, w_qkv.view(S, -1, h.shape[-1]).transpose(1, 2).unsqueeze(1))
        y = self._attend(qkv)  # [S, B, T, C/P]
        S, w = y.shape[0], y.shape[-1]
        w_out = self.c_proj.weight.view(-1, S, w).permute(1, 2, 0)  # [S, C/P, C]
        return torch.matmul(y, w_out.unsqueeze(1))


class _TPMLP(nn.Module):
    """MLP C -> F (``config.mlp_activation``, GELU tanh by default) -> C with shardable
    ``c_fc`` / ``c_proj``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.act = config.mlp_activation
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = TPLinear(config.n_embd, hidden, bias=False)
        self.c_proj = TPLinear(hidden, config.n_embd, bias=False)

    def replicated(self, h: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, C]: column-parallel c_fc, row-parallel c_proj (summed)."""
        return self.c_proj(activation(self.c_fc(h), self.act))

    def sharded(self, h: torch.Tensor) -> torch.Tensor:
        """[S, B, T, C] (shard p's input) -> [S, B, T, C] partial outputs, no collective."""
        S, C = h.shape[0], h.shape[-1]
        w_fc = self.c_fc.weight.view(S, -1, C).transpose(1, 2).unsqueeze(1)  # [S, 1, C, F/P]
        a = activation(torch.matmul(h, w_fc), self.act)  # [S, B, T, F/P]
        w_out = self.c_proj.weight.view(C, S, -1).permute(1, 2, 0).unsqueeze(1)  # [S, 1, F/P, C]
        return torch.matmul(a, w_out)


class TPBlockBase(Block):
    """Common modules of the tensor-parallel blocks: ``ln_1``, ``attn`` (c_attn, c_proj),
    ``ln_2``, ``mlp`` (c_fc, c_proj) - the names and shapes of the sequential block.

    ``forward(state)`` takes and returns a replicated [B, T, C] tensor or a
    :class:`ShardedStream`. ``runtime`` (:class:`TPRuntime`) is shared with the GPT that owns
    the block (a block built alone gets its own simulated runtime).
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.ln_1 = make_norm(config, self.default_norm)
        self.attn = _TPAttention(config)
        self.ln_2 = make_norm(config, self.default_norm)
        self.mlp = _TPMLP(config)
        self.runtime = TPRuntime(config.tp_size)

    def sharded_linears(self) -> dict[str, tuple[TPLinear, int]]:
        """Sharded projections -> (module, dimension of its weight that is split over shards)."""
        return {"attn.c_attn": (self.attn.c_attn, 0), "attn.c_proj": (self.attn.c_proj, 1),
                "mlp.c_fc": (self.mlp.c_fc, 0), "mlp.c_proj": (self.mlp.c_proj, 1)}

    def shard_local_params(self) -> list[nn.Parameter]:
        """Replicated parameters used inside shard-local computation, whose gradient is a
        per-shard partial sum in real mode (summed by :func:`tp_reduce_grads`)."""
        return []


@register_block("tp")
class TensorParallelBlock(TPBlockBase):
    """Megatron-LM tensor-parallel block (Shoeybi et al. 2019, arXiv 1909.08053, Fig. 3-4).

    Input: replicated x [B, T, C] (a split stream is merged first: 1 forward all-reduce).
    Forward, on every shard p:
        h = ln_1(x)                        (replicated; ln weights get full gradients)
        q, k, v of shard p's heads = f(h) @ c_attn rows of shard p     (column-parallel)
        a_p = attention(q, k, v) @ c_proj columns of shard p          (row-parallel, partial)
        x = x + g(sum_p a_p)               all-reduce #1
        u_p = act(f(ln_2(x)) @ c_fc rows of shard p)                 (column-parallel)
        x = x + g(sum_p u_p @ mlp.c_proj columns of shard p)          all-reduce #2
    Backward: g is the identity; each f all-reduces the gradient of its input (2 all-reduces).
    Equals the unsharded ``sequential`` block with the same weights (c_attn rows permuted to
    the shard-major layout). Real mode: ``ColwiseParallel`` (c_attn, c_fc) and
    ``RowwiseParallel`` (both c_proj) from ``torch.distributed.tensor.parallel`` issue the
    collectives. Parameters: 12 C^2 + 2 C. Counts: 2 forward, 2 backward per layer.
    """

    def forward(self, state):
        rt = self.runtime
        x = rt.merge(state) if isinstance(state, ShardedStream) else state
        x = x + rt.count_g(self.attn.replicated(rt.count_f(self.ln_1(x))))
        x = x + rt.count_g(self.mlp.replicated(rt.count_f(self.ln_2(x))))
        return x


class _ShardLocalBlock(TPBlockBase):
    """spd / parallel: the shard-local body, with (spd) or without (parallel) the closing merge."""

    merges = True

    def shard_local_params(self) -> list[nn.Parameter]:
        return [*self.ln_1.parameters(), *self.ln_2.parameters()]

    def forward(self, state):
        rt = self.runtime
        if isinstance(state, ShardedStream):
            base, base_f, delta = state.base, state.base_f, state.delta
            s = base_f + delta
        else:  # split a replicated stream: f (1 backward all-reduce)
            base, delta = state, None
            base_f = s = rt.split(state)
        prev = delta
        o = self.attn.sharded(self.ln_1(s))  # [S, B, T, C] partial attention outputs
        delta = o if delta is None else delta + o
        m = self.mlp.sharded(self.ln_2(base_f + delta))  # shard p's MLP reads its own stream
        if self.merges:
            return rt.merge(ShardedStream(base, base_f, delta + m))
        if rt.parallel_merge == "reference":  # keep what its merge needs: prev and this block's o + m
            return ShardedStream(base, base_f, delta + m, prev=prev, last=o + m)
        return ShardedStream(base, base_f, delta + m)


@register_block("spd")
class SPDBlock(_ShardLocalBlock):
    """Sync-Point Drop block (Kim et al. 2025, arXiv 2502.20727): the all-reduce after
    attention is dropped.

    Input: a replicated x [B, T, C] (split here: s_p = f(x), base = x, delta_p = 0) or a split
    stream (base, s_p = base + delta_p) left by ``parallel`` blocks. Forward, on every shard p:
        o_p = attention(ln_1(s_p)) over shard p's heads @ c_proj columns of shard p  (partial)
        m_p = mlp_p(ln_2(s_p + o_p))      shard p's MLP reads its stream plus ITS OWN partial
                                          attention output (column c_fc rows / row c_proj
                                          columns of shard p; partial)
        x_out = base + g(sum_p (delta_p + o_p + m_p))   the block's only all-reduce
    Backward: g is the identity; the split's f all-reduces the gradient of x (1 all-reduce,
    only when this block split a replicated stream). ln_1 / ln_2 weights act per shard: their
    gradients are summed over shards once per step (:func:`tp_reduce_grads`).
    Parameters: 12 C^2 + 2 C. Counts: 1 forward, 1 backward per layer (0 backward after a
    parallel block).
    """

    merges = True


@register_block("parallel")
class ParallelStreamsBlock(_ShardLocalBlock):
    """Per-shard residual streams: the spd shard computation without its all-reduce.

    Forward on every shard p (stream s_p; a replicated input is split by f first):
        o_p = partial attention(ln_1(s_p));  m_p = partial mlp(ln_2(s_p + o_p))
        s_p <- s_p + o_p + m_p            no collective: shard p continues with its own stream
    The streams are merged (x = base + g(sum_p delta_p), 1 forward all-reduce) where the model
    needs one stream again: at the next spd block's closing all-reduce (no extra collective),
    before a tp or unsharded block, or before ``ln_f`` at the model's end. Backward: the f of
    the split (1 all-reduce per split region). The seed counted 0 per layer and 2 at the
    model's boundaries; measured, a run of parallel blocks costs 1 forward + 1 backward
    all-reduce in total, folded into a closing spd block's where there is one.
    Parameters: 12 C^2 + 2 C.
    """

    merges = False


def describe_pattern(config: GPTConfig) -> str:
    """Short text: the per-layer pattern and the analytic / nominal sync counts."""
    layers = config.layer_block_types
    syncs = config.tp_syncs()
    return (f"pattern={','.join(layers)} tp_size={config.tp_size} tp_mode={config.tp_mode} "
            f"syncs per forward: analytic {syncs['forward']} (nominal {syncs['nominal']}), "
            f"per backward {syncs['backward']}")
