"""Study configuration: schema defaults, semantic checks and resolved run configs.

A *study* config (``config/config.yaml``, validated by Snakemake against
``config/schema.yaml``) describes a baseline, its variants and the stages. A *run*
config is what one training job needs: the study's ``model``/``train`` sections with
the stage's and the variant's overrides merged in, plus the run's identity (stage,
variant, seed). :func:`run_config` builds it; the trainer receives it as JSON.

Merge order of ``train`` (later wins): study ``train`` < stage ``train`` < variant ``train``.
Merge order of ``model``: study ``model`` < variant ``model``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"

#: Keys of a run config that identify a repeat rather than define the experiment;
#: they are left out of :func:`config_hash` so all seeds of one setting share a hash.
_IDENTITY_KEYS = ("seed", "run_id", "stage", "variant", "study", "out_dir")


class ConfigError(ValueError):
    """A study or run configuration is invalid; the message names the key at fault."""


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The study schema (``config/schema.yaml``) as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@lru_cache(maxsize=None)
def _section_validator(definition: str) -> jsonschema.protocols.Validator:
    """The validator of ``#/definitions/<definition>``, built once per process (building a
    validator class costs milliseconds; a big study resolves thousands of run configs)."""
    schema = load_schema()
    sub = dict(schema["definitions"][definition])
    sub["definitions"] = schema["definitions"]
    return _validator_with_defaults(sub)


def _validator_with_defaults(schema: dict) -> jsonschema.protocols.Validator:
    """JSON Schema 2020-12 validator (as Snakemake uses) that also fills in ``default`` values (jsonschema's documented recipe)."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(schema)


def validate_section(values: dict | None, definition: str, where: str) -> dict:
    """Validate ``values`` against ``#/definitions/<definition>`` and fill its defaults.

    Args:
        values: the section (not modified; a filled copy is returned).
        definition: name under ``definitions`` in the schema, e.g. ``"train"``.
        where: human-readable location used in error messages, e.g. ``"variants.wide.train"``.
    Returns:
        A new dict with defaults filled in.
    Raises:
        ConfigError: naming ``where`` plus the path of the offending key.
    """
    try:  # every seed of a (stage, variant) resolves the same sections: validate each once
        key = json.dumps(values or {}, sort_keys=True)
    except TypeError:
        return _validate_section(copy.deepcopy(values), definition, where)
    filled = _validate_section_cached(key, definition)
    if filled is None:  # invalid: the error names this caller's location
        return _validate_section(json.loads(key), definition, where)
    return json.loads(filled)


@lru_cache(maxsize=4096)
def _validate_section_cached(key: str, definition: str) -> str | None:
    """The filled section as JSON text (each caller gets its own copy with ``json.loads``), None if invalid."""
    try:
        return json.dumps(_validate_section(json.loads(key), definition, definition))
    except ConfigError:
        return None


def _validate_section(filled: dict | None, definition: str, where: str) -> dict:
    filled = filled or {}
    errors = sorted(_section_validator(definition).iter_errors(filled), key=lambda e: list(e.path))
    if errors:
        lines = []
        for err in errors:
            path = ".".join([where, *map(str, err.path)])
            lines.append(f"{path}: {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
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


def stage_seeds(config: dict, stage: str) -> list[int]:
    """Seeds of a stage's repeats: ``base_seed + run_id`` for ``run_id`` in ``range(seeds)``."""
    return [config["base_seed"] + run_id for run_id in range(config["stages"][stage]["seeds"])]


def stage_resources(config: dict, stage: str) -> dict:
    """The stage's job resources with schema defaults filled in and ``nproc_per_node`` resolved.

    ``nproc_per_node`` defaults to the GPUs per node (``torchrun --nproc_per_node`` equals
    the GPUs granted), or 1 on CPU.

    Raises:
        ConfigError: ``nproc_per_node`` set and different from ``gpus`` on a GPU stage.
    """
    where = f"stages.{stage}.resources"
    res = validate_section(config["stages"][stage].get("resources"), "resources", where)
    if res["nproc_per_node"] is None:
        res["nproc_per_node"] = res["gpus"] or 1
    elif res["gpus"] and res["nproc_per_node"] != res["gpus"]:
        raise ConfigError(
            f"{where}.nproc_per_node: {res['nproc_per_node']} processes but gpus: {res['gpus']} per node "
            "(one process per GPU; leave nproc_per_node unset)"
        )
    return res


def launch_command(res: dict, python: str = "python") -> str:
    """Command prefix that starts a training job's processes (followed by ``-m workflow.train``).

    One node: ``torchrun --standalone`` with ``nproc_per_node`` processes (it sets RANK,
    LOCAL_RANK, WORLD_SIZE). Several nodes: ``srun`` with one task per GPU (or per
    ``nproc_per_node`` on CPU) across the allocation; workflow.distributed reads SLURM's
    variables (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST).

    Args:
        res: resolved stage resources (:func:`stage_resources`).
        python: the Python interpreter to run.
    """
    if res["nodes"] == 1:
        return f"{python} -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node {res['nproc_per_node']}"
    gpu_flag = " --gpus-per-task=1" if res["gpus"] else ""
    return (
        f"srun --nodes={res['nodes']} --ntasks-per-node={res['nproc_per_node']}{gpu_flag} "
        f"--cpus-per-task={res['cpus_per_proc']} --kill-on-bad-exit=1 {python}"
    )


def slurm_resources(res: dict) -> dict:
    """Snakemake resources for ``snakemake-executor-plugin-slurm`` (None = not set).

    One node: ``gpu`` (-> ``--gpus``), ``gpu_model``, ``cpus_per_task`` for all processes.
    Several nodes: ``gpu`` in total, ``nodes``, ``mpi="srun"`` (the plugin then runs the
    command as is, and :func:`launch_command`'s srun places one task per GPU),
    ``tasks_per_node`` (or ``tasks`` + ``tasks_per_gpu`` for one GPU per node, which the
    plugin needs), ``cpus_per_task`` per process.
    """
    gpus, nodes, nproc = res["gpus"], res["nodes"], res["nproc_per_node"]
    out = {
        "gpu": gpus * nodes or None,
        "gpu_model": res["gpu_model"] if gpus else None,
        "nodes": nodes,
        "cpus_per_task": nproc * res["cpus_per_proc"] if nodes == 1 else res["cpus_per_proc"],
        "mem_mb": res["mem_mb"],
        "runtime": res["runtime"],
        "slurm_partition": res["slurm_partition"],
        "mpi": None,
        "tasks": None,
        "tasks_per_gpu": None,
        "tasks_per_node": None,
        "slurm_extra": None,
    }
    if nodes > 1:
        out["mpi"] = "srun"
        if gpus:
            out["slurm_extra"] = "--gpus-per-task=1"
        if nproc == 1:
            out["tasks"], out["tasks_per_gpu"] = nodes, (1 if gpus else None)
        else:
            out["tasks_per_node"] = nproc
    return out


def run_config(config: dict, stage: str, variant: str, seed: int) -> dict:
    """Resolved configuration of one training run.

    Args:
        config: the validated study config.
        stage: stage name (key of ``config["stages"]``).
        variant: variant name (key of ``config["variants"]``).
        seed: the run's seed, ``base_seed + run_id``.
    Returns:
        ``{"study", "stage", "variant", "seed", "run_id", "dataset", "model", "train", "wandb"}``
        with ``model``/``train`` merged and defaults filled.
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
    return {
        "study": config["study"],
        "stage": stage,
        "variant": variant,
        "seed": int(seed),
        "run_id": int(seed) - config["base_seed"],
        "dataset": config["dataset"],
        "model": validate_section(model, "model", f"variants.{variant}.model"),
        "train": validate_section(train, "train", f"stages.{stage}.train + variants.{variant}.train"),
        "wandb": copy.deepcopy(config.get("wandb", {})),
    }


def config_hash(run_cfg: dict) -> str:
    """sha256 (first 16 hex digits) of the run config without its identity keys (seed, stage, ...)."""
    defining = {k: v for k, v in run_cfg.items() if k not in _IDENTITY_KEYS}
    canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def check_study(config: dict) -> None:
    """Semantic checks the schema cannot express; run before any job is scheduled.

    Checks that the baseline is a variant, that every stage but the last has a gate,
    and that every (stage, variant) resolves to a valid run config (unknown keys in a
    variant's ``train`` fail here, naming the variant and key).

    Raises:
        ConfigError: naming the key at fault.
    """
    if config["baseline"] not in config["variants"]:
        raise ConfigError(
            f"baseline: {config['baseline']!r} is not one of the variants ({', '.join(config['variants'])})"
        )
    stages = stage_order(config)
    for stage in stages[:-1]:
        if "gate" not in config["stages"][stage]:
            raise ConfigError(f"stages.{stage}.gate: required for every stage but the last ({stages[-1]})")
    if "gate" in config["stages"][stages[-1]]:
        raise ConfigError(f"stages.{stages[-1]}.gate: the last stage ends in the verdict and has no gate")
    for stage in stages:
        stage_resources(config, stage)
        for variant in config["variants"]:
            run_config(config, stage, variant, config["base_seed"])


def check_model_configs(config: dict, vocab_size: int = 256) -> None:
    """Build every variant's model config once so unknown model keys fail before any job runs.

    Raises:
        ConfigError: naming the variant and the model key at fault.
    """
    from workflow.model import build_model_config

    for variant, overrides in config["variants"].items():
        model = deep_merge(config.get("model", {}), (overrides or {}).get("model"))
        try:
            build_model_config(model, vocab_size)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"variants.{variant}.model: {err}") from err
