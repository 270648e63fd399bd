"""The optimizers' builders (AdamW, SGD, Muon) and Muon itself.

Each ``build_<name>(model, train_cfg) -> list[torch.optim.Optimizer]`` is registered by name in
``workflow.optim.registry.OPTIMIZERS``; ``workflow.optim.registry.build_optimizers`` picks one by
``train.optimizer``. The learning-rate schedule (``set_lr``) records each group's peak lr itself.

``train_cfg`` is the run's ``train`` section (schema ``definitions/train``); keys missing from
it take the schema's defaults (``TRAIN_DEFAULTS``), so unit tests can pass partial dicts.

Nothing is printed on import or anywhere else in this module.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from workflow.optim.schedules import train_option


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5,
                                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximate orthogonalization of G (its polar factor U V^T) by a quintic Newton–Schulz
    iteration X <- a X + b (X X^T) X + c (X X^T)^2 X with (a, b, c) = (3.4445, -4.7750, 2.0315).

    G is first scaled by its Frobenius norm so every singular value is <= 1. The coefficients
    maximize the slope at 0 instead of converging to 1, so the result is U S' V^T with S'
    near 1 but not equal to it: for singular values of G / ||G||_F in [2e-3, 1] the scalar
    map iterated 5 times lands in about [0.68, 1.21] (Keller Jordan describes S'_ii as roughly
    Uniform(0.5, 1.5), which does not hurt training relative to U V^T).

    Args:
        G: [..., m, n] tensor (a batch of matrices is allowed); float dtype.
        steps: iterations (5 in Muon).
        dtype: compute dtype; None = bfloat16 on CUDA (as the reference) and float32 elsewhere
            (CPU bf16 matmuls are slow on most CPUs and less accurate).

    Returns:
        Tensor of G's shape in the compute dtype.

    Raises:
        ValueError: G has fewer than 2 dims.

    Source: https://kellerjordan.github.io/posts/muon/ ;
    https://github.com/KellerJordan/modded-nanogpt (zeropower_via_newtonschulz5).
    """
    if G.ndim < 2:
        raise ValueError(f"zeropower_via_newtonschulz5 needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = (3.4445, -4.7750, 2.0315)
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the smaller Gram matrix X X^T
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    if X.ndim == 2:
        for _ in range(steps):
            A = X @ X.mT
            B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A A in one BLAS call
            X = torch.addmm(X, B, X, beta=a)  # a X + B X
    else:
        X = X.reshape(-1, *X.shape[-2:])  # [N, m, n]: one batched matmul for all matrices
        for _ in range(steps):
            A = X @ X.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
        X = X.reshape(*G.shape[:-2], *X.shape[-2:])
    if transposed:
        X = X.mT
    return X


class Muon(torch.optim.Optimizer):
    """Muon — MomentUm Orthogonalized by Newton-Schulz (Keller Jordan, 2024).

    For each 2-D (or higher, flattened to [shape[0], -1]) parameter W with gradient g:
        buf  <- momentum * buf + (1 - momentum) * g
        u    <- (1 - momentum) * g + momentum * buf      (Nesterov; u = buf without it)
        O    <- zeropower_via_newtonschulz5(u, ns_steps)
        W    <- W * (1 - lr * weight_decay) - lr * scale * O

    ``update_scale`` "shape" (default): scale = max(1, rows/cols)^0.5, which keeps the update RMS
    comparable across shapes (rows = fan-out of a Linear weight); "max_dim": scale =
    max(rows, cols)^0.5, an update of RMS about 1 per entry (modded-nanogpt's 2024-10-14
    record, whose Muon runs at 0.1 x the AdamW lr). A param group with ``qkv_shards`` P > 0
    holds fused attention weights [3C, C] whose rows are P blocks of [q; k; v] (P = 1: GPT-2's
    q; k; v): q, k and v are then orthogonalized (and scaled) as three C x C matrices, as the
    record's separate ``c_q`` / ``c_k`` / ``c_v``. Newton-Schulz commutes with permuting rows,
    so the shard order of the rows does not change the result. Use Muon only for hidden weight matrices;
    embeddings, the head and scalar/vector parameters belong to AdamW
    (``build_optimizers`` does the split).

    Single-process: gradients are used as they are (the trainer's DDP has already averaged
    them across ranks), so every rank computes the identical update; no sharding inside.
    Parameters without a gradient (e.g. DepthWarm's inactive layers) are skipped.

    Batched as in modded-nanogpt: the parameters of a group that share a shape (a transformer's
    layers: n_layer matrices of each shape) are stepped together, momentum with ``torch._foreach``
    ops; on CUDA Newton-Schulz runs as one batched matmul chain over the stacked updates
    ([N, rows, cols]). On CPU, where batched BLAS of small matrices is no faster (bench/
    bench_train.py muon), each matrix runs one chain with the scalings fused into ``addmm``.
    Same math as the per-matrix loop; results agree to float rounding (tests/unit/test_optim.py).

    Args:
        params: iterable of parameters or param groups.
        lr: learning rate (units of the orthogonalized update; 0.02 is a common default).
        momentum: 0.95. nesterov: True. ns_steps: 5. weight_decay: decoupled, 0 by default.
        update_scale: "shape" | "max_dim" (above). qkv_shards: 0 = no q/k/v split (above).

    Raises:
        ValueError: negative lr / weight_decay, momentum outside [0, 1), ns_steps < 1, or a
            parameter with fewer than 2 dims.

    Source: https://kellerjordan.github.io/posts/muon/ ;
    https://github.com/KellerJordan/modded-nanogpt ; https://github.com/KellerJordan/Muon
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0,
                 update_scale: str = "shape", qkv_shards: int = 0):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr ({lr}) and weight_decay ({weight_decay}) must be >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        if update_scale not in ("shape", "max_dim"):
            raise ValueError(f"Muon: update_scale must be 'shape' or 'max_dim', got {update_scale!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay, update_scale=update_scale, qkv_shards=qkv_shards)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon: parameter of shape {tuple(p.shape)} has < 2 dims; "
                                     "optimize it with AdamW")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure's loss or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
            same_shape: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    same_shape.setdefault((tuple(p.shape), p.dtype, p.grad.dtype, p.device), []).append(p)
            for params in same_shape.values():
                grads = [p.grad for p in params]
                bufs = []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_lerp_(bufs, grads, 1 - beta)
                updates = torch._foreach_lerp(grads, bufs, beta) if group["nesterov"] else bufs
                rows, shards = params[0].size(0), group["qkv_shards"]
                matrices = [u.reshape(rows, -1) for u in updates]
                if shards:  # [P * 3 * r, C] -> [3, P * r, C]: q, k, v orthogonalized one by one
                    matrices = [m.view(shards, 3, -1, m.size(1)).transpose(0, 1).reshape(3, -1, m.size(1))
                                for m in matrices]
                if params[0].is_cuda:  # one batched matmul chain: fewer, larger kernels
                    ortho = zeropower_via_newtonschulz5(torch.stack(matrices), steps=group["ns_steps"]).unbind(0)
                else:  # CPU BLAS gains nothing from batching small matrices: one fused chain each
                    ortho = [zeropower_via_newtonschulz5(m, steps=group["ns_steps"]) for m in matrices]
                if shards:
                    ortho = [o.view(3, shards, -1, o.size(-1)).transpose(0, 1).reshape(rows, -1) for o in ortho]
                sub_rows, cols = matrices[0].shape[-2:]
                by_max = group["update_scale"] == "max_dim"
                scale = (max(sub_rows, cols) if by_max else max(1.0, sub_rows / cols)) ** 0.5
                if wd != 0:
                    torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_add_(params, [o.view_as(p).to(p.dtype) for o, p in zip(ortho, params)], alpha=-lr * scale)
        return loss


# --------------------------------------------------------------------------------------
# Building optimizers
# --------------------------------------------------------------------------------------


def split_muon_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Partition a model's trainable parameters for Muon training.

    Returns a dict with keys
        "muon":   >= 2-D weights of hidden layers (inside blocks);
        "embed":  nn.Embedding weights (token / position embeddings; a tied head is the same
                  tensor and appears once);
        "head":   the weight of a module named ``lm_head`` if it is not tied to an embedding;
        "scalar": everything < 2-D (norm gains, biases).
    Each parameter appears exactly once.
    """
    seen: set[int] = set()
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    head_ids = {id(head.weight)} if isinstance(head, nn.Linear) else set()
    groups: dict[str, list[nn.Parameter]] = {"muon": [], "embed": [], "head": [], "scalar": []}
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in embed_ids:
            groups["embed"].append(p)
        elif id(p) in head_ids:
            groups["head"].append(p)
        elif p.ndim >= 2:
            groups["muon"].append(p)
        else:
            groups["scalar"].append(p)
    return groups


def muon_groups(model: nn.Module, params: list[nn.Parameter], split_qkv: bool) -> list[dict]:
    """Muon's param groups: with ``split_qkv``, each attention's fused ``c_attn`` weight goes to a
    group whose ``qkv_shards`` is that module's ``qkv_shards`` (1, or tp_size for simulated
    tensor-parallel blocks), the rest to one group."""
    fused: dict[int, int] = {}
    if split_qkv:
        for module in model.modules():
            if isinstance(getattr(module, "qkv_shards", None), int) and hasattr(module, "c_attn"):
                fused[id(module.c_attn.weight)] = module.qkv_shards
    groups = [dict(params=[p for p in params if id(p) not in fused])]
    for shards in sorted(set(fused.values())):
        groups.append(dict(params=[p for p in params if fused.get(id(p)) == shards], qkv_shards=shards))
    return [g for g in groups if g["params"]]


def _trainable(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(>= 2-D, < 2-D) trainable parameters of ``model``, each once (a tied head is one tensor)."""
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    return [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]


def adamw_from_groups(groups: list[dict], train_cfg: Mapping[str, Any], device_type: str) -> torch.optim.AdamW:
    """AdamW over the non-empty ``groups`` with betas (beta1, beta2) and eps of ``train_cfg``;
    the fused kernel on CUDA and CPU."""
    groups = [g for g in groups if g["params"]]
    kwargs: dict[str, Any] = dict(betas=(float(train_option(train_cfg, "beta1")), float(train_option(train_cfg, "beta2"))),
                                  eps=float(train_option(train_cfg, "eps")))
    if device_type in ("cuda", "cpu"):
        # Fused kernel (one pass over all tensors): on CPU ~4x faster than the per-tensor loop
        # for small models, deterministic and identical on every rank (bench/bench_train.py).
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def _device_type(model: nn.Module) -> str:
    p0 = next(model.parameters(), None)
    return p0.device.type if p0 is not None else "cpu"


def build_adamw(model: nn.Module, train_cfg: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """Optimizer ``adamw``: [AdamW] with two param groups (nanoGPT's configure_optimizers):
    >= 2-D tensors (matmul weights, embeddings) with ``weight_decay``, < 2-D tensors (biases,
    norm gains) with weight decay 0; both with lr ``lr``; betas (beta1, beta2)."""
    lr, wd = float(train_option(train_cfg, "lr")), float(train_option(train_cfg, "weight_decay"))
    decay, no_decay = _trainable(model)
    return [adamw_from_groups([dict(params=decay, lr=lr, weight_decay=wd),
                               dict(params=no_decay, lr=lr, weight_decay=0.0)],
                              train_cfg, _device_type(model))]


def build_sgd(model: nn.Module, train_cfg: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """Optimizer ``sgd``: [SGD] with ``build_adamw``'s two groups and momentum ``sgd_momentum``
    (a linear update: DiLoCo with tau 1 and outer_lr 1 then equals DDP exactly)."""
    lr, wd = float(train_option(train_cfg, "lr")), float(train_option(train_cfg, "weight_decay"))
    decay, no_decay = _trainable(model)
    momentum = float(train_cfg.get("sgd_momentum") or 0.0)
    return [torch.optim.SGD([dict(params=decay, lr=lr, weight_decay=wd),
                             dict(params=no_decay, lr=lr, weight_decay=0.0)], lr=lr, momentum=momentum)]


def build_muon(model: nn.Module, train_cfg: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """Optimizer ``muon``: [AdamW, Muon] (modded-nanogpt's split).

    Muon(hidden >= 2-D weights, lr=muon_lr, momentum=muon_momentum, nesterov=muon_nesterov,
    ns_steps=muon_ns_steps, weight_decay=muon_weight_decay, update_scale=muon_update_scale or
    "shape"; with muon_split_qkv the fused attention weights orthogonalize q, k, v separately); AdamW groups: embeddings
    (lr=embed_lr or lr, weight_decay), untied head (lr=head_lr or embed_lr or lr, weight_decay),
    norms/biases (lr=adam_lr or lr, 0). No Muon when the model has no hidden matrix.
    """
    lr, wd = float(train_option(train_cfg, "lr")), float(train_option(train_cfg, "weight_decay"))
    parts = split_muon_params(model)
    embed_lr = float(train_cfg["embed_lr"]) if train_cfg.get("embed_lr") is not None else lr
    head_lr = float(train_cfg["head_lr"]) if train_cfg.get("head_lr") is not None \
        else embed_lr
    adam_lr = float(train_cfg["adam_lr"]) if train_cfg.get("adam_lr") is not None else lr
    adamw = adamw_from_groups([dict(params=parts["embed"], lr=embed_lr, weight_decay=wd),
                               dict(params=parts["head"], lr=head_lr, weight_decay=wd),
                               dict(params=parts["scalar"], lr=adam_lr, weight_decay=0.0)],
                              train_cfg, _device_type(model))
    optimizers: list[torch.optim.Optimizer] = [adamw]
    if parts["muon"]:
        optimizers.append(Muon(muon_groups(model, parts["muon"], bool(train_cfg.get("muon_split_qkv"))),
                               update_scale=train_cfg.get("muon_update_scale") or "shape",
                               lr=float(train_option(train_cfg, "muon_lr")),
                               momentum=float(train_option(train_cfg, "muon_momentum")),
                               nesterov=bool(train_option(train_cfg, "muon_nesterov")),
                               ns_steps=int(train_option(train_cfg, "muon_ns_steps")),
                               weight_decay=float(train_option(train_cfg, "muon_weight_decay"))))
    return optimizers
