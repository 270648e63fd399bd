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

import os
import string
from collections.abc import Mapping
from pathlib import Path

from workflow.core.io import read_json
from workflow.data.registry import (
    DATASETS, UnknownNameError, dataset_options, study_meta_path, tokens_dataset, tokens_dir_name,
)
from workflow.study.gate_rules import gate_rule
from workflow.study.length import model_block_size, run_steps
from workflow.model.spec import build_model_config
from workflow.study.resolve import deep_merge, run_config, stage_order, stage_seeds
from workflow.study.resources import stage_resources
from workflow.optim.schedules import check_curriculum, resolve_depth_warm
from workflow.study.schema import ConfigError, load_schema, validate_section
from workflow.study.script_files import check_executables, placeholder_values, tracked_files
from workflow.study.trainer_section import TrainerConfigError, check_placeholders, needs_nanogpt_data, resolve_paths
from workflow.study.staging import check_continuation, check_sequential
from workflow.study.trainer_section import check_files as check_trainer_files

#: Study keys that are folders (every output path starts with one): no braces.
PATH_KEYS = ("data_dir", "results_dir")


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

    for key in PATH_KEYS:
        value = str(config.get(key, ""))
        if "{" in value or "}" in value:
            raise ConfigError(
                f"{key}: {value!r} has a brace, but it becomes part of every output path, where Snakemake reads "
                "braces as wildcards: it cannot be a path (name the folder without '{' and '}')"
            )
    if config["dataset"] not in DATASETS:
        raise ConfigError(
            f"dataset: {config['dataset']!r} is not a known dataset (known: {', '.join(sorted(DATASETS))}; "
            "docs/datasets.md)"
        )
    for name, options in (config.get("datasets") or {}).items():
        if name not in DATASETS:
            raise ConfigError(f"datasets.{name}: {name!r} is not a known dataset (known: {', '.join(sorted(DATASETS))})")
        try:
            opts = dataset_options(name, options)
        except UnknownNameError as err:
            raise ConfigError(str(err)) from None
        if "pair_format" in (options or {}):
            check_pair_format(opts["pair_format"], f"datasets.{name}.pair_format")
    if config["baseline"] not in config["variants"]:
        raise ConfigError(
            f"baseline: {config['baseline']!r} is not one of the variants ({', '.join(config['variants'])})"
        )
    stages = stage_order(config)
    for stage in stages[:-1]:
        if "gate" not in config["stages"][stage]:
            raise ConfigError(f"stages.{stage}.gate: required for every stage but the last ({stages[-1]})")
    check_sequential(config)
    check_continuation(config)
    for stage in stages:
        source = config["stages"][stage].get("continue_from")
        sizes = {s: (r["nproc_per_node"] * r["nodes"], r["gpus"]) for s in (source, stage) if source
                 for r in [stage_resources(config, s)]}
        if source and sizes[source] != sizes[stage]:
            raise ConfigError(f"stages.{stage}.continue_from: stage {source} runs {sizes[source][0]} process(es) with "
                              f"{sizes[source][1]} GPU(s) per node, stage {stage} {sizes[stage][0]} with {sizes[stage][1]}: a run "
                              "continues only with the same workers (every rank resumes its own state)")
    if "gate" in config["stages"][stages[-1]]:
        raise ConfigError(f"stages.{stages[-1]}.gate: the last stage ends in the verdict and has no gate")
    ranked = [v for v in config["variants"] if v != config["baseline"]]
    for stage in stages[:-1]:
        gate = validate_section(config["stages"][stage]["gate"], "gate", f"stages.{stage}.gate")
        problem = gate_rule(gate["rule"]).check(gate, ranked)
        if problem:
            raise ConfigError(f"stages.{stage}.gate.{problem}")
    check_gates_and_verdict(config)
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


#: The fields of a pair_format (workflow/data/datasets/multi30k.py formats each pair with them).
PAIR_FIELDS = ("en", "de")


def check_pair_format(text, key: str) -> None:
    """``pair_format`` names only ``{en}`` and ``{de}`` (``{{``/``}}``: literal braces).

    Raises:
        ConfigError: naming the key, the value and the field (or the brace) at fault.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{key}: {text!r} is not a string (e.g. '{{en}}\\n{{de}}')")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        raise ConfigError(f"{key}: {text!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    for field in fields:
        if field not in PAIR_FIELDS:
            raise ConfigError(f"{key}: {text!r} names the field {{{field}}}, but a pair has only {{en}} (the "
                              "English sentence) and {de} (the German one); write {{ and }} for literal braces")


def check_gates_and_verdict(config: dict) -> None:
    """Gate and verdict settings that can never work: a gate whose ``min_successful_runs`` (written in
    the study) exceeds its stage's seeds (nothing can pass it), and a verdict whose ``winners`` need
    ``target_val_loss`` without one.

    Raises:
        ConfigError: naming the key, its value and what to change.
    """
    stages = stage_order(config)
    default_min = load_schema()["definitions"]["gate"]["properties"]["min_successful_runs"]["default"]
    for stage in stages[:-1]:
        gate = validate_section(config["stages"][stage]["gate"], "gate", f"stages.{stage}.gate")
        seeds = config["stages"][stage]["seeds"]
        if gate["min_successful_runs"] > seeds and gate["min_successful_runs"] != default_min:
            raise ConfigError(
                f"stages.{stage}.gate.min_successful_runs: {gate['min_successful_runs']}, but stage {stage} runs "
                f"{seeds} seed(s) per variant (stages.{stage}.seeds): no variant can pass the gate, so stage "
                f"{stage} would train for nothing; set min_successful_runs <= {seeds} or seeds >= "
                f"{gate['min_successful_runs']}")
    verdict = config.get("verdict") or {}
    winners = verdict.get("winners", "baseline")
    if winners in ("target", "both") and verdict.get("target_val_loss") is None:
        raise ConfigError(
            f"verdict.winners: {winners!r} needs verdict.target_val_loss (a winner must beat it), but the study "
            "sets none: set verdict.target_val_loss (e.g. 3.28), or winners: baseline")


def variant_model_config(config: dict, variant: str):
    """The torch-free ``GPTConfig`` of a variant (study ``model`` + the variant's), built with a
    byte vocabulary (256: the vocabulary changes no block pattern or sync count).

    Raises:
        ValueError: the model section is invalid (``build_model_config``'s message).
    """

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

    for variant, overrides in config["variants"].items():
        model = deep_merge(config.get("model", {}), (overrides or {}).get("model"))
        try:
            block_size = model_block_size(model)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"variants.{variant}.model: {err}") from err
        for stage in stage_order(config):
            cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
            train = cfg["train"]
            try:
                steps = run_steps(cfg, None)  # None: in epochs, which need the data's token count (the trainer checks)
                if steps is not None:
                    check_curriculum({**train, "num_iterations": steps}, block_size)
            except ValueError as err:
                raise ConfigError(f"stages.{stage}.train + variants.{variant}.train: {err}") from err


def vocab_size_error(model_vocab, data_vocab: int, key: str, where: str) -> str | None:
    """Why a model with ``model_vocab`` token ids (None: the data's own) cannot read data of
    ``data_vocab`` symbols (``where``: its meta.json), or None when it can."""
    if model_vocab is None or int(model_vocab) >= data_vocab:
        return None
    return (f"{key}: {model_vocab}, but the data ({where}) has {data_vocab} symbols (token ids 0..{data_vocab - 1}): "
            f"the model would have no embedding row for ids >= {model_vocab}; set {key} >= {data_vocab}, "
            "or leave it out (null: the data's own)")


def check_data_vocab(config: dict, meta: dict, where: str) -> None:
    """Every variant's ``model.vocab_size`` (when set) covers the symbols of the study's data.

    Raises:
        ConfigError: naming the variant's key, its value and the data's symbols.
    """
    for variant, overrides in config["variants"].items():
        model = deep_merge(config.get("model", {}), (overrides or {}).get("model"))
        key = "model.vocab_size" if "vocab_size" in (config.get("model") or {}) else f"variants.{variant}.model.vocab_size"
        error = vocab_size_error(model.get("vocab_size"), int(meta["vocab_size"]), key, where)
        if error:
            raise ConfigError(error)


def _run_steps(cfg: dict) -> int | None:
    """Steps of a resolved run where the study alone says (:func:`workflow.study.length.run_steps`;
    None: num_epochs, which needs the data's size, or a model section that does not build)."""
    try:
        return run_steps(cfg, None)
    except (ValueError, TypeError, KeyError):
        return None


def plan_warnings(config: dict) -> list[str]:
    """Legal studies that are probably not meant; printed with the plan (:func:`format_printed_plan`).

    - a DiLoCo run whose ``strategy.outer_steps x tau`` replaces ``train.num_iterations``, and whose
      length then differs from the baseline's in the stage (its gate compares unequal runs);
    - gossip with one worker per run: no neighbours, no communication;
    - ``gate.pivot`` on the first gate (no previous gate to pivot to: it does nothing);
    - a gate whose default ``min_successful_runs`` exceeds its stage's seeds (nothing can pass it);
    - a last stage of fewer than 2 seeds: no verdict test has data, so no variant can win;
    - a script variant that differs from the baseline only in ``model`` (the script never sees it).
    """
    out = []
    stages = stage_order(config)
    baseline = config["baseline"]
    for stage in stages:
        res = stage_resources(config, stage)
        workers = res["nproc_per_node"] * res["nodes"]
        cfgs = {v: run_config(config, stage, v, stage_seeds(config, stage)[0]) for v in config["variants"]}
        base_steps = _run_steps(cfgs[baseline])
        for variant, cfg in cfgs.items():
            train = cfg["train"]
            strategy = train.get("strategy") or {}
            if strategy.get("name") == "diloco" and strategy.get("outer_steps") is not None:
                steps = _run_steps(cfg)
                outer = f"strategy.outer_steps {strategy['outer_steps']} x tau {strategy['tau']}"
                if steps is not None and train.get("num_tokens") is None and steps != train["num_iterations"]:
                    out.append(f"stages.{stage} + variants.{variant}: {outer} = {steps} steps replaces "
                               f"train.num_iterations {train['num_iterations']}: the run trains {steps} steps")
                if variant != baseline and None not in (steps, base_steps) and steps != base_steps:
                    out.append(f"stages.{stage} + variants.{variant}: trains {steps} steps ({outer}), the baseline "
                               f"{baseline!r} {base_steps}: the stage compares runs of different lengths")
            if variant != baseline and "trainer" in cfg and _differs_only_in_model(cfg, cfgs[baseline]):
                out.append(f"stages.{stage} + variants.{variant}: differs from the baseline {baseline!r} only in model, "
                           "which a script trainer never sees: its runs are the baseline's (give the script what "
                           "differs through args, env or train keys)")
            if strategy.get("name") == "gossip" and workers < 2:
                out.append(f"stages.{stage} + variants.{variant}: strategy gossip with {workers} worker per run "
                           f"(stages.{stage}.resources): no neighbours, so it trains alone like ddp on one process "
                           "and is no communication variant; give the stage nproc_per_node >= 2")
    first_gate = (config["stages"][stages[0]].get("gate") or {}) if len(stages) > 1 else {}
    if first_gate.get("pivot"):
        out.append(f"stages.{stages[0]}.gate.pivot: true, but a pivot runs the next-best variant of the previous "
                   f"gate, and {stages[0]} is the first stage: it has no previous gate, so the setting does nothing "
                   "(set pivot on a later gate)")
    for stage in stages[:-1]:
        need, seeds = (config["stages"][stage].get("gate") or {}).get("min_successful_runs"), config["stages"][stage]["seeds"]
        if need is not None and need > seeds:  # a value written in the study is check_study's error
            out.append(f"stages.{stage}.gate.min_successful_runs: {need}, but stage {stage} runs {seeds} "
                       f"seed(s) per variant: no variant can pass the gate; set gate.min_successful_runs: {seeds} "
                       f"or seeds >= {need}")
    last = stages[-1]
    seeds = config["stages"][last]["seeds"]
    if seeds < 2:
        test = (config.get("verdict") or {}).get("test", "paired")
        need = "2 seed-matched pairs" if test == "paired" else "2 runs on each side"
        out.append(f"stages.{last}.seeds: {seeds}, but the verdict's {test} t-test needs at least {need} (and the "
                   f"target test 2 runs): no variant can win this study; give the last stage seeds >= 2")
    return out


def _differs_only_in_model(cfg: dict, base: dict) -> bool:
    """True when two run configs of one stage differ in ``model`` and nothing else (identity keys aside)."""
    def rest(c: dict) -> dict:
        return {k: v for k, v in c.items() if k not in ("variant", "model")}
    return cfg["model"] != base["model"] and rest(cfg) == rest(base)


def check_trainers(config: dict, study_dir: str | Path, check_files: bool = True) -> dict[tuple[str, str], dict]:
    """Check every (stage, variant)'s script trainer before any job: its placeholders
    name known values, launcher python is not asked for several processes per node, and
    (``check_files``) its workdir, script and inputs exist. ``study_dir``: the folder of the study
    file (relative workdirs start there).

    Returns:
        (stage, variant) -> the path-resolved trainer, for the runs that use a script.
    Raises:
        ConfigError: naming the stage, variant, key and the placeholder or file at fault.
    """
    out = {}
    for stage in stage_order(config):
        for variant in config["variants"]:
            cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
            if "trainer" not in cfg:
                continue
            where = f"stages.{stage} + variants.{variant}"
            trainer = resolve_paths(cfg["trainer"], study_dir)
            res = stage_resources(config, stage)
            if trainer["launcher"] == "python" and res["nproc_per_node"] > 1 and res["nodes"] == 1:
                raise ConfigError(f"{where}.trainer.launcher: python runs one process, but stages.{stage}.resources "
                                  f"ask for {res['nproc_per_node']} per node: use launcher torchrun")
            try:
                check_placeholders(trainer, cfg["train"], where)
                if check_files:
                    check_trainer_files(trainer, where)
                    values = placeholder_values({**cfg, "trainer": trainer}, Path(
                        config["results_dir"], config["study"], f"stage_{stage}", variant, f"seed_{cfg['seed']}"),
                        Path(study_meta_path(config)), res, 1)
                    tracked_files(trainer, values, where)  # format specs fit the values, inputs exist
                    check_executables(trainer, values, where)
            except TrainerConfigError as err:
                raise ConfigError(str(err)) from None
            out[(stage, variant)] = trainer
    return out


def check_script_data(config: dict, trainers: Mapping[tuple[str, str], dict]) -> None:
    """A script run that reads ``{nanogpt_data_dir}`` (:func:`workflow.study.trainer_section.needs_nanogpt_data`)
    needs a dataset with its own split files: nanoGPT's layout (train.bin / val.bin as uint16 +
    meta.pkl, workflow/data/nanogpt_layout.py) is made from them, and a shard dataset (FineWeb)
    keeps modded-nanogpt's shard format. ``trainers``: :func:`check_trainers`'s result.

    Raises:
        ConfigError: naming the dataset and the placeholders to use instead.
    """
    dataset = config["dataset"]
    if any(needs_nanogpt_data(t) for t in trainers.values()) and not DATASETS[dataset].static_split_files:
        raise ConfigError(
            f"trainer: {{nanogpt_data_dir}} asked for, but {dataset} is a shard dataset whose shards stay in "
            "modded-nanogpt's format: use {train_files} / {val_files} (README, 'Your own training script')")


def check_study_data(config: dict) -> None:
    """Once the study's tokens exist (their ``meta.json``, :func:`workflow.data.registry.study_meta_path`),
    :func:`check_data_vocab` against it; before that nothing (the job's launcher checks the data
    before training: workflow.jobs.launcher.check_data).

    Raises:
        ConfigError: a variant's ``model.vocab_size`` below the data's symbols.
        ValueError: the meta.json is not valid JSON (message names the file and line).
    """
    meta = study_meta_path(config)
    if os.path.exists(meta):
        check_data_vocab(config, read_json(meta), meta)


def tokens_folder_options(config: dict, tokens: str) -> dict:
    """The study's options (config ``datasets.<name>``) of the dataset whose tokens folder is
    ``{data_dir}/tokens/{tokens}``, checked against the folder's name
    (:func:`workflow.data.registry.tokens_dir_name`): a folder is only ever made with the options it names.

    Raises:
        ConfigError: the study's options name another folder (message names both).
    """
    dataset = tokens_dataset(tokens)
    options = dict((config.get("datasets") or {}).get(dataset) or {})
    if tokens_dir_name(dataset, options) != tokens:
        raise ConfigError(
            f"{config['data_dir']}/tokens/{tokens}: the study's datasets.{dataset} options name the folder "
            f"{tokens_dir_name(dataset, options)!r}; tokens of other options are made by the study that has them"
        )
    return options
