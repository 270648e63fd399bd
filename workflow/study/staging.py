"""Checks and run settings of a sequential last stage and of continued stages. Torch-free.

``verdict.sequential.looks``: seeds per variant at each look of the last stage
(workflow/analysis/sequential.py decides at them).

``stages.<S>.continue_from: <R>``: the first min(seeds_S, seeds_R) runs of stage S use stage R's
seeds and resume from R's run of the same variant and seed at the step where R's learning
rate starts to decay (the *branch step*: warmup-stable-decay / trapezoidal, Hägele et al. 2024,
arXiv 2405.18392). Up to that step the two runs are the same computation (same seed, data
order, learning rates and everything else), so the continued run is bit-identical to
training S from scratch. R's runs then keep a checkpoint at the branch step
(``<run>/branch/``, run-config key ``branch_at``), S's continued runs carry
``continue_from: {stage, step, config_hash}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from workflow.optim.schedules import lr_multiplier
from workflow.study.schema import ConfigError

#: train keys that may differ between a stage and the stage it continues (the learning rates
#: before the branch step are compared separately).
LENGTH_KEYS = ("num_iterations", "warmdown_iters")
#: train keys whose schedules depend on the run's length: a continued stage cannot have them.
LENGTH_DEPENDENT = ("curriculum_fractions", "num_tokens", "num_epochs", "training_hours")


def check_sequential(config: dict) -> None:
    """``verdict.sequential``: looks increasing, at least 2 seeds at the first, the last look equal
    to the last stage's seeds.

    Raises:
        ConfigError: naming ``verdict.sequential.looks`` and the fix.
    """
    seq = (config.get("verdict") or {}).get("sequential")
    if not seq:
        return
    looks = list(seq["looks"])
    final = list(config["stages"])[-1]
    seeds = config["stages"][final]["seeds"]
    if any(b <= a for a, b in zip(looks, looks[1:])):
        raise ConfigError(f"verdict.sequential.looks: {looks} must increase (seeds per variant at each look)")
    if looks[-1] != seeds:
        raise ConfigError(f"verdict.sequential.looks: the last look ({looks[-1]}) must be stages.{final}.seeds ({seeds}), "
                          "the most seeds a variant runs")


def source_stage(config: dict, stage: str) -> str | None:
    """The stage ``stage`` continues (``stages.<stage>.continue_from``), or None."""
    return config["stages"][stage].get("continue_from")


def continued_seeds(config: dict, stage: str) -> int:
    """How many of ``stage``'s runs continue its source stage's runs (0 without continue_from)."""
    source = source_stage(config, stage)
    return min(config["stages"][stage]["seeds"], config["stages"][source]["seeds"]) if source else 0


def branch_step(train_source: dict, train_stage: dict, where: str) -> int:
    """The step where the source stage's learning rate leaves the stable phase (its decay start),
    checked to be a step the continuing stage reaches with the same learning rates.

    Args:
        train_source, train_stage: the resolved ``train`` sections of the two runs.
        where: the config key for errors (``stages.B.continue_from``).
    Raises:
        ConfigError: a schedule that cannot branch (cosine, linear, inv_sqrt: the learning rate
            depends on the run's length from the first step after warmup), a length-dependent
            schedule, or other train settings that differ.
    """
    if train_source["schedule"] != "trapezoidal" or train_stage["schedule"] != "trapezoidal":
        raise ConfigError(
            f"{where}: schedule {train_source['schedule']!r} / {train_stage['schedule']!r} cannot branch: its learning "
            "rate depends on the run's length from the first step after warmup, so a shorter run is not the start of a "
            "longer one; use train.schedule: trapezoidal (warmup-stable-decay) with train.warmdown_iters > 0")
    for key in LENGTH_DEPENDENT:
        if train_source.get(key) is not None or train_stage.get(key) is not None:
            raise ConfigError(f"{where}: train.{key} is set; its schedule depends on the run's length, so runs of "
                              "different lengths differ before the branch step (remove continue_from or the key)")
    differ = sorted(k for k in set(train_source) | set(train_stage)
                    if k not in LENGTH_KEYS and train_source.get(k) != train_stage.get(k))
    if differ:
        raise ConfigError(f"{where}: the two stages' train settings differ in {', '.join(differ)}: a continued run must "
                          "be the same computation up to the branch step (only num_iterations and warmdown_iters may differ)")
    step = int(train_source["num_iterations"]) - int(train_source["warmdown_iters"])
    if step >= int(train_stage["num_iterations"]):
        raise ConfigError(f"{where}: the branch step {step} is not before the continuing stage's end "
                          f"({train_stage['num_iterations']} steps)")
    for s in range(step):
        if lr_multiplier(s, train_source) != lr_multiplier(s, train_stage):
            raise ConfigError(f"{where}: the learning rates differ at step {s} (before the branch step {step}): "
                              "the continuing stage's decay must start at or after the source stage's")
    return step


def check_continuation(config: dict) -> None:
    """``stages.<S>.continue_from``: an earlier stage, never on the last stage.

    Raises:
        ConfigError: naming the key.
    """
    stages = list(config["stages"])
    for i, stage in enumerate(stages):
        source = source_stage(config, stage)
        if source is None:
            continue
        where = f"stages.{stage}.continue_from"
        if i == len(stages) - 1:
            raise ConfigError(f"{where}: the last stage never continues earlier runs: its seeds must be fresh, so its "
                              "answer does not inherit the luck that selected its variants (docs/statistics.md)")
        if source not in stages[:i]:
            raise ConfigError(f"{where}: {source!r} is not an earlier stage (earlier: {', '.join(stages[:i]) or 'none'})")


def look_seeds(seeds: Sequence[int], looks: Sequence[int], open_after: Sequence[bool]) -> list[int]:
    """Seeds a variant runs: the first look's, then each next look's while it stays open.

    Args:
        seeds: the last stage's seeds in order.
        looks: seeds per variant at each look.
        open_after: for each look decided so far, whether the variant was open after it.
    """
    n = looks[0]
    for k, still_open in enumerate(open_after):
        if not still_open or k + 1 >= len(looks):
            break
        n = looks[k + 1]
    return list(seeds[:n])


def variant_look_seeds(seeds: Sequence[int], looks: Sequence[int], variant: str, baseline: str,
                       read_look: Callable[[int], Mapping | None], through: int | None = None) -> tuple[list[int], int | None]:
    """Seeds ``variant`` runs in a sequential last stage, and the look that decided it.

    A variant runs the first look's seeds, then each next look's while it stays open
    (:func:`look_seeds`); the baseline runs while any variant is open. Both the Snakemake
    side (rules/common.smk ``run_seeds``) and ``workflow.status`` count seeds with it.

    Args:
        seeds: the last stage's seeds in order.
        looks: ``verdict.sequential.looks`` (seeds per variant at each look).
        variant, baseline: the variant, the study's baseline.
        read_look: k (1-based) -> look k's checkpoint ``looks/look_<k>.json`` (``workflow.gates
            look``: ``{"open": [variants still open], ...}``), or None while it is not written:
            the variant then counts as open (the most seeds it can still run). Called for the
            looks in order, up to the first that decides the variant.
        through: only the looks before look ``through`` (1-based); None: every look but the
            last (the verdict is the last look).
    Returns:
        (the seeds, the 1-based look after which it runs no more seeds: None while open or
        before its look is written, and for a variant that runs every seed).
    """
    last = len(looks) - 1 if through is None else through - 1
    open_after: list[bool] = []
    for k in range(1, last + 1):
        look = read_look(k)
        still_open = True if look is None else (bool(look["open"]) if variant == baseline else variant in look["open"])
        open_after.append(still_open)
        if not still_open:
            return look_seeds(seeds, looks, open_after), k
    return look_seeds(seeds, looks, open_after), None
