"""Driving a study: grid sweeps, one-off overrides, the plan up front, and why runs rerun.

Everything here is torch-free and runs where Snakemake parses the workflow (the Snakefile
calls :func:`prepare_study` before schema validation, so expanded and overridden studies are
validated like hand-written ones).

Grid sweeps (``sweep:`` in a study; like Hydra's multirun or a W&B grid sweep)::

    sweep:
      train.lr: [1.0e-3, 2.0e-3, 4.0e-3]
      model.n_embd: [64, 96]

adds one variant per point of the Cartesian product (here 6), named from the swept keys'
last parts and values: ``lr-0.001_n_embd-64``, ... (:func:`sweep_variant_name`). Keys are
``model.<key>`` or ``train.<key>`` (nested keys with more dots, e.g. ``train.strategy.tau``);
values must be lists (``1e-3`` counts as a number, although YAML 1.1 reads it as a string).
The generated variants join the hand-written ones (the baseline stays
hand-written) and go through the schema and ``check_study`` like them.

One-off overrides of any nested key, from the command line, without copying the YAML::

    snakemake --cores all --config set='stages.C.train.num_iterations=350' -- stage_C
    snakemake --cores all --config set='[train.lr=3e-3, stages.A.seeds=3]'

``set`` is a ``KEY=VALUE`` string or a list of them (Snakemake parses ``--config`` values
as YAML, so the list form works as written). KEY is a dotted path into the study (a
component may itself contain dots when it names an existing key, e.g. a variant
``lr-1.5e-3``); VALUE is parsed as YAML (``1e-3`` as a number). Overrides apply before the
sweep is expanded and before validation. A study file may also hold ``set:``.

The plan up front (:func:`format_plan`), printed once when Snakemake parses the workflow:
per stage the most runs it can add (gates decide how many variants advance: ``top_k``
advances k, ties at the cut aside; ``beats_baseline`` at most every variant that reached
it), seeds, processes and GPUs per run, steps and tokens per run, and the totals.

Why runs rerun (:func:`explain_reruns`; ``snakemake --cores 1 why_rerun``): every finished
run's recorded config (``result.json`` ``config``) against the config the study gives it
now, with the keys that differ, grouped by change.

CLI: ``python -m workflow.sweep report-path [STUDY.yaml]`` prints the study's report path,
``{results_dir}/{study}/report.html`` (what ``make run STUDY=...`` passes to ``--report``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from workflow.config import ConfigError, load_schema, run_config, stage_order, stage_resources, stage_seeds

#: Variant names the schema accepts (config/schema.yaml, variants.propertyNames).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# ---- one-off overrides ------------------------------------------------------------------


def _number(value: Any) -> Any:
    """``1e-3`` written in YAML is the string '1e-3' (YAML 1.1 needs '1.0e-3'): a number here."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def parse_value(text: str) -> Any:
    """A ``set`` value: YAML, with numbers such as ``1e-3`` read as numbers."""
    return _number(yaml.safe_load(text)) if text.strip() else None


def _split_path(node: dict, parts: list[str]) -> tuple[str, list[str]]:
    """The first key of ``parts`` at ``node``: the longest dotted prefix that names an existing
    key (variant names may contain dots), else the first part."""
    for j in range(len(parts), 1, -1):
        candidate = ".".join(parts[:j])
        if candidate in node:
            return candidate, parts[j:]
    return parts[0], parts[1:]


def set_path(config: dict, dotted: str, value: Any, where: str = "set") -> None:
    """Set ``config[a][b][c] = value`` for ``dotted`` = ``"a.b.c"``, creating missing dicts.

    Raises:
        ConfigError: an empty key, or a key below a value that is not a mapping.
    """
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"{where}: {dotted!r} is not a dotted key (e.g. stages.C.train.num_iterations)")
    node, done = config, []
    while True:
        key, parts = _split_path(node, parts)
        done.append(key)
        if not parts:
            node[key] = value
            return
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(done)} is {child!r}, not a mapping, so {dotted} cannot be set")
        node = child


def override_entries(value: Any) -> list[str]:
    """The ``KEY=VALUE`` entries of a ``set`` value (a string or a list of strings).

    Raises:
        ConfigError: naming the entry that is not ``KEY=VALUE``.
    """
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        raise ConfigError(f"set: expected KEY=VALUE or a list of them, got {value!r}")
    out = []
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry:
            raise ConfigError(f"set: {entry!r} is not KEY=VALUE (e.g. set='stages.C.train.num_iterations=350')")
        out.append(entry)
    return out


def apply_overrides(config: dict) -> list[tuple[str, Any]]:
    """Apply the study's ``set`` entries in place; returns the (key, value) pairs applied.

    Raises:
        ConfigError: an entry is not ``KEY=VALUE``, or its key cannot be set.
    """
    applied = []
    for entry in override_entries(config.get("set") or []):
        key, text = entry.split("=", 1)
        value = parse_value(text)
        set_path(config, key.strip(), value, where=f"set {entry!r}")
        applied.append((key.strip(), value))
    return applied


# ---- grid sweeps ------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sweep_variant_name(point: Iterable[tuple[str, Any]]) -> str:
    """Variant name of one grid point: ``<last key part>-<value>`` joined by ``_``
    (``train.lr=0.002, model.n_embd=64`` -> ``lr-0.002_n_embd-64``)."""
    return "_".join(f"{key.split('.')[-1]}-{_format_value(value)}" for key, value in point)


def sweep_variants(sweep: dict) -> dict[str, dict]:
    """The variants of a grid sweep, in grid order (the last key varies fastest).

    Args:
        sweep: ``{"train.lr": [..], "model.n_embd": [..], ...}``.
    Returns:
        ``{name: {"description": ..., "model": {...}, "train": {...}}}``.
    Raises:
        ConfigError: a key outside ``model.`` / ``train.``, a value that is not a non-empty
            list, a name the schema would reject, or two points with the same name.
    """
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"sweep: expected a mapping of dotted keys to lists of values, got {sweep!r}")
    for key, values in sweep.items():
        section = str(key).split(".")[0]
        if section not in ("model", "train") or "." not in str(key) or str(key).endswith("."):
            raise ConfigError(f"sweep.{key}: sweep keys are model.<key> or train.<key> (e.g. train.lr)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values, got {values!r}")
    variants: dict[str, dict] = {}
    keys = list(sweep)
    values = [[_number(v) for v in sweep[k]] for k in keys]
    for combo in itertools.product(*values):
        point = list(zip(keys, combo))
        name = sweep_variant_name(point)
        if not _NAME.match(name):
            raise ConfigError(f"sweep: the variant name {name!r} of {dict(point)} is not a valid variant name "
                              "(letters, digits, '_', '.', '-')")
        if name in variants:
            raise ConfigError(f"sweep: two grid points give the variant name {name!r}")
        overrides: dict = {}
        for key, value in point:
            set_path(overrides, key, value, where=f"sweep.{key}")
        overrides["description"] = "sweep: " + ", ".join(f"{k}={_format_value(v)}" for k, v in point)
        variants[name] = overrides
    return variants


def expand_sweep(config: dict) -> list[str]:
    """Add the variants of ``config["sweep"]`` to ``config["variants"]`` in place.

    Returns:
        The names of the added variants (empty without a sweep).
    Raises:
        ConfigError: see :func:`sweep_variants`; or a generated name equals a hand-written variant.
    """
    if not config.get("sweep"):
        return []
    generated = sweep_variants(config["sweep"])
    variants = config.setdefault("variants", {}) or {}
    clash = sorted(set(generated) & set(variants))
    if clash:
        raise ConfigError(f"sweep: variant {clash[0]!r} is also written by hand under variants")
    variants.update(generated)
    config["variants"] = variants
    return list(generated)


def prepare_study(config: dict) -> None:
    """What the Snakefile does before validation: ``set`` overrides, then the sweep."""
    apply_overrides(config)
    expand_sweep(config)


# ---- the plan up front ------------------------------------------------------------------


def _block_size(model: dict) -> int | None:
    try:
        from workflow.model import build_model_config  # torch-free once workflow/model/ is a package

        return build_model_config(dict(model), 256).block_size
    except (ValueError, TypeError, KeyError):
        return None


def stage_plan(config: dict) -> list[dict]:
    """The most each stage can run: one dict per stage with ``stage``, ``variants`` (the most
    that can run: all in the first stage; after a ``top_k`` gate k + the baseline, ties at
    the cut aside; after ``beats_baseline`` every variant of the previous stage), ``seeds``,
    ``runs``, ``procs_per_run``, ``gpus_per_run``, ``steps`` (min, max over variants) and
    ``tokens`` (the most tokens the stage trains: steps x batch_size x block_size per run)."""
    stages = stage_order(config)
    n_variants = len(config["variants"])
    block_sizes = {}
    plan = []
    previous = n_variants
    for index, stage in enumerate(stages):
        if index == 0:
            most, rule = n_variants, "all variants"
        else:
            gate = config["stages"][stages[index - 1]]["gate"]
            if gate["rule"] == "top_k":
                most = min(previous, gate.get("k", 2) + 1)
                rule = f"baseline + top {gate.get('k', 2)} of {stages[index - 1]}"
            else:
                most, rule = previous, f"baseline + those of {stages[index - 1]} that pass {gate['rule']}"
        seeds = config["stages"][stage]["seeds"]
        res = stage_resources(config, stage)
        steps, tokens = [], []
        for variant in config["variants"]:
            cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
            train = cfg["train"]
            key = json.dumps(cfg["model"], sort_keys=True)
            if key not in block_sizes:
                block_sizes[key] = _block_size(cfg["model"])
            steps.append(train["num_iterations"])
            if block_sizes[key] is not None:
                tokens.append(train["num_iterations"] * train["batch_size"] * block_sizes[key])
        plan.append({
            "stage": stage,
            "variants": most,
            "which": rule,
            "seeds": seeds,
            "runs": most * seeds,
            "procs_per_run": res["nproc_per_node"] * res["nodes"],
            "gpus_per_run": res["gpus"] * res["nodes"],
            "steps": (min(steps), max(steps)),
            "tokens": max(tokens) * most * seeds if tokens else None,
        })
        previous = most
    return plan


def format_plan(config: dict) -> str:
    """The plan as a few lines of text (what the Snakefile prints once at the start)."""
    plan = stage_plan(config)
    runs = sum(p["runs"] for p in plan)
    lines = [f"stagerun plan for study {config['study']!r}: {len(config['variants'])} variants, "
             f"at most {runs} training runs (later stages run only what the gates advance)"]
    for p in plan:
        steps = f"{p['steps'][0]}" if p["steps"][0] == p["steps"][1] else f"{p['steps'][0]}-{p['steps'][1]}"
        tokens = f", <= {p['tokens']:,} tokens" if p["tokens"] else ""
        gpus = f"{p['gpus_per_run']} GPU(s)" if p["gpus_per_run"] else "CPU"
        lines.append(f"  stage {p['stage']}: <= {p['variants']} variants ({p['which']}) x {p['seeds']} seeds = "
                     f"<= {p['runs']} runs of {steps} steps, {p['procs_per_run']} process(es) and {gpus} each"
                     f"{tokens}")
    gpu_runs = sum(p["runs"] * p["gpus_per_run"] for p in plan)
    if gpu_runs:
        lines.append(f"  GPUs: at most {gpu_runs} GPU-run slots over the study (runs x GPUs per run)")
    return "\n".join(lines)


# ---- why runs rerun ---------------------------------------------------------------------


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two JSON-like values: (key, old, new);
    a key missing on one side shows as ``<absent>``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append((path, "<absent>", new[key]))
            elif key not in new:
                out.append((path, old[key], "<absent>"))
            else:
                out.extend(diff_keys(old[key], new[key], path))
        return out
    return [] if old == new else [(prefix, old, new)]


def explain_reruns(config: dict, results_dir: str | Path) -> str:
    """Why finished runs of the study would rerun: for every ``result.json`` under
    ``results_dir`` (``stage_<S>/<variant>/seed_<n>/``), the keys of its recorded config
    (``model``, ``train``, dataset) that differ from what the study gives it now, grouped by
    identical changes; and the runs whose stage or variant left the study.

    Returns:
        Text for a human (one block per change).
    """
    groups: dict[str, list[str]] = {}
    gone: list[str] = []
    checked = 0
    for path in sorted(Path(results_dir).glob("stage_*/*/seed_*/result.json")):
        stage = path.parent.parent.parent.name.removeprefix("stage_")
        variant, seed = path.parent.parent.name, int(path.parent.name.removeprefix("seed_"))
        run = f"{stage}/{variant}/seed_{seed}"
        if stage not in config["stages"] or variant not in config["variants"] or seed not in stage_seeds(config, stage):
            gone.append(run)
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            groups.setdefault(f"  result.json unreadable: {err}", []).append(run)
            continue
        checked += 1
        now = run_config(config, stage, variant, seed)
        old = {"dataset": recorded.get("dataset", now["dataset"]), **(recorded.get("config") or {})}
        new = {"dataset": now["dataset"], "model": now["model"], "train": now["train"]}
        changes = diff_keys({k: old.get(k) for k in new}, new)
        if changes:
            text = "\n".join(f"  {key}: {json.dumps(a)} -> {json.dumps(b)}" for key, a, b in changes)
            groups.setdefault(text, []).append(run)
    lines = [f"why_rerun: {checked} finished runs of study {config['study']!r} checked against the study's config"]
    if not groups and not gone:
        lines.append("no run's config changed (a rerun would come from other causes: code, inputs, launcher)")
    for text, runs in groups.items():
        lines.append(f"{len(runs)} run(s) changed ({', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''}):")
        lines.append(text)
    if gone:
        lines.append(f"{len(gone)} run(s) no longer in the study (stage, variant or seed removed): "
                     f"{', '.join(gone[:6])}{', ...' if len(gone) > 6 else ''}")
    return "\n".join(lines)



def report_path(study_file: str | Path) -> str:
    """``{results_dir}/{study}/report.html`` of a study file (results_dir: the file's, else the
    schema's default)."""
    with open(study_file, encoding="utf-8") as handle:
        study = yaml.safe_load(handle) or {}
    if "study" not in study:
        raise ConfigError(f"{study_file}: no 'study' key")
    results_dir = study.get("results_dir") or load_schema()["properties"]["results_dir"]["default"]
    return f"{results_dir}/{study['study']}/report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report-path", help="the study's report path")
    rp.add_argument("study", nargs="?", default="config/config.yaml")
    args = parser.parse_args(argv)
    print(report_path(args.study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
