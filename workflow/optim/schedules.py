"""Torch-free schedules of a run: learning rate, sequence-length curriculum, DepthWarm fractions,
run lengths in tokens. The trainer applies them; the Snakemake main process plans studies with
them (workflow.study.length, checks) without importing torch."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from workflow.core.schema_file import load_schema

# Defaults of the keys this module reads: config/schema.yaml definitions/train, the one source.
TRAIN_DEFAULTS: dict[str, Any] = {
    name: prop.get("default") for name, prop in load_schema()["definitions"]["train"]["properties"].items()
}

SCHEDULES = ("cosine", "linear", "constant", "trapezoidal", "inv_sqrt")


def train_option(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg[key]`` of a ``train`` section, or the schema default when the key is missing or None-with-non-None default."""
    value = cfg.get(key)
    return TRAIN_DEFAULTS[key] if value is None else value


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
        step = max(step, progress * int(train_option(train_cfg, "num_iterations")))
    schedule = train_option(train_cfg, "schedule")
    if schedule not in SCHEDULES:
        raise ValueError(f"train key 'schedule': unknown schedule {schedule!r}; "
                         f"valid: {list(SCHEDULES)}")
    n = int(train_option(train_cfg, "num_iterations"))
    warmup = int(train_option(train_cfg, "warmup_iters"))
    r = float(train_option(train_cfg, "min_lr_ratio"))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "inv_sqrt":
        return 1.0 / math.sqrt(min(step, n) - warmup + 1)
    if schedule == "trapezoidal":
        warmdown = int(train_option(train_cfg, "warmdown_iters"))
        if warmdown <= 0:
            return 1.0
        return max(0.0, min(1.0, (n - min(step, n)) / warmdown))
    progress = min(max((step - warmup) / max(1, n - warmup), 0.0), 1.0)
    if schedule == "cosine":
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - r) * progress  # linear


def set_lr(optimizers: Sequence[Any], step: int,
           train_cfg: Mapping[str, Any], progress: float | None = None) -> float:
    """Set ``group["lr"] = group["initial_lr"] * lr_multiplier(step, train_cfg, progress)`` in
    every param group of every optimizer and return the multiplier.

    A group without ``initial_lr`` (as any optimizer builds it) first records its current
    ``lr`` there: the peak lr the schedule scales (kept in the optimizer's state_dict, so a
    resumed run scales the same peak).
    """
    mult = lr_multiplier(step, train_cfg, progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
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
    mode = train_option(train_cfg, "curriculum_advance")
    if mode == "steps":
        marks = curriculum_marks(train_cfg)
        rung = sum(1 for m in marks if step >= m)
        return ladder[rung]
    if mode == "plateau":
        patience = int(train_option(train_cfg, "curriculum_patience"))
        min_delta = float(train_option(train_cfg, "curriculum_min_delta"))
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
        n = int(train_option(train_cfg, "num_iterations"))
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
    if train_option(train_cfg, "curriculum_advance") == "steps" and len(ladder) > 1:
        n = int(train_option(train_cfg, "num_iterations"))
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
    if train_option(train_cfg, "curriculum_advance") != "steps":
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
