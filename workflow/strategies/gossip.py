"""Decentralized training by gossip: graph topologies, point-to-point mixing, DSGDm and DeMuon.

Every worker (rank) keeps its own model x_i. Instead of a global all-reduce, a worker mixes
with its graph neighbours only: ``x_i <- sum_j W_ij x_j`` with a doubly stochastic
``mixing_matrix`` W (rows and columns sum to 1, so the workers' average is preserved and the
workers contract towards it at the rate of W's second largest singular value).

Topologies (all are circulant graphs on ranks 0..n-1, so every node has the same degree d):

* ``ring``: undirected cycle, neighbours i-1 and i+1 (mod n); d = 2 (d = 1 for n = 2).
* ``exp``: the static exponential graph, directed: rank i receives from i + 2^k and sends to
  i - 2^k (mod n) for every hop 2^k < n (k = 0, 1, ...); d = floor(log2(n - 1)) + 1.
  This is the graph of the DeMuon experiments (Exponential_graph.directed in the reference
  code) and of Ying et al. 2021, arXiv 2110.13363.
* ``complete``: every other rank; d = n - 1.

Weights: uniform over the closed neighbourhood, ``W_ij = 1 / (d + 1)`` for j = i and for the
d ranks i receives from, 0 elsewhere. For a circulant graph every row and every column then
has exactly d + 1 entries 1/(d + 1), so W is doubly stochastic; ``ring`` gives 1/3 everywhere
on the band (as the reference's Metropolis weights), ``complete`` gives 1/n everywhere.

Communication (:func:`gossip`): one ``torch.distributed`` point-to-point message (isend /
irecv, batched with :func:`torch.distributed.batch_isend_irecv`) per graph edge and call,
never a collective; on ``complete`` (W = 1/n everywhere) the same average is one all-reduce,
which :func:`gossip` uses unless ``all_reduce_if_complete=False``. Each message is reported
to a counter (workflow.parallel.comm.CommCounter) with ``counter.record(kind, calls, nbytes)``: a send
under ``kind`` (``"gossip"`` for parameters, ``"gossip_tracker"`` for DeMuon's trackers), a
receive under ``kind + "_recv"``, the all-reduce shortcut under ``kind``; nbytes = payload.

Update rules (:class:`GossipOptimizer`, one instance per worker, local gradients, no DDP):

* ``dsgdm`` — decentralized SGD with momentum (adapt then combine, Yu et al. 2019,
  arXiv 1905.03817, with the momentum as an exponential moving average):
      M_i <- beta M_i + (1 - beta) g_i ;   x_i <- sum_j W_ij (x_j - lr M_j)
* ``demuon`` — DeMuon (He, Ren, Mao, Larsson 2025, arXiv 2510.01377; reference code
  github.com/MozarTuring/DeMuon exp3_decentralize_gpt.py), per step k with theta = 1 - beta:
      M_i^k     = (1 - theta) M_i^{k-1} + theta g_i^k                       local momentum
      V_i^k     = sum_j W_ij (V_j^{k-1} + M_j^k - M_j^{k-1})                 gradient tracking
      x_i^{k+1} = sum_j W_ij (x_j^k - lr msgn(V_j^k))                        mixed iterates
  with M^0 = V^0 = 0; msgn is applied per parameter tensor (see :func:`msgn`), no shape-based
  rescaling (unlike Muon). Two gossip exchanges per step (V, then x).

Nothing is printed on import or anywhere else in this module.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from workflow.optim.optimizers import zeropower_via_newtonschulz5
from workflow.parallel.comm import CommRecorder
from workflow.strategies.base import Strategy, flat_parameters, load_flat_parameters
from workflow.strategies.mixing import gossip, mixing_matrix, neighbours

__all__ = [
    "ALGORITHMS",
    "MSGN_MODES",
    "CommRecorder",
    "mixing_matrix",
    "neighbours",
    "msgn",
    "gossip",
    "GossipOptimizer",
    "GossipStrategy",
]
ALGORITHMS = ("dsgdm", "demuon")
MSGN_MODES = (0, 1, 2)


# --------------------------------------------------------------------------------------
# Matrix sign
# --------------------------------------------------------------------------------------


def msgn(x: torch.Tensor, mode: int, ns_steps: int = 5) -> torch.Tensor:
    """The update direction of DeMuon: the matrix sign (polar factor) U V^T of ``x``.

    Modes:
        0: plain, ``x`` itself (no orthogonalization; every shape).
        1: Newton-Schulz: workflow.optim.optimizers.zeropower_via_newtonschulz5 (Muon's quintic
           iteration, ``ns_steps`` iterations; singular values land near, not at, 1).
        2: exact: reduced SVD x = U S V^T, returns U V^T over the singular values above
           max(m, n) * eps * S_max (so msgn of a zero matrix is zero, not a random basis).
    Shapes: a tensor with >= 2 dims is treated as the matrix [shape[0], prod(rest)]. A vector
    (1 dim) is an n x 1 matrix, whose polar factor is x / ||x||_2 (0 for x = 0), and a scalar
    gives sign(x); modes 1 and 2 both use that closed form. The reference code of the DeMuon
    paper normalizes vectors also in mode 0; here mode 0 is the identity for every shape.

    Args:
        x: float tensor of any shape.
        mode: 0, 1 or 2.
        ns_steps: Newton-Schulz iterations of mode 1.

    Returns:
        tensor of ``x``'s shape and dtype.

    Raises:
        ValueError: mode not in {0, 1, 2} (names ``train.strategy`` key ``msgn``).

    Source: He, Ren, Mao, Larsson 2025 (arXiv 2510.01377), msgn(M) = U V^T;
    Keller Jordan's Muon for the Newton-Schulz iteration.
    """
    if mode not in MSGN_MODES:
        raise ValueError(f"train.strategy key 'msgn': must be one of {list(MSGN_MODES)}, got {mode!r}")
    if mode == 0:
        return x
    if x.ndim < 2:  # x / ||x|| (0 for x = 0), without a host sync on the norm
        return x / x.norm().clamp_min(torch.finfo(x.dtype).tiny)
    X = x.reshape(x.size(0), -1)
    if mode == 1:
        out = zeropower_via_newtonschulz5(X, steps=ns_steps)
    else:
        X = X if X.dtype in (torch.float32, torch.float64) else X.float()
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        tol = max(X.shape) * torch.finfo(X.dtype).eps * (S[0] if S.numel() else 0.0)
        r = int((S > tol).sum())
        out = U[:, :r] @ Vh[:r]
    return out.to(x.dtype).view_as(x)


# --------------------------------------------------------------------------------------
# Update rules
# --------------------------------------------------------------------------------------


class GossipOptimizer(torch.optim.Optimizer):
    """One worker's decentralized update (``dsgdm`` or ``demuon``) with its gossip exchanges.

    ``step()`` uses the local gradients in ``p.grad`` (a missing gradient counts as zero; do
    not average gradients across ranks), updates the momentum M_i (and the tracker V_i for
    demuon) and the parameters, and mixes with the graph neighbours through :func:`gossip`
    (one exchange for dsgdm: x; two for demuon: V, then x). Update rules: module docstring.
    Every rank must call ``step`` the same number of times (the exchanges pair up).

    The parameters are mixed as one flat vector (all parameters concatenated in order), so a
    step sends one message per edge and exchange. State, per parameter: ``momentum_buffer``
    (M_i at the end of the last step, i.e. the previous local momentum of the next step) and,
    for demuon, ``tracker`` (V_i): plain tensors, so ``state_dict()`` survives
    ``torch.save`` / ``torch.load(weights_only=True)``. The param group carries ``lr`` and
    ``initial_lr`` so workflow.optim.schedules.set_lr applies the run's schedule.

    Args:
        params: the worker's parameters (one param group).
        mixing_matrix: [world_size, world_size] doubly stochastic W (:func:`mixing_matrix`).
        algorithm: ``"dsgdm"`` or ``"demuon"``.
        lr: step size (units of the EMA momentum / of msgn's output).
        momentum: beta in [0, 1) (DeMuon's theta = 1 - beta); the seed uses 0.8.
        msgn: 0, 1 or 2 (:func:`msgn`; demuon only).
        ns_steps: Newton-Schulz iterations of msgn mode 1.
        counter: receives every message (:func:`gossip`; kinds ``gossip`` for the parameters,
            ``gossip_tracker`` for V); None = not counted.
        group: process group of the workers (None = the default group).
        all_reduce_if_complete: mix by one all-reduce when W is uniform (:func:`gossip`).

    Raises:
        ValueError: unknown algorithm, msgn mode, lr <= 0 or momentum outside [0, 1).

    Source: arXiv 2510.01377 (DeMuon); arXiv 1905.03817 (decentralized momentum SGD).
    """

    def __init__(self, params: Iterable, mixing_matrix: torch.Tensor, *, algorithm: str,
                 lr: float, momentum: float, msgn: int = 1, ns_steps: int = 5,
                 counter: CommRecorder | None = None, group=None, all_reduce_if_complete: bool = True):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"train.strategy key 'algorithm': unknown algorithm {algorithm!r}; "
                             f"valid: {list(ALGORITHMS)}")
        if msgn not in MSGN_MODES:
            raise ValueError(f"train.strategy key 'msgn': must be one of {list(MSGN_MODES)}, got {msgn!r}")
        if not lr > 0:
            raise ValueError(f"GossipOptimizer: lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"train.strategy key 'momentum': must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, initial_lr=lr, algorithm=algorithm, momentum=momentum, msgn=msgn,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("GossipOptimizer: expected one param group")
        self.mixing_matrix = mixing_matrix
        self.counter = counter
        self.group = group
        self.all_reduce_if_complete = all_reduce_if_complete

    def _buffers(self, key: str) -> list[torch.Tensor]:
        out = []
        for p in self.param_groups[0]["params"]:
            state = self.state[p]
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(state[key])
        return out

    def _mix(self, tensors: Sequence[torch.Tensor], kind: str) -> None:
        """tensors <- W-mixture of tensors (flattened into one message), in place."""
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        mixed = gossip(flat, self.mixing_matrix, self.counter, kind=kind, group=self.group,
                       all_reduce_if_complete=self.all_reduce_if_complete)
        offset = 0
        for t in tensors:
            t.copy_(mixed[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    @torch.no_grad()
    def step(self, closure=None):
        """One decentralized step (local update and gossip). Returns closure's loss or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params: list[torch.Tensor] = group["params"]
        lr, beta = group["lr"], group["momentum"]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        moms = self._buffers("momentum_buffer")
        if group["algorithm"] == "dsgdm":
            for p, m, g in zip(params, moms, grads):
                m.lerp_(g, 1 - beta)                       # M <- beta M + (1 - beta) g
                p.add_(m, alpha=-lr)
        else:
            trackers = self._buffers("tracker")
            for m, v, g in zip(moms, trackers, grads):
                new_m = m.lerp(g, 1 - beta)
                v.add_(new_m).sub_(m)                      # V + M^k - M^{k-1}, mixed below
                m.copy_(new_m)
            self._mix(trackers, "gossip_tracker")
            for p, v in zip(params, trackers):
                p.add_(msgn(v, group["msgn"], group["ns_steps"]), alpha=-lr)
        self._mix(params, "gossip")
        return loss


# --------------------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------------------


class GossipStrategy(Strategy):
    """Decentralized training: each worker updates its own model with local gradients and
    mixes with its graph neighbours (:class:`GossipOptimizer`); no gradient all-reduce.

    Every worker is one node of ``topology`` over the data-parallel workers (``ctx.dp_group``;
    point-to-point messages, except one all-reduce per exchange on ``complete``; a ring of 2
    workers, whose W is also uniform, still sends point-to-point) and trains on its own slice of every global batch (``train.batch_size`` / dp_size sequences
    per worker). ``train.optimizer`` is not used: the update rule is ``algorithm`` with
    ``train.lr`` (scaled by ``train.schedule``, e.g. ``inv_sqrt``) and ``momentum``; gradients
    are clipped per worker by ``train.grad_clip`` (0 = off, as in the DeMuon reference code).

    Evaluation scores the average of the workers' models (one all-reduce, kind ``eval``); the
    trainer also reports the mean of the workers' own val_loss and the consensus_distance
    (``models_differ``). The final model.pt is that average.

    State (per worker): the optimizer's momentum M_i and tracker V_i (in the optimizer's state
    dict, which the trainer checkpoints per rank); the model itself is this worker's x_i.

    Config (``train.strategy``, schema ``definitions/strategy_gossip``): ``topology`` (ring,
    exp, complete), ``algorithm`` (dsgdm, demuon), ``msgn`` (0, 1, 2), ``momentum``,
    ``ns_steps``.
    Source: He, Ren, Mao, Larsson 2025 (DeMuon), arXiv 2510.01377.
    """

    name = "gossip"
    models_differ = True

    def __init__(self, cfg: Mapping[str, Any], train_cfg: Mapping[str, Any], ctx, comm):
        super().__init__(cfg, train_cfg, ctx, comm)
        self.mixing_matrix = mixing_matrix(self.cfg["topology"], ctx.dp_size)

    def _group(self):
        return self.ctx.dp_group if self.ctx.distributed else None

    def build_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        return [GossipOptimizer(
            [p for p in model.parameters() if p.requires_grad], self.mixing_matrix,
            algorithm=self.cfg["algorithm"], lr=float(self.train_cfg["lr"]), momentum=float(self.cfg["momentum"]),
            msgn=int(self.cfg["msgn"]), ns_steps=int(self.cfg["ns_steps"]), counter=self.comm, group=self._group(),
            all_reduce_if_complete=self.cfg["topology"] == "complete",
        )]

    @contextlib.contextmanager
    def scored_model(self, model: nn.Module) -> Iterator[str]:
        local = flat_parameters(model)
        average = local.clone()
        if self.ctx.distributed and self.ctx.dp_size > 1:
            self.comm.all_reduce(average, "eval", group=self.ctx.dp_group)
            average /= self.ctx.dp_size
        load_flat_parameters(model, average)
        try:
            yield "average"
        finally:
            load_flat_parameters(model, local)

    def describe(self) -> str:
        peers = neighbours(self.cfg["topology"], self.ctx.dp_size, self.ctx.dp_rank)
        alone = ("; WARNING: one worker: no neighbours, so no communication (it trains like ddp on one process)"
                 if self.ctx.dp_size < 2 else "")
        return (super().describe() + f"; worker {self.ctx.dp_rank} of {self.ctx.dp_size} receives from "
                f"{peers.recv_from}, sends to {peers.send_to}{alone}")
