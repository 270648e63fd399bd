"""DepthWarm: progressive layer activation plus a stochastic-depth warmup (schedule only).

``depth_warm_state(step, cfg)`` is pure (no torch): the trainer calls it every step and hands
the result to ``GPT.set_depth_schedule_state``.
"""

from __future__ import annotations

from typing import Any, Mapping

from workflow.model.spec import GPTConfig

__all__ = ["depth_warm_state"]

def depth_warm_state(step: int, cfg: GPTConfig | Mapping[str, Any]) -> tuple[int, float]:
    """DepthWarm schedule: (active_layers, drop_prob) for training step ``step`` (0-based).

    Layers join in order (layer 0 first). With L = n_layer, s0 = depth_warm_start_layers
    (clamped to [1, L]), S = depth_warm_steps, p0 = depth_warm_drop_prob,
    D = depth_warm_drop_until:

        active_layers(step) = L                                      if S == 0 or step >= S
                            = s0 + floor((L - s0) * step / S)        otherwise (linear ramp)
        drop_prob(step)     = p0 * max(0, 1 - step / D)              (0 if D == 0)

    ``drop_prob`` is the stochastic-depth probability of skipping the deepest active layer in
    a training forward pass; active layer i (0-based) of n is skipped with probability
    drop_prob * (i + 1) / n (the linear-decay rule of Huang et al. 2016, "Deep Networks with
    Stochastic Depth"); whole layers are skipped per batch as in LayerDrop (Fan et al. 2019).
    When ``depth_warm`` is False the state is (L, 0.0): the full model.

    Args:
        step: training step (>= 0).
        cfg: a GPTConfig, or a mapping with n_layer and the depth_warm_* keys (schema
            ``definitions/model``; missing depth_warm_* keys take GPTConfig's defaults).

    Returns:
        (active_layers: int in [1, n_layer], drop_prob: float in [0, 1)).

    Raises:
        ValueError: negative step or a mapping without n_layer.
    """
    if step < 0:
        raise ValueError(f"depth_warm_state: step must be >= 0, got {step}")
    get = (lambda k, d=None: getattr(cfg, k, d)) if isinstance(cfg, GPTConfig) else cfg.get
    n_layer = get("n_layer")
    if n_layer is None:
        raise ValueError("depth_warm_state: config has no 'n_layer'")
    if not get("depth_warm", False):
        return int(n_layer), 0.0
    start = min(max(int(get("depth_warm_start_layers", 1)), 1), n_layer)
    ramp = int(get("depth_warm_steps", 0))
    if ramp <= 0 or step >= ramp:
        active = n_layer
    else:
        active = start + ((n_layer - start) * step) // ramp
    p0 = float(get("depth_warm_drop_prob", 0.0))
    until = int(get("depth_warm_drop_until", 0))
    drop = 0.0 if until <= 0 else p0 * max(0.0, 1.0 - step / until)
    return int(active), float(drop)
