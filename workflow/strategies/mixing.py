"""Gossip communication: topologies, the ``mixing_matrix``, one gossip round, ``consensus_distance``.

The mixing matrix W (doubly stochastic, symmetric) of a ring, exponential or complete graph over
``world_size`` workers; :func:`gossip` computes x_i <- sum_j W_ij x_j with point-to-point
``isend`` / ``irecv`` to the neighbours (or one all-reduce for a uniform W), counting every
message. Koloskova et al. 2020 (arXiv 2003.10422); DeMuon's ``graph.py`` (MozarTuring/DeMuon).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist

from workflow.parallel.comm import CommRecorder, counted_all_reduce, counted_exchange

TOPOLOGIES = ("ring", "exp", "complete")


class Neighbours(NamedTuple):
    """The ranks one rank exchanges with in one gossip step (sorted, without the rank itself).

    recv_from: ranks j with W_ij > 0 (their x_j is needed for row i).
    send_to:   ranks k with W_ki > 0 (they need x_i). Equal to recv_from on undirected graphs.
    """

    recv_from: list[int]
    send_to: list[int]


# --------------------------------------------------------------------------------------
# Topologies
# --------------------------------------------------------------------------------------


def _offsets(topology: str, n: int) -> list[int]:
    """Offsets o in [1, n) such that rank i receives from rank (i + o) mod n (deduplicated)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"train.strategy key 'topology': unknown topology {topology!r}; "
                         f"valid: {list(TOPOLOGIES)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"mixing_matrix: number of workers must be an int >= 1, got {n!r}")
    if topology == "ring":
        raw = [1, n - 1]
    elif topology == "exp":
        raw = [2 ** k for k in range(max(n - 1, 1).bit_length()) if 2 ** k < n]
    else:
        raw = list(range(1, n))
    return sorted({o % n for o in raw} - {0})


def mixing_matrix(topology: str, n: int) -> torch.Tensor:
    """The doubly stochastic mixing matrix W of ``topology`` on ``n`` workers.

    ``W[i, j] = 1 / (d + 1)`` when j = i or rank i receives from rank j, else 0, where d is
    the (common) in-degree of the circulant graph (module docstring). Row i is what worker i
    computes: ``x_i <- sum_j W[i, j] x_j``.

    Args:
        topology: ``"ring"``, ``"exp"`` or ``"complete"``.
        n: number of workers (world_size), >= 1.

    Returns:
        float64 tensor [n, n], rows and columns summing to 1 (exactly, up to float rounding).

    Raises:
        ValueError: unknown topology (names ``train.strategy`` key ``topology``), n < 1.

    Source: uniform-weight static exponential graph, Ying et al. 2021 (arXiv 2110.13363);
    DeMuon experiments, arXiv 2510.01377.
    """
    offsets = _offsets(topology, n)
    w = 1.0 / (len(offsets) + 1)
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        W[i, i] = w
        for o in offsets:
            W[i, (i + o) % n] = w
    return W


def _neighbours_of(W: torch.Tensor, rank: int) -> Neighbours:
    w = W.tolist()
    recv_from = [j for j in range(len(w)) if j != rank and w[rank][j] != 0]
    send_to = [k for k in range(len(w)) if k != rank and w[k][rank] != 0]
    return Neighbours(recv_from, send_to)


def neighbours(topology: str, n: int, rank: int) -> Neighbours:
    """Ranks that ``rank`` receives from and sends to under ``topology`` on ``n`` workers.

    Raises:
        ValueError: unknown topology, n < 1, or rank outside [0, n).
    """
    if not 0 <= rank < n:
        raise ValueError(f"neighbours: rank {rank} outside [0, {n})")
    return _neighbours_of(mixing_matrix(topology, n), rank)


# --------------------------------------------------------------------------------------
# Communication
# --------------------------------------------------------------------------------------



def _is_uniform(W: torch.Tensor) -> bool:
    n = W.size(0)
    return bool(torch.all(W == W[0, 0])) and math.isclose(float(W[0, 0]), 1.0 / n)


def _group_size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(x: torch.Tensor, counter: CommRecorder | None = None, kind: str = "gossip",
                    group=None) -> torch.Tensor:
    """The average of ``x`` over the ranks of ``group``, by one all-reduce (SUM, then / size).

    Args:
        x: tensor of any shape, same shape and dtype on every rank (not modified).
        counter: receives ``record(kind, 1, nbytes)``; None = not counted.
        group: process group (None = the default group, all ranks).
    Returns:
        new tensor, the mean over ranks (a copy of ``x`` when there is one rank).
    """
    out = x.detach().clone()
    n = _group_size(group)
    if n == 1:
        return out
    counted_all_reduce(out, kind, counter, group=group)
    return out.div_(n)


def gossip(x: torch.Tensor, W: torch.Tensor, counter: CommRecorder | None = None, *,
           kind: str = "gossip", group=None, all_reduce_if_complete: bool = True) -> torch.Tensor:
    """One gossip step: worker i returns ``sum_j W[i, j] x_j`` using its neighbours' ``x_j``.

    Sends ``x`` to every rank k with W[k, i] > 0 and receives ``x_j`` from every rank j with
    W[i, j] > 0 (k, j != i; ranks of ``group``), all as non-blocking point-to-point messages
    posted together (``batch_isend_irecv``) and awaited; no collective is used. The sum
    runs over j = 0..n-1 in order (x_i at j = i), so ranks with identical rows compute
    bitwise-identical results. On a uniform W (complete graph, 1/n everywhere) and with
    ``all_reduce_if_complete`` the result is computed by :func:`all_reduce_mean` instead (the
    same average within float rounding, fewer bytes on the wire).

    Args:
        x: tensor of any shape (usually the flat parameter vector), same shape and dtype on
            every rank; not modified.
        W: [n, n] doubly stochastic mixing matrix, n = size of ``group`` (:func:`mixing_matrix`).
        counter: receives ``record(kind, 1, nbytes)`` per message sent and
            ``record(kind + "_recv", 1, nbytes)`` per message received (the all-reduce
            shortcut: ``record(kind, 1, nbytes)``).
        kind: what the message is for (``"gossip"``, ``"gossip_tracker"``).
        group: process group of the workers (None = the default group).
        all_reduce_if_complete: allow the all-reduce shortcut on a uniform W.

    Returns:
        new tensor of ``x``'s shape and dtype.

    Raises:
        ValueError: W is not [n, n] for the group's size n.
    """
    n = _group_size(group)
    if tuple(W.shape) != (n, n):
        raise ValueError(f"gossip: mixing_matrix has shape {tuple(W.shape)}, expected ({n}, {n}) "
                         "for the number of workers")
    if n == 1:
        return x.detach().clone()
    if all_reduce_if_complete and _is_uniform(W):
        return all_reduce_mean(x, counter, kind, group)
    rank = dist.get_rank(group)
    x = x.detach().contiguous()
    peers = _neighbours_of(W, rank)
    received = counted_exchange(x, peers.send_to, peers.recv_from, kind, counter, group=group)
    row = W[rank].tolist()
    out = torch.zeros_like(x)
    for j in range(n):
        if row[j] != 0:
            out.add_(x if j == rank else received[j], alpha=row[j])
    return out


def consensus_distance(stacked: torch.Tensor) -> float:
    """Mean squared distance of the workers' parameters to their average.

    ``(1/n) sum_i ||x_i - xbar||_2^2`` with ``xbar = (1/n) sum_i x_i``.

    Args:
        stacked: [n, ...] tensor, row i = worker i's (flat) parameters.
    Returns:
        the distance (float, squared parameter units), computed in float64.
    """
    s = stacked.double().reshape(stacked.size(0), -1)
    return float(((s - s.mean(0, keepdim=True)) ** 2).sum(1).mean())


def distributed_consensus_distance(x: torch.Tensor, counter: CommRecorder | None = None,
                                   kind: str = "eval", group=None) -> float:
    """:func:`consensus_distance` over the ranks of ``group`` (two all-reduces, under ``kind``).

    Args:
        x: this rank's flat parameters [d] (same d on every rank).
    Returns:
        the same float on every rank.
    """
    mean = all_reduce_mean(x.double(), counter, kind, group)
    local = ((x.detach().double() - mean) ** 2).sum().reshape(1)
    return float(all_reduce_mean(local, counter, kind, group))
