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
_IDENTITY_KEYS = ("seed", "run_id", "stage", "variant", "study", "out_dir", "stage_seed_offset")


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


def _first_sentence(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_error(err: jsonschema.ValidationError) -> list[str]:
    """Two or three lines for one schema error: key = value, the rule it breaks, the key's description."""
    import difflib

    path = [str(p) for p in err.absolute_path]
    where = ".".join(path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list((err.schema.get("properties") or {}))
        lines = []
        for key in [k for k in err.instance if k not in allowed]:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines += [f"{'.'.join([*path, key])} = {_short(err.instance[key])}: unknown key{hint}",
                      f"    rule: additionalProperties: false; allowed keys of {where or 'the study'}: {', '.join(allowed)}"]
        description = _first_sentence(err.schema.get("description"))
        return lines + ([f"    description of {where or 'the study'}: {description}"] if description else [])
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else str(err.validator_value)
        sub = (err.schema.get("properties") or {}).get(missing, {})
        lines = [f"{'.'.join([*path, missing])}: missing", f"    rule: required: {err.validator_value}"]
        description = _first_sentence(sub.get("description"))
        return lines + ([f"    description: {description}"] if description else [])
    lines = [f"{where or '(the study)'} = {_short(err.instance)}: {err.message if len(err.message) <= 120 else err.message[:117] + '...'}",
             f"    rule: {err.validator}: {_short(err.validator_value, 120)}"]
    description = _first_sentence(err.schema.get("description")) if isinstance(err.schema, dict) else ""
    return lines + ([f"    description: {description}"] if description else [])


def validate_study(config: dict, max_errors: int = 5) -> None:
    """Validate a study against ``config/schema.yaml`` (JSON Schema 2020-12, as Snakemake's
    ``validate``) and fail with a short message: per error the key and its value, the rule it
    breaks and the schema's description of the key (a few lines, never the whole schema).

    ``config`` is not modified (Snakemake's ``validate`` fills the defaults afterwards).

    Raises:
        ConfigError: the first ``max_errors`` errors, each naming its key.
    """
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    lines = [line for err in errors[:max_errors] for line in _describe_error(err)]
    more = f"\n  ... and {len(errors) - max_errors} more" if len(errors) > max_errors else ""
    raise ConfigError(f"invalid study config ({SCHEMA_PATH.parent.name}/{SCHEMA_PATH.name}):\n  "
                      + "\n  ".join(lines) + more)



def study_with_defaults(config: dict) -> dict:
    """A copy of a study, validated (:func:`validate_study`'s errors) and with the schema's
    defaults filled, as Snakemake's ``validate`` leaves it: for tools that read a study outside
    Snakemake (``python -m workflow.plan``).

    Raises:
        ConfigError: naming the key at fault.
    """
    validate_study(config)
    filled = copy.deepcopy(config)
    for _ in _validator_with_defaults(load_schema()).iter_errors(filled):
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
    """
    first = config["base_seed"] + stage_seed_offset(config, stage)
    return [first + run_id for run_id in range(config["stages"][stage]["seeds"])]


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
    """Command prefix of a training job (followed by ``--log``, ``--run-config`` ... of workflow.launch).

    Always ``python -m workflow.launch`` (data check, one log per attempt, the job's exit status
    is the trainer's: 75 = preempted). One process: the trainer runs inside it (no torchrun).
    Several processes on one node: ``--nproc-per-node N`` (torchrun --standalone underneath).
    Several nodes: ``--nodes M`` and the srun layout (one task per GPU, or per ``nproc_per_node``
    on CPU); workflow.distributed reads SLURM's variables (SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID, SLURM_JOB_NODELIST).

    Args:
        res: resolved stage resources (:func:`stage_resources`).
        python: the Python interpreter to run.
    """
    cmd = f"{python} -m workflow.launch --nproc-per-node {res['nproc_per_node']}"
    if res["nodes"] > 1:
        cmd += f" --nodes {res['nodes']} --cpus-per-proc {res['cpus_per_proc']}"
        if res["gpus"]:
            cmd += " --gpus-per-task"
    return cmd


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
        seed: the run's seed, one of :func:`stage_seeds` of ``stage``.
    Returns:
        ``{"study", "stage", "variant", "seed", "run_id", "stage_seed_offset", "dataset",
        "model", "train", "wandb"}`` with ``model``/``train`` merged and defaults filled;
        ``run_id = seed - base_seed - stage_seed_offset``.
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
    return {
        "study": config["study"],
        "stage": stage,
        "variant": variant,
        "seed": int(seed),
        "run_id": int(seed) - config["base_seed"] - offset,
        "stage_seed_offset": offset,
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

    Checks that the dataset is known (and its ``datasets.<name>`` options), that the baseline
    is a variant, that every stage but the last has a gate, that a ``top_k`` gate's ``k`` does
    not exceed the variants it ranks (all but the baseline), and that every (stage, variant)
    resolves to a valid run config (unknown keys in a variant's ``train`` fail here, naming
    the variant and key).

    Raises:
        ConfigError: naming the key at fault.
    """
    from workflow.datasets import DATASETS, UnknownNameError, dataset_options

    if config["dataset"] not in DATASETS:
        raise ConfigError(
            f"dataset: {config['dataset']!r} is not a known dataset (known: {', '.join(sorted(DATASETS))}; "
            "docs/datasets.md)"
        )
    for name, options in (config.get("datasets") or {}).items():
        if name not in DATASETS:
            raise ConfigError(f"datasets.{name}: {name!r} is not a known dataset (known: {', '.join(sorted(DATASETS))})")
        try:
            dataset_options(name, options)
        except UnknownNameError as err:
            raise ConfigError(str(err)) from None
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
    ranked = [v for v in config["variants"] if v != config["baseline"]]
    for stage in stages[:-1]:
        gate = validate_section(config["stages"][stage]["gate"], "gate", f"stages.{stage}.gate")
        if gate["rule"] == "top_k" and gate["k"] > len(ranked):
            raise ConfigError(
                f"stages.{stage}.gate.k: {gate['k']}, but the study has {len(ranked)} variants besides the baseline "
                f"({', '.join(ranked) or 'none'}); top_k would advance every one of them (k <= {len(ranked)})"
            )
    stride = config.get("seed_stride", load_schema()["properties"]["seed_stride"]["default"])
    for stage in stages:
        if config["stages"][stage]["seeds"] > stride:
            raise ConfigError(
                f"stages.{stage}.seeds: {config['stages'][stage]['seeds']} seeds exceed seed_stride "
                f"({stride}): the stages' seed ranges would overlap"
            )
        stage_resources(config, stage)
        for variant in config["variants"]:
            run_config(config, stage, variant, stage_seeds(config, stage)[0])


def variant_model_config(config: dict, variant: str):
    """The torch-free ``GPTConfig`` of a variant (study ``model`` + the variant's), built with a
    byte vocabulary (256: the vocabulary changes no block pattern or sync count).

    Raises:
        ValueError: the model section is invalid (``build_model_config``'s message).
    """
    from workflow.model.config import build_model_config
    from workflow.schedules import resolve_depth_warm

    model = deep_merge(config.get("model", {}), (config["variants"][variant] or {}).get("model"))
    return build_model_config(resolve_depth_warm(model, None), 256)


def comm_study_variants(config: dict) -> list[str]:
    """Variants with tensor-parallel blocks (sync counts), in study order. Checks that real tensor
    parallelism gets a multiple of ``tp_size`` processes per run in every stage.

    Raises:
        ConfigError: naming the variant, the stage and the process count at fault.
    """
    out = []
    for variant in config["variants"]:
        model = variant_model_config(config, variant)
        if not model.tensor_parallel:
            continue
        out.append(variant)
        for stage in stage_order(config):
            res = stage_resources(config, stage)
            if model.tp_mode == "real" and (res["nproc_per_node"] * res["nodes"]) % model.tp_size:
                raise ConfigError(
                    f"variants.{variant}.model: tp_mode real with tp_size {model.tp_size} needs a multiple of "
                    f"{model.tp_size} processes per run, but stages.{stage}.resources give "
                    f"{res['nproc_per_node'] * res['nodes']} (set nproc_per_node or gpus)"
                )
    return out


def gpt2_scale(config: dict) -> bool:
    """GPT-2 124M on GPT-2-tokenized web text: where the comm study's thresholds (all-TP baseline
    3.28; < 3.35 and < 3.40 goals) mean something."""
    return config["dataset"] in ("openwebtext", "fineweb10B") and all(
        (c.n_layer, c.n_embd, c.n_head) == (12, 768, 12)
        for c in (variant_model_config(config, v) for v in config["variants"]))


def check_model_configs(config: dict, vocab_size: int = 256) -> None:
    """Build every variant's model config once so unknown model keys fail before any job runs,
    and check every (stage, variant)'s schedules against its model: a curriculum's last rung
    equals block_size and starts before the end of the run; DepthWarm fractions are valid.

    Raises:
        ConfigError: naming the variant (and stage) and the key at fault.
    """
    from workflow.model import build_model_config
    from workflow.schedules import check_curriculum, resolve_depth_warm, steps_for_tokens

    for variant, overrides in config["variants"].items():
        model = deep_merge(config.get("model", {}), (overrides or {}).get("model"))
        try:
            block_size = build_model_config(resolve_depth_warm(model, 1), vocab_size).block_size
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"variants.{variant}.model: {err}") from err
        for stage in stage_order(config):
            train = run_config(config, stage, variant, stage_seeds(config, stage)[0])["train"]
            try:
                if train.get("num_epochs") is None:  # epochs need the data's token count: checked by the trainer
                    if train.get("num_tokens") is not None:
                        train["num_iterations"] = steps_for_tokens(train, block_size, train["num_tokens"])
                    check_curriculum(train, block_size)
            except ValueError as err:
                raise ConfigError(f"stages.{stage}.train + variants.{variant}.train: {err}") from err
