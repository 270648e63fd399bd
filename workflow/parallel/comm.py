"""One counter for every collective and point-to-point message a training run makes.

Every message a worker sends goes through this module (or reports to it), so the counts in
``metrics.jsonl``, ``result.json``, the summaries and the tables are *measured*: they are
incremented where the call is made, not computed from a formula.

- :meth:`CommCounter.all_reduce`, :meth:`CommCounter.broadcast`, :meth:`CommCounter.barrier`:
  ``torch.distributed`` collectives, counted then issued;
- :meth:`CommCounter.exchange`: point-to-point ``isend``/``irecv`` to a list of peers
  (``torch.distributed.batch_isend_irecv``), counted per peer;
- :meth:`CommCounter.ddp_hook`: a DDP communication hook (``register_comm_hook``) that counts
  each gradient bucket DDP all-reduces, then runs PyTorch's own ``allreduce_hook``;
- :meth:`CommCounter.record`: for code that issues collectives elsewhere (DTensor's
  tensor-parallel collectives counted with ``CommDebugMode``, simulated sync points).

Units: ``bytes`` is the payload of the call on this worker (``numel * element_size`` of the
tensor handed to the collective, or sent to a peer); the bytes a ring or tree algorithm moves
on the wire depend on the backend and are not modelled. Counts are kept per *kind* (what the
message was for: ``grad_all_reduce``, ``outer_all_reduce``, ``gossip``, ``metrics``, ``eval``,
``checkpoint``, ``tp_forward``, ``tp_backward``, ...), per worker, cumulative over the attempts
of a run (the checkpoint stores them).

``bytes_per_token`` (the x axis of the comm-vs-loss figures) = the bytes all workers sent for
training (every kind but the evaluation and checkpoint bookkeeping; the per-step loss
reductions count), summed, divided by the tokens the run trained on (all workers together), so
strategies with different world sizes and batch sizes share one axis; ``bytes_per_token_all``
counts every message, the evaluations' too (they depend on ``val_loss_every``, not the method).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Protocol, Sequence

import torch
import torch.distributed as dist

#: Kinds that are bookkeeping of the run rather than training; they are counted like every other
#: message but left out of ``bytes_per_token`` (kept in ``bytes_per_token_all``).
BOOKKEEPING_KINDS = ("eval", "checkpoint")


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class CommRecorder(Protocol):
    """What counts a message: :class:`CommCounter` (or any object with this ``record``)."""

    def record(self, kind: str, calls: int, nbytes: int) -> None: ...


def counted_all_reduce(tensor: torch.Tensor, kind: str, counter: CommRecorder | None = None,
                       op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    """All-reduce ``tensor`` in place over ``group`` and count it: one call of
    ``numel x element_size`` payload bytes under ``kind`` (None: not counted). Returns ``tensor``."""
    dist.all_reduce(tensor, op=op, group=group)
    if counter is not None:
        counter.record(kind, 1, _nbytes(tensor))
    return tensor


def counted_exchange(send: torch.Tensor, send_to: Sequence[int], recv_from: Sequence[int], kind: str,
                     counter: CommRecorder | None = None, group=None) -> dict[int, torch.Tensor]:
    """Send ``send`` to every rank of ``send_to`` and receive one tensor of its shape from every
    rank of ``recv_from`` (ranks of ``group``), as point-to-point messages posted together
    (``batch_isend_irecv``) and awaited: no collective involves other ranks.

    Counting: each message sent is one call of ``numel x element_size`` bytes under ``kind``; each
    received under ``kind + "_recv"`` (so the sent total is not counted twice).

    Returns:
        ``{rank: received tensor}`` for the ranks of ``recv_from``.
    """
    send = send.detach().contiguous()
    received = {j: torch.empty_like(send) for j in recv_from}
    ops = [dist.P2POp(dist.isend, send, group=group, group_peer=k) for k in send_to]
    ops += [dist.P2POp(dist.irecv, received[j], group=group, group_peer=j) for j in recv_from]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    if counter is not None:
        for _ in send_to:
            counter.record(kind, 1, _nbytes(send))
        for j in recv_from:
            counter.record(kind + "_recv", 1, _nbytes(received[j]))
    return received


class CommCounter:
    """Calls and payload bytes of this worker's messages, by kind.

    Args:
        enabled: False in a single process (no process group): the collective helpers then
            return their input and count nothing, since nothing is sent.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)

    # ---- counting -----------------------------------------------------------------
    def record(self, kind: str, calls: int, nbytes: int) -> None:
        """Add ``calls`` messages of ``nbytes`` payload bytes in total under ``kind``."""
        self.calls[kind] += int(calls)
        self.bytes[kind] += int(nbytes)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def sent(self, exclude: tuple[str, ...] = ("checkpoint",)) -> tuple[int, int]:
        """(calls, bytes) sent so far, without received-side counts and the ``exclude`` kinds
        (by default checkpoint bookkeeping, which depends on when a run was interrupted)."""
        keep = [k for k in self.calls if not k.endswith("_recv") and k not in exclude]
        return sum(self.calls[k] for k in keep), sum(self.bytes[k] for k in keep)

    def snapshot(self) -> dict:
        """``{"calls": {kind: n}, "bytes": {kind: n}}`` (plain ints; JSON- and checkpoint-safe)."""
        return {"calls": dict(sorted(self.calls.items())), "bytes": dict(sorted(self.bytes.items()))}

    def state_dict(self) -> dict:
        return self.snapshot()

    def load_state_dict(self, state: dict) -> None:
        self.calls = defaultdict(int, {k: int(v) for k, v in state.get("calls", {}).items()})
        self.bytes = defaultdict(int, {k: int(v) for k, v in state.get("bytes", {}).items()})

    # ---- collectives ----------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, kind: str, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
        """All-reduce ``tensor`` in place (``op`` over ``group``, default the world), counted once
        (:func:`counted_all_reduce`); a no-op without a process group."""
        if self.enabled:
            counted_all_reduce(tensor, kind, self, op=op, group=group)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int, kind: str, group=None) -> torch.Tensor:
        """Broadcast ``tensor`` from global rank ``src`` in place; counted on every worker."""
        if self.enabled:
            self.record(kind, 1, _nbytes(tensor))
            dist.broadcast(tensor, src=src, group=group)
        return tensor

    def barrier(self, kind: str = "checkpoint") -> None:
        """A barrier (one call, no payload)."""
        if self.enabled:
            self.record(kind, 1, 0)
            dist.barrier()

    # ---- DDP --------------------------------------------------------------------------
    def ddp_hook(self, kind: str = "grad_all_reduce"):
        """A DDP communication hook that counts each gradient bucket, then all-reduces it with
        PyTorch's ``default_hooks.allreduce_hook`` (the same arithmetic as DDP's default).

        Usage: ``ddp.register_comm_hook(process_group, counter.ddp_hook())``.
        Source: https://pytorch.org/docs/stable/ddp_comm_hooks.html
        """
        from torch.distributed.algorithms.ddp_comm_hooks import (
            default_hooks,  # deferred heavy import: DDP comm hooks, only for DDP
        )

        def hook(process_group, bucket):
            self.record(kind, 1, _nbytes(bucket.buffer()))
            return default_hooks.allreduce_hook(process_group, bucket)

        return hook


def summarize(per_worker: Iterable[dict], tokens: int) -> dict:
    """The ``communication`` record of result.json from every worker's :meth:`CommCounter.snapshot`.

    Returns:
        ``{"per_worker": [...], "total_calls", "total_bytes", "training_bytes",
        "calls_by_kind", "bytes_by_kind", "bytes_per_token", "bytes_per_token_all"}``: totals
        are sums over workers of sent messages (``*_recv`` kinds left out); ``training_bytes``
        also leaves out :data:`BOOKKEEPING_KINDS`; ``bytes_per_token`` = training_bytes /
        ``tokens``, ``bytes_per_token_all`` = total_bytes / ``tokens``.
    """
    per_worker = list(per_worker)
    calls: dict[str, int] = defaultdict(int)
    nbytes: dict[str, int] = defaultdict(int)
    for worker in per_worker:
        for kind, n in worker["calls"].items():
            calls[kind] += n
        for kind, n in worker["bytes"].items():
            nbytes[kind] += n
    sent = {k: v for k, v in nbytes.items() if not k.endswith("_recv")}
    total_bytes = sum(sent.values())
    training = sum(v for k, v in sent.items() if k not in BOOKKEEPING_KINDS)
    return {
        "per_worker": per_worker,
        "calls_by_kind": dict(sorted(calls.items())),
        "bytes_by_kind": dict(sorted(nbytes.items())),
        "total_calls": sum(n for k, n in calls.items() if not k.endswith("_recv")),
        "total_bytes": total_bytes,
        "training_bytes": training,
        "bytes_per_token": training / tokens if tokens else None,
        "bytes_per_token_all": total_bytes / tokens if tokens else None,
    }
