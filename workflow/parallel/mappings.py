"""Tensor-parallel sync points as autograd functions (Megatron-LM ``mappings.py``: f and g).

f: identity forward, all-reduce of the gradient backward; g: all-reduce forward, identity
backward (Shoeybi et al. 2019, arXiv 1909.08053, section 3). Real mode runs the collectives
over the tp process group; simulated mode sums over the shard dimension of one process.
Every sync point counts into the model's :class:`TPCommCounter` (calls, bytes, phase).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

PHASES = ("forward", "backward", "grad")


class TPCommCounter:
    """Tensor-parallel collectives since the last :meth:`reset`, by phase.

    Phases: ``forward`` and ``backward`` (activation all-reduces in the forward / backward
    pass), ``grad`` (the once-per-optimizer-step all-reduce of :func:`tp_reduce_grads`).
    ``passes`` counts forward passes through the model. Bytes are payload bytes of the
    all-reduced tensors (numel x element size; a ring all-reduce sends 2 (P-1)/P of that per
    rank).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = {phase: 0 for phase in PHASES}
        self.bytes = {phase: 0 for phase in PHASES}
        self.passes = 0

    def add(self, phase: str, nbytes: int) -> None:
        self.calls[phase] += 1
        self.bytes[phase] += int(nbytes)

    def snapshot(self) -> dict:
        """``{"forward": {"calls", "bytes"}, "backward": {...}, "grad": {...}, "passes": n}``."""
        out: dict = {phase: {"calls": self.calls[phase], "bytes": self.bytes[phase]} for phase in PHASES}
        out["passes"] = self.passes
        return out


@dataclass
class TPRuntime:
    """How a model's tensor-parallel blocks communicate (shared by all blocks of one GPT).

    Attributes:
        tp_size: number of shards P.
        mode: "simulated" (this process holds all P shards) or "real" (one shard, collectives
            on ``group``).
        group: the tensor-parallel process group (real mode), else None.
        mesh: the 1-D tensor-parallel DeviceMesh (real mode), else None.
        rank: this process's shard index (real mode), else 0.
        counter: the :class:`TPCommCounter` the sync points add to.
        parallel_merge: "sum" or "reference": how :meth:`merge` joins a stream that a run of
            ``parallel`` blocks left (``GPTConfig.parallel_merge``, docs/tensor_parallel.md).
    """

    tp_size: int
    mode: str = "simulated"
    group: object = None
    mesh: object = None
    rank: int = 0
    counter: TPCommCounter = None  # type: ignore[assignment]
    parallel_merge: str = "sum"

    def __post_init__(self) -> None:
        if self.counter is None:
            self.counter = TPCommCounter()

    @property
    def local_shards(self) -> int:
        """S: shards this process computes (P simulated, 1 real)."""
        return self.tp_size if self.mode == "simulated" else 1

    # ---- sync points ---------------------------------------------------------------

    @torch.compiler.disable
    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Megatron's f on a replicated [B, T, C] tensor that enters shard-local computation:
        identity forward; backward, the sum over shards of the gradient (1 all-reduce)."""
        if self.mode == "real":
            return _SplitReal.apply(x, self)
        return _CountBackward.apply(x, self)

    @torch.compiler.disable
    def merge(self, stream: "ShardedStream") -> torch.Tensor:
        """The replicated stream (g: 1 all-reduce forward of one [B, T, C] tensor, identity
        backward):

        * ``sum`` (and any stream an spd / tp block left): ``base + sum_p delta_p``;
        * ``reference`` on a stream a run of parallel blocks left (``stream.last`` set):
          ``base + (1/P) sum_p prev_p + sum_p last_p`` = the mean over shards of the streams
          before the run's last block plus the sum of that block's partial outputs
          (NanoTransformer ``tensor_parallel_model.py``: ``Parallel_Block`` with
          ``last_block``), in the same single all-reduce of ``prev_p / P + last_p``.
        """
        if self.parallel_merge == "reference" and stream.last is not None:
            parts = stream.last if stream.prev is None else stream.prev / self.tp_size + stream.last
        else:
            parts = stream.delta
        if self.mode == "real":
            return stream.base + _MergeReal.apply(parts[0], self)
        return stream.base + _MergeSimulated.apply(parts, self)

    @torch.compiler.disable
    def count_f(self, x: torch.Tensor) -> torch.Tensor:
        """Identity marking a tp block's f: counts the backward all-reduce of x's gradient (real
        mode: DTensor runs it inside the ColwiseParallel projection right after this point)."""
        return _CountBackward.apply(x, self)

    @torch.compiler.disable
    def count_g(self, x: torch.Tensor) -> torch.Tensor:
        """Identity marking a tp block's g: counts the forward all-reduce that produced x
        (simulated: the full-width projection is the sum of the shards' partial outputs; real:
        RowwiseParallel all-reduced them)."""
        self.counter.add("forward", x.numel() * x.element_size())
        return x

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the tensor-parallel group (real mode; a no-op when simulated)."""
        if self.mode == "real":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor


@dataclass
class ShardedStream:
    """A split residual stream: shard p's stream is ``base_f + delta[p]``.

    Attributes:
        base: [B, T, C] replicated value at the split point (the merge adds it once).
        base_f: ``runtime.split(base)`` (the same values; its gradient is summed over shards).
        delta: [S, B, T, C] the shards' accumulated partial updates since the split.
        prev: [S, B, T, C] ``delta`` before the last ``parallel`` block (None: that block split
            the stream), for the ``reference`` merge; None after spd / tp.
        last: [S, B, T, C] the last ``parallel`` block's partial outputs (``delta - prev``),
            None when an spd / tp block made the stream.
    """

    base: torch.Tensor
    base_f: torch.Tensor
    delta: torch.Tensor
    prev: torch.Tensor | None = None
    last: torch.Tensor | None = None


class _CountBackward(torch.autograd.Function):
    """Identity; backward counts one all-reduce of the gradient (simulated f, or the marker
    beside DTensor's f in real mode). In simulated mode autograd's broadcasting sums the
    shards' gradients: that sum is the all-reduce."""

    @staticmethod
    def forward(ctx, x, runtime):
        ctx.runtime = runtime
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.runtime.counter.add("backward", grad.numel() * grad.element_size())
        return grad, None


class _MergeSimulated(torch.autograd.Function):
    """g over the shard dimension: [S, B, T, C] -> sum over S (counts 1 forward all-reduce of
    one shard's [B, T, C]); backward hands every shard the same gradient (identity)."""

    @staticmethod
    def forward(ctx, delta, runtime):
        ctx.shards = delta.shape[0]
        out = delta.sum(0)
        runtime.counter.add("forward", out.numel() * out.element_size())
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad.unsqueeze(0).expand(ctx.shards, *grad.shape), None


class _SplitReal(torch.autograd.Function):
    """Megatron's f (hand-written, real mode): identity forward, all-reduce of the gradient
    over the tensor-parallel group backward (counted)."""

    @staticmethod
    def forward(ctx, x, runtime):
        ctx.runtime = runtime
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        rt = ctx.runtime
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=rt.group)
        rt.counter.add("backward", grad.numel() * grad.element_size())
        return grad, None


class _MergeReal(torch.autograd.Function):
    """Megatron's g (hand-written, real mode): all-reduce over the tensor-parallel group forward
    (counted), identity backward."""

    @staticmethod
    def forward(ctx, x, runtime):
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=runtime.group)
        runtime.counter.add("forward", out.numel() * out.element_size())
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None
