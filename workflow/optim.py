"""Optimizers (AdamW, Muon), learning-rate schedules and the sequence-length curriculum.

``build_optimizers(model, train_cfg)`` returns the optimizers of one run; the trainer steps
each of them. ``set_lr(optimizers, step, train_cfg)`` applies ``lr_multiplier`` to every param
group's ``initial_lr``. ``curriculum_block_size`` is the pure sequence-length ladder the
trainer may call before sampling a batch.

``train_cfg`` is the run's ``train`` section (schema ``definitions/train``); keys missing from
it take the schema's defaults (``TRAIN_DEFAULTS``), so unit tests can pass partial dicts.

Nothing is printed on import or anywhere else in this module.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from workflow.config import load_schema

__all__ = [
    "TRAIN_DEFAULTS",
    "Muon",
    "zeropower_via_newtonschulz5",
    "build_optimizers",
    "split_muon_params",
    "lr_multiplier",
    "set_lr",
    "schedule_progress",
    "curriculum_block_size",
    "curriculum_marks",
    "check_curriculum",
    "tokens_for_steps",
    "steps_for_tokens",
    "resolve_depth_warm",
]

# Defaults of the keys this module reads: config/schema.yaml definitions/train, the one source.
TRAIN_DEFAULTS: dict[str, Any] = {
    name: prop.get("default") for name, prop in load_schema()["definitions"]["train"]["properties"].items()
}

SCHEDULES = ("cosine", "linear", "constant", "trapezoidal", "inv_sqrt")


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    """cfg[key], or the schema default when the key is missing or None-with-non-None default."""
    value = cfg.get(key)
    return TRAIN_DEFAULTS[key] if value is None else value


# --------------------------------------------------------------------------------------
# Muon
# --------------------------------------------------------------------------------------


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
        W    <- W * (1 - lr * weight_decay) - lr * max(1, rows / cols) ** 0.5 * O

    The shape-based scale max(1, rows/cols)^0.5 keeps the update RMS comparable across
    shapes (rows = fan-out of a Linear weight). Use Muon only for hidden weight matrices;
    embeddings, the head and scalar/vector parameters belong to AdamW
    (``build_optimizers`` does the split).

    Single-process: gradients are used as they are (the trainer's DDP has already averaged
    them across ranks), so every rank computes the identical update; no sharding inside.
    Parameters without a gradient (e.g. DepthWarm's inactive layers) are skipped.

    Batched as in modded-nanogpt: the parameters of a group that share a shape (a transformer's
    layers: n_layer matrices of each shape) are stepped together, momentum with ``torch._foreach``
    ops and Newton-Schulz as one batched matmul over the stacked updates ([N, rows, cols]),
    instead of one small matmul chain per matrix. Same math as the per-matrix loop; results
    agree to float rounding (tests/test_optim.py).

    Args:
        params: iterable of parameters or param groups.
        lr: learning rate (units of the orthogonalized update; 0.02 is a common default).
        momentum: 0.95. nesterov: True. ns_steps: 5. weight_decay: decoupled, 0 by default.

    Raises:
        ValueError: negative lr / weight_decay, momentum outside [0, 1), ns_steps < 1, or a
            parameter with fewer than 2 dims.

    Source: https://kellerjordan.github.io/posts/muon/ ;
    https://github.com/KellerJordan/modded-nanogpt ; https://github.com/KellerJordan/Muon
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr ({lr}) and weight_decay ({weight_decay}) must be >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay)
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
                rows = params[0].size(0)
                stacked = torch.stack([u.reshape(rows, -1) for u in updates])  # [N, rows, cols]
                ortho = zeropower_via_newtonschulz5(stacked, steps=group["ns_steps"])
                scale = max(1.0, rows / stacked.size(-1)) ** 0.5
                if wd != 0:
                    torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_add_(params, [o.view_as(p).to(p.dtype) for o, p in zip(ortho.unbind(0), params)],
                                    alpha=-lr * scale)
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


def _adamw(groups: list[dict], cfg: Mapping[str, Any], device_type: str) -> torch.optim.AdamW:
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    kwargs: dict[str, Any] = dict(betas=(float(_get(cfg, "beta1")), float(_get(cfg, "beta2"))),
                                  eps=float(_get(cfg, "eps")))
    if device_type in ("cuda", "cpu"):
        # Fused kernel (one pass over all tensors): on CPU ~4x faster than the per-tensor loop
        # for small models, deterministic and identical on every rank (bench/bench_train.py).
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def build_optimizers(model: nn.Module, train_cfg: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """The optimizers of one training run.

    optimizer "adamw" -> [AdamW] with two param groups (nanoGPT's configure_optimizers):
        >= 2-D tensors (matmul weights, embeddings) with ``weight_decay``, < 2-D tensors
        (biases, norm gains) with weight decay 0; both with lr ``lr``; betas (beta1, beta2).
    optimizer "sgd" -> [SGD] with the same two groups, momentum ``sgd_momentum`` (a linear
        update: DiLoCo with tau 1 and outer_lr 1 then equals DDP exactly).
    optimizer "muon" -> [AdamW, Muon] (modded-nanogpt's split):
        Muon(hidden >= 2-D weights, lr=muon_lr, momentum=muon_momentum, nesterov=muon_nesterov,
             ns_steps=muon_ns_steps, weight_decay=muon_weight_decay);
        AdamW groups: embeddings (lr=embed_lr or lr, weight_decay), untied head
             (lr=head_lr or embed_lr or lr, weight_decay), norms/biases (lr=adam_lr or lr, 0).
    Every param group carries ``initial_lr`` (the peak lr that ``set_lr`` scales).

    Args:
        model: the model (GPT or any nn.Module; the head is found as ``model.lm_head``).
        train_cfg: the run's ``train`` section; missing keys take ``TRAIN_DEFAULTS``.

    Returns:
        list of optimizers, to be stepped (and zero_grad'ed) together.

    Raises:
        ValueError: unknown optimizer name (names the key and the valid values).
    """
    name = _get(train_cfg, "optimizer")
    p0 = next(model.parameters(), None)
    device_type = p0.device.type if p0 is not None else "cpu"
    lr = float(_get(train_cfg, "lr"))
    wd = float(_get(train_cfg, "weight_decay"))
    if name == "adamw":
        params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [_adamw([dict(params=decay, lr=lr, weight_decay=wd),
                        dict(params=no_decay, lr=lr, weight_decay=0.0)],
                       train_cfg, device_type)]
    if name == "sgd":
        params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        momentum = float(train_cfg.get("sgd_momentum") or 0.0)
        sgd = torch.optim.SGD([dict(params=decay, lr=lr, weight_decay=wd),
                               dict(params=no_decay, lr=lr, weight_decay=0.0)], lr=lr, momentum=momentum)
        for g in sgd.param_groups:
            g["initial_lr"] = g["lr"]
        return [sgd]
    if name == "muon":
        parts = split_muon_params(model)
        embed_lr = float(train_cfg["embed_lr"]) if train_cfg.get("embed_lr") is not None else lr
        head_lr = float(train_cfg["head_lr"]) if train_cfg.get("head_lr") is not None \
            else embed_lr
        adam_lr = float(train_cfg["adam_lr"]) if train_cfg.get("adam_lr") is not None else lr
        adamw = _adamw([dict(params=parts["embed"], lr=embed_lr, weight_decay=wd),
                        dict(params=parts["head"], lr=head_lr, weight_decay=wd),
                        dict(params=parts["scalar"], lr=adam_lr, weight_decay=0.0)],
                       train_cfg, device_type)
        optimizers: list[torch.optim.Optimizer] = [adamw]
        if parts["muon"]:
            muon = Muon(parts["muon"], lr=float(_get(train_cfg, "muon_lr")),
                        momentum=float(_get(train_cfg, "muon_momentum")),
                        nesterov=bool(_get(train_cfg, "muon_nesterov")),
                        ns_steps=int(_get(train_cfg, "muon_ns_steps")),
                        weight_decay=float(_get(train_cfg, "muon_weight_decay")))
            for g in muon.param_groups:
                g["initial_lr"] = g["lr"]
            optimizers.append(muon)
        return optimizers
    raise ValueError(f"train key 'optimizer': unknown optimizer {name!r}; valid: ['adamw', 'muon', 'sgd']")


# --------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------


def schedule_progress(step: int, num_iterations: int, elapsed_s: float | None = None,
                      budget_s: float | None = None) -> float:
    """How far a run is through its schedule, in [0, 1]: ``max(step / N, elapsed / budget)``.

    A run with a wall-clock budget (``train.training_hours``) moves through its schedules at
    the pace of whichever ends first, its steps or its time, as time-budgeted speedruns do:
    a run stopped by the budget has then decayed its learning rate like a run that reached
    ``num_iterations`` (it would otherwise stop with the schedule undecayed).

    Args:
        step: 0-based steps done (>= 0).
        num_iterations: N, the run's length in steps (>= 1).
        elapsed_s: training seconds spent so far (evaluations excluded); None = no budget.
        budget_s: the budget in seconds (``training_hours * 3600``); None = no budget.
    Returns:
        progress in [0, 1].
    Raises:
        ValueError: N < 1, negative step, or a budget <= 0.
    Source: modded-nanogpt / Keller Jordan's time-budgeted speedruns (schedule on
    min(step/N, 1) or on elapsed time); Hägele et al. 2024 (warmup-stable-decay).
    """
    if num_iterations < 1 or step < 0:
        raise ValueError(f"schedule_progress: need num_iterations >= 1 and step >= 0, got {num_iterations}, {step}")
    progress = step / num_iterations
    if budget_s is not None:
        if budget_s <= 0:
            raise ValueError(f"schedule_progress: budget must be > 0 seconds, got {budget_s}")
        progress = max(progress, (elapsed_s or 0.0) / budget_s)
    return min(1.0, max(0.0, progress))


def lr_multiplier(step: int, train_cfg: Mapping[str, Any], progress: float | None = None) -> float:
    """Learning-rate multiplier in [0, 1] for 0-based training step ``step``.

    With ``progress`` (:func:`schedule_progress`, e.g. of a time-budgeted run) the schedule is
    read at the effective step ``max(step, progress * N)`` (a float).

    With N = num_iterations, W = warmup_iters, D = warmdown_iters, r = min_lr_ratio:
      * warmup (every schedule): step < W -> (step + 1) / W  (linear; 1/W at step 0, 1 at W-1);
      * after warmup, progress p = clamp((step - W) / (N - W), 0, 1):
          cosine:      r + (1 - r) * 0.5 * (1 + cos(pi * p))     (nanoGPT; r at step >= N)
          linear:      1 - (1 - r) * p
          constant:    1
          inv_sqrt:    1 / sqrt(min(step, N) - W + 1)   (1 at the first post-warmup step; the
                       1/sqrt(t) of decentralized SGD / DeMuon, t = 1-based step; min_lr_ratio
                       is not applied)
          trapezoidal: min(1, (N - step) / D) when D > 0, else 1; floored at 0
                       (modded-nanogpt's constant-then-linear-warmdown: 1/D at the last step
                       N - 1, 0 at N; min_lr_ratio is not applied).
    Steps beyond N keep the value at N.

    Raises:
        ValueError: unknown schedule (names the key and valid values), negative step.
    Source: nanoGPT train.py get_lr; https://github.com/KellerJordan/modded-nanogpt get_lr;
    Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations") for the trapezoidal / warmup-stable-decay shape; He et al. 2025 (DeMuon,
    arXiv 2510.01377) for inv_sqrt.
    """
    if step < 0:
        raise ValueError(f"lr_multiplier: step must be >= 0, got {step}")
    if progress is not None:
        step = max(step, progress * int(_get(train_cfg, "num_iterations")))
    schedule = _get(train_cfg, "schedule")
    if schedule not in SCHEDULES:
        raise ValueError(f"train key 'schedule': unknown schedule {schedule!r}; "
                         f"valid: {list(SCHEDULES)}")
    n = int(_get(train_cfg, "num_iterations"))
    warmup = int(_get(train_cfg, "warmup_iters"))
    r = float(_get(train_cfg, "min_lr_ratio"))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "inv_sqrt":
        return 1.0 / math.sqrt(min(step, n) - warmup + 1)
    if schedule == "trapezoidal":
        warmdown = int(_get(train_cfg, "warmdown_iters"))
        if warmdown <= 0:
            return 1.0
        return max(0.0, min(1.0, (n - min(step, n)) / warmdown))
    progress = min(max((step - warmup) / max(1, n - warmup), 0.0), 1.0)
    if schedule == "cosine":
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - r) * progress  # linear


def set_lr(optimizers: Sequence[torch.optim.Optimizer], step: int,
           train_cfg: Mapping[str, Any], progress: float | None = None) -> float:
    """Set ``group["lr"] = group["initial_lr"] * lr_multiplier(step, train_cfg, progress)`` in
    every param group of every optimizer and return the multiplier.

    Raises:
        KeyError: a param group without ``initial_lr`` (not built by ``build_optimizers``).
    """
    mult = lr_multiplier(step, train_cfg, progress)
    for opt in optimizers:
        for group in opt.param_groups:
            if "initial_lr" not in group:
                raise KeyError("param group has no 'initial_lr'; build optimizers with "
                               "workflow.optim.build_optimizers")
            group["lr"] = group["initial_lr"] * mult
    return mult


# --------------------------------------------------------------------------------------
# Sequence-length curriculum
# --------------------------------------------------------------------------------------


def curriculum_block_size(step: int, train_cfg: Mapping[str, Any],
                          val_history: Sequence[tuple[int, float]] = ()) -> int | None:
    """Training sequence length (tokens) for step ``step`` under the curriculum ladder.

    Keys (schema ``definitions/train``):
      curriculum_block_sizes: ladder of lengths, increasing, e.g. [256, 512, 768, 1024]; the
          last should equal the model's block_size. None/empty = no curriculum (returns None:
          the trainer uses the model's block_size).
      curriculum_advance: "steps" or "plateau".
        steps:   curriculum_steps = steps at which to move to rung 1, 2, ... (len = ladder - 1,
                 increasing), or curriculum_fractions = the same as fractions of the run's
                 num_iterations (:func:`curriculum_marks`); rung = number of marks <= step.
        plateau: walk val_history in order (only entries with history step <= ``step``); on
                 each rung track the best val_loss; an evaluation that is not below
                 best - curriculum_min_delta counts as stale; after curriculum_patience
                 consecutive stale evaluations move up one rung and start afresh.
      curriculum_patience (int >= 1), curriculum_min_delta (>= 0, nats).

    Args:
        step: 0-based training step.
        train_cfg: the run's train section.
        val_history: [(step, val_loss), ...] evaluations so far, in step order.

    Returns:
        the sequence length (int) or None when no curriculum is configured.

    Raises:
        ValueError: a ladder that is not strictly increasing, curriculum_steps of the wrong
            length or not increasing, an unknown curriculum_advance, or patience < 1.
    Pure function: same inputs, same output. Source: sequence-length warmup, Li et al. 2022
    ("The Stability-Efficiency Dilemma: Investigating Sequence Length Warmup").
    """
    ladder = train_cfg.get("curriculum_block_sizes")
    if not ladder:
        return None
    ladder = [int(x) for x in ladder]
    if any(b <= a for a, b in zip(ladder, ladder[1:])) or ladder[0] < 1:
        raise ValueError(f"train key 'curriculum_block_sizes' must be strictly increasing "
                         f"positive ints, got {ladder}")
    mode = _get(train_cfg, "curriculum_advance")
    if mode == "steps":
        marks = curriculum_marks(train_cfg)
        rung = sum(1 for m in marks if step >= m)
        return ladder[rung]
    if mode == "plateau":
        patience = int(_get(train_cfg, "curriculum_patience"))
        min_delta = float(_get(train_cfg, "curriculum_min_delta"))
        if patience < 1:
            raise ValueError(f"train key 'curriculum_patience' must be >= 1, got {patience}")
        rung, best, stale = 0, math.inf, 0
        for s, val_loss in val_history:
            if s > step or rung == len(ladder) - 1:
                break
            if val_loss < best - min_delta:
                best, stale = val_loss, 0
            else:
                stale += 1
                if stale >= patience:
                    rung, best, stale = rung + 1, math.inf, 0
        return ladder[rung]
    raise ValueError(f"train key 'curriculum_advance': unknown value {mode!r}; "
                     "valid: ['steps', 'plateau']")


def curriculum_marks(train_cfg: Mapping[str, Any]) -> list[int]:
    """Steps at which the ``steps`` curriculum moves to rung 1, 2, ...

    ``curriculum_steps`` as given, or ``round(f * num_iterations)`` for each fraction f of
    ``curriculum_fractions`` (the same treatment at every stage length: a rung that starts at
    20 % of a 500-step stage A run starts at 20 % of a 1,900-step stage C run).

    Raises:
        ValueError: both or neither key set, a list of the wrong length (ladder - 1) or not
            strictly increasing (after rounding), naming the key.
    """
    ladder = list(train_cfg.get("curriculum_block_sizes") or [])
    steps, fractions = train_cfg.get("curriculum_steps"), train_cfg.get("curriculum_fractions")
    if steps is not None and fractions is not None:
        raise ValueError("train keys 'curriculum_steps' and 'curriculum_fractions' are both set; use one")
    if fractions is not None:
        n = int(_get(train_cfg, "num_iterations"))
        marks, key = [int(round(float(f) * n)) for f in fractions], "curriculum_fractions"
        shown = f"{list(fractions)} (steps {marks} of {n})"
    else:
        marks, key = [int(x) for x in (steps or [])], "curriculum_steps"
        shown = str(marks)
    if len(marks) != len(ladder) - 1 or any(b <= a for a, b in zip(marks, marks[1:])):
        raise ValueError(f"train key '{key}' must list {len(ladder) - 1} increasing "
                         f"{'fractions' if fractions is not None else 'steps'} for ladder {ladder}, got {shown}")
    return marks


def check_curriculum(train_cfg: Mapping[str, Any], block_size: int) -> None:
    """A curriculum must end at the model's full sequence length, within the run.

    Checks (``curriculum_advance: steps``): the ladder's last rung equals ``block_size`` (a run
    that never trains at full length is evaluated at a length it never saw) and the last rung
    starts before ``num_iterations``. A plateau curriculum is checked for its last rung only;
    whether it gets there shows in metrics.jsonl's ``seq_len``.

    Raises:
        ValueError: naming ``curriculum_block_sizes`` / ``curriculum_steps`` /
            ``curriculum_fractions`` and the values at fault.
    """
    ladder = train_cfg.get("curriculum_block_sizes")
    if not ladder:
        return
    curriculum_block_size(0, train_cfg, [])  # ladder shape and marks (named errors)
    if int(ladder[-1]) != int(block_size):
        raise ValueError(f"train.curriculum_block_sizes {list(ladder)}: the last rung must equal "
                         f"model.block_size {block_size}")
    if _get(train_cfg, "curriculum_advance") == "steps" and len(ladder) > 1:
        n = int(_get(train_cfg, "num_iterations"))
        last = curriculum_marks(train_cfg)[-1]
        if last >= n:
            key = "curriculum_fractions" if train_cfg.get("curriculum_fractions") is not None else "curriculum_steps"
            raise ValueError(f"train.{key}: the last rung ({ladder[-1]}) starts at step {last}, not before the "
                             f"end of the run (num_iterations {n})")


def tokens_for_steps(train_cfg: Mapping[str, Any], block_size: int, num_iterations: int) -> int:
    """Training tokens a run of ``num_iterations`` steps sees: ``batch_size x`` the sequence
    length of every step (the curriculum's shorter sequences included; curriculum fractions
    are of this ``num_iterations``).

    Raises:
        ValueError: a plateau curriculum (its lengths depend on the losses).
    """
    batch = int(train_cfg["batch_size"])
    ladder = train_cfg.get("curriculum_block_sizes")
    if not ladder:
        return batch * int(block_size) * int(num_iterations)
    if _get(train_cfg, "curriculum_advance") != "steps":
        raise ValueError("train.curriculum_advance plateau: the tokens of a run are not known ahead "
                         "(use curriculum_advance: steps with num_tokens / num_epochs)")
    cfg = {**train_cfg, "num_iterations": int(num_iterations)}
    bounds = [0, *[min(m, num_iterations) for m in curriculum_marks(cfg)], int(num_iterations)]
    return batch * sum(int(length) * (b - a) for length, a, b in zip(ladder, bounds, bounds[1:]))


def steps_for_tokens(train_cfg: Mapping[str, Any], block_size: int, num_tokens: int) -> int:
    """The fewest steps whose tokens (:func:`tokens_for_steps`) reach ``num_tokens``.

    Equal data, not equal steps: a curriculum variant with shorter early sequences runs more
    steps than the baseline for the same ``num_tokens``.

    Raises:
        ValueError: num_tokens < 1 or a plateau curriculum.
    """
    if num_tokens < 1:
        raise ValueError(f"train.num_tokens must be >= 1, got {num_tokens}")
    batch = int(train_cfg["batch_size"])
    ladder = train_cfg.get("curriculum_block_sizes")
    shortest = min(int(x) for x in ladder) if ladder else int(block_size)
    n = max(1, math.ceil(num_tokens / (batch * int(block_size))))   # every step at full length
    upper = max(n, math.ceil(num_tokens / (batch * shortest)))      # every step at the shortest
    while n < upper and tokens_for_steps(train_cfg, block_size, n) < num_tokens:
        n += 1
    return n


def resolve_depth_warm(model_cfg: Mapping[str, Any], num_iterations: int | None) -> dict:
    """A copy of a ``model`` section with DepthWarm fractions turned into steps.

    ``depth_warm_fraction`` -> ``depth_warm_steps = round(f * num_iterations)`` and
    ``depth_warm_drop_until_fraction`` -> ``depth_warm_drop_until``, so the same variant is the
    same treatment at every stage length (``workflow.model.depth_warm_state`` stays a function
    of the step). ``num_iterations`` None drops the fraction keys (to read the architecture).

    Raises:
        ValueError: a fraction and its step key both set, or a fraction outside [0, 1].
    """
    out = dict(model_cfg or {})
    for frac_key, step_key in (("depth_warm_fraction", "depth_warm_steps"),
                               ("depth_warm_drop_until_fraction", "depth_warm_drop_until")):
        frac = out.pop(frac_key, None)
        if frac is None:
            continue
        if out.get(step_key) is not None:
            raise ValueError(f"model keys '{frac_key}' and '{step_key}' are both set; use one")
        if not 0.0 <= float(frac) <= 1.0:
            raise ValueError(f"model key '{frac_key}' must be in [0, 1], got {frac}")
        if num_iterations is not None:
            out[step_key] = int(round(float(frac) * int(num_iterations)))
    return out
