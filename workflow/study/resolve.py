"""Study -> run configs: merge order, stage seeds, :func:`run_config` and :func:`config_hash`.

A *run* config is what one training job needs: the study's ``model`` / ``train`` sections with
the stage's and the variant's overrides merged in, plus the run's identity (stage, variant,
seed). Merge order of ``train`` (later wins): study < stage < variant; of ``model``: study <
variant. Torch-free.
"""

from __future__ import annotations

import copy
import hashlib
import json

from workflow.data.registry import DATASETS, token_options
from workflow.study.schema import ConfigError, validator_with_defaults, load_schema, validate_section, validate_study
from workflow.study.staging import branch_step, continued_seeds, source_stage
from workflow.study.trainer_section import TrainerConfigError, check_section, is_script_trainer

#: Keys of a run config that identify a repeat rather than define the experiment;
#: they are left out of :func:`config_hash` so all seeds of one setting share a hash.
_IDENTITY_KEYS = ("seed", "run_id", "stage", "variant", "study", "out_dir", "stage_seed_offset")



def study_with_defaults(config: dict) -> dict:
    """A copy of a study, validated (:func:`validate_study`'s errors) and with the schema's
    defaults filled, as Snakemake's ``validate`` leaves it: for tools that read a study outside
    Snakemake (``python -m workflow.compute_plan``).

    Raises:
        ConfigError: naming the key at fault.
    """
    validate_study(config)
    filled = copy.deepcopy(config)
    for _ in validator_with_defaults(load_schema()).iter_errors(filled):
        pass
    return filled

def _copy(value):
    """A deep copy of config data; plain containers (dict, list) are copied without
    ``copy.deepcopy``'s bookkeeping (a big study merges thousands of sections)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return copy.deepcopy(value)


def deep_merge(base: dict, override: dict | None) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, other values replace)."""
    merged = _copy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def stage_order(config: dict) -> list[str]:
    """Stage names in the order they run (the order written in the config)."""
    return list(config["stages"])


def stage_seed_offset(config: dict, stage: str) -> int:
    """Offset of ``stage``'s seed range: ``seed_stride`` x the stage's 0-based position.

    Each stage gets its own, disjoint seed range, so a later stage never re-tests the
    initialisations and batch orders that selected a variant in an earlier stage (a
    selected variant's lucky seeds would otherwise carry over into its confirmation).

    Raises:
        ConfigError: unknown stage.
    """
    stages = stage_order(config)
    if stage not in stages:
        raise ConfigError(f"stages.{stage}: no such stage (stages: {', '.join(stages)})")
    return stages.index(stage) * int(config.get("seed_stride", load_schema()["properties"]["seed_stride"]["default"]))


def stage_seeds(config: dict, stage: str) -> list[int]:
    """Seeds of a stage's repeats: ``base_seed + stage_seed_offset(stage) + run_id`` for
    ``run_id`` in ``range(stages.<stage>.seeds)``.

    Example: base_seed 1337, seed_stride 1000, seeds A 2 / B 3 / C 5 give A = 1337, 1338;
    B = 2337..2339; C = 3337..3341. Within a stage every variant runs the same seeds (so
    runs can be paired by seed); across stages the ranges are disjoint (checked by
    :func:`check_study`: ``seeds <= seed_stride``).
    A stage with ``continue_from: R`` starts with R's first seeds (those runs continue R's) and
    fills up with its own range: seeds B 3 continuing A 2 = 1337, 1338, 2337.
    """
    first = config["base_seed"] + stage_seed_offset(config, stage)
    shared = continued_seeds(config, stage)
    inherited = stage_seeds(config, source_stage(config, stage))[:shared] if shared else []
    return inherited + [first + run_id for run_id in range(config["stages"][stage]["seeds"] - shared)]


def run_id_of(config: dict, stage: str, seed: int) -> int:
    """The run's 0-based id in its stage: ``seed - base_seed - stage_seed_offset``, or, in a
    stage that continues another, the seed's position in :func:`stage_seeds`."""
    if source_stage(config, stage):
        return stage_seeds(config, stage).index(int(seed))
    return int(seed) - config["base_seed"] - stage_seed_offset(config, stage)


def run_config(config: dict, stage: str, variant: str, seed: int) -> dict:
    """Resolved configuration of one training run.

    Args:
        config: the validated study config.
        stage: stage name (key of ``config["stages"]``).
        variant: variant name (key of ``config["variants"]``).
        seed: the run's seed, one of :func:`stage_seeds` of ``stage``.
    Returns:
        ``{"study", "stage", "variant", "seed", "run_id", "stage_seed_offset", "dataset",
        "model", "train", "wandb"}`` with ``model``/``train`` merged and defaults filled;
        ``run_id = seed - base_seed - stage_seed_offset``; plus ``dataset_options`` (the
        options that change the tokens, workflow.data.registry.token_options) when they are not
        the defaults: the launcher refuses tokens made with others.
    Raises:
        ConfigError: unknown stage/variant, or a merged section fails the schema.
    """
    if stage not in config["stages"]:
        raise ConfigError(f"stages.{stage}: no such stage (stages: {', '.join(config['stages'])})")
    if variant not in config["variants"]:
        raise ConfigError(f"variants.{variant}: no such variant (variants: {', '.join(config['variants'])})")
    overrides = config["variants"][variant] or {}
    stage_cfg = config["stages"][stage]
    train = deep_merge(deep_merge(config.get("train", {}), stage_cfg.get("train", {})), overrides.get("train"))
    model = deep_merge(config.get("model", {}), overrides.get("model"))
    offset = stage_seed_offset(config, stage)
    dataset_opts = {}
    if config["dataset"] in DATASETS:  # an unknown dataset is check_study's error
        dataset_opts = token_options(config["dataset"], (config.get("datasets") or {}).get(config["dataset"]))
    cfg = {
        "study": config["study"],
        "stage": stage,
        "variant": variant,
        "seed": int(seed),
        "run_id": run_id_of(config, stage, seed),
        "stage_seed_offset": offset,
        "dataset": config["dataset"],
        "model": validate_section(model, "model", f"variants.{variant}.model"),
        "train": validate_section(train, "train", f"stages.{stage}.train + variants.{variant}.train"),
        "wandb": copy.deepcopy(config.get("wandb", {})),
    }
    if dataset_opts:  # absent for the defaults: runs of default data keep their config (and results)
        cfg["dataset_options"] = dataset_opts
    continuation(config, stage, variant, int(seed), cfg)  # only studies with stages.<S>.continue_from
    # ---- script runs: your own training script (workflow/study/trainer_section.py) ----
    trainer = run_trainer(config, stage, variant)
    if trainer is not None:
        cfg["trainer"] = trainer
    return cfg


def _train_section(config: dict, stage: str, variant: str) -> dict:
    overrides = config["variants"][variant] or {}
    train = deep_merge(deep_merge(config.get("train", {}), config["stages"][stage].get("train", {})), overrides.get("train"))
    return validate_section(train, "train", f"stages.{stage}.train + variants.{variant}.train")


def continuation(config: dict, stage: str, variant: str, seed: int, cfg: dict) -> None:
    """Add the continued-run keys to ``cfg`` (in place): ``branch_at`` (the step to keep a
    checkpoint at) for a run of a stage another stage continues, ``continue_from: {stage, step,
    config_hash}`` for a run that continues one. Nothing for other studies (their run configs
    and hashes stay as they are).

    Raises:
        ConfigError: :func:`workflow.study.staging.branch_step`'s.
    """
    later = [s for s in config["stages"] if source_stage(config, s) == stage]
    if later:
        cfg["branch_at"] = branch_step(cfg["train"], _train_section(config, later[0], variant),
                                       f"stages.{later[0]}.continue_from")
    source = source_stage(config, stage)
    if source and seed in stage_seeds(config, source)[:continued_seeds(config, stage)]:
        source_cfg = run_config(config, source, variant, seed)
        cfg["continue_from"] = {"stage": source, "step": source_cfg["branch_at"], "config_hash": config_hash(source_cfg)}


def source_run_result(config: dict, results: str, stage: str, variant: str, seed: int) -> list[str]:
    """The file a continued run (``stages.<stage>.continue_from``) depends on besides the data: its
    source run's ``result.json`` under ``results`` (written after the run's branch checkpoint
    ``<run>/branch/``, so a rerun of the source reruns the continued run); [] for every other run."""
    source = source_stage(config, stage)
    if not source or seed not in stage_seeds(config, source)[:continued_seeds(config, stage)]:
        return []
    return [f"{results}/stage_{source}/{variant}/seed_{seed}/result.json"]


def run_trainer(config: dict, stage: str, variant: str) -> dict | None:
    """The resolved ``trainer`` section of (stage, variant): study < stage < variant, validated
    with the schema's defaults, paths as written (relative); None for the built-in trainer (no
    section, or neither ``script`` nor ``command``), so built-in run configs never change.

    Raises:
        ConfigError: the merged section fails the schema or trainer_section.check_section.
    """
    parts = [config.get("trainer"), config["stages"][stage].get("trainer"), (config["variants"][variant] or {}).get("trainer")]
    if all(part is None for part in parts):
        return None
    merged: dict = {}
    for part in parts:
        merged = deep_merge(merged, part or {})
    inputs = merged_inputs(parts)
    if inputs is not None:
        merged["inputs"] = inputs
    where = f"stages.{stage} + variants.{variant}"
    trainer = validate_section(merged, "trainer", f"{where}.trainer")
    try:  # a section that is there but incomplete (even `trainer: {}`) is an error, never the built-in trainer
        check_section(trainer, where)
    except TrainerConfigError as err:
        raise ConfigError(str(err)) from None
    return trainer


def merged_inputs(parts: list) -> list[str] | None:
    """``trainer.inputs`` of study < stage < variant: a later level's inputs add to the earlier
    ones (each once, in order); ``"!path"`` drops ``path`` given by an earlier level. None when no
    level gives inputs (the section keeps its default)."""
    given = [part["inputs"] for part in parts if isinstance(part, dict) and part.get("inputs") is not None]
    if not given:
        return None
    out: list[str] = []
    for inputs in given:
        for path in inputs:
            if isinstance(path, str) and path.startswith("!"):
                out = [p for p in out if p != path[1:]]
            elif path not in out:
                out.append(path)
    return out


def config_hash(run_cfg: dict) -> str:
    """sha256 (first 16 hex digits) of the run config without its identity keys (seed, stage, ...)."""
    defining = {k: v for k, v in run_cfg.items() if k not in _IDENTITY_KEYS}
    canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
