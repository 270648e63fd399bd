"""``--config set=KEY=VALUE`` overrides and ``sweep:`` grids, turned into plain keys and variants.

:func:`prepare_study` runs first in the Snakefile, so the schema and the study checks validate the
result like hand-written keys. The CLI is ``python -m workflow.sweep`` (workflow/sweep.py).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Iterable

import yaml

from workflow.study.schema import ConfigError

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
        if isinstance(entry, str) and entry.strip().startswith("[") != entry.strip().endswith("]"):
            missing = "closing ']'" if entry.strip().startswith("[") else "opening '['"
            raise ConfigError(
                f"set: {entry!r} has no {missing}: an unclosed list is read as one string; write the whole list, "
                "set='[KEY=VALUE, KEY=VALUE]', or one KEY=VALUE"
            )
        if not isinstance(entry, str) or "=" not in entry:
            raise ConfigError(f"set: {entry!r} is not KEY=VALUE (e.g. set='stages.C.train.num_iterations=350')")
        out.append(entry)
    return out


#: Sections whose keys are names the study defines: ``set`` changes them, never adds one (a typo
#: would otherwise add a stage or a variant, and the error that follows would blame another key).
NAMED_SECTIONS = {"stages": "stage", "variants": "variant"}


def _check_named_entry(config: dict, dotted: str, entry: str) -> None:
    """``stages.<S>...`` / ``variants.<V>...`` must name an existing stage / variant.

    Raises:
        ConfigError: naming the entry, the unknown name and the known ones.
    """
    section, _, rest = dotted.partition(".")
    if section not in NAMED_SECTIONS or not rest or not isinstance(config.get(section), dict):
        return
    name, _ = _split_path(config[section], rest.split("."))
    if name not in config[section]:
        kind = NAMED_SECTIONS[section]
        raise ConfigError(
            f"set {entry!r}: the study has no {kind} {name!r} ({section}: {', '.join(config[section])}); "
            f"set changes existing {section} and adds none (write a new {kind} in the study file)"
        )


def apply_overrides(config: dict) -> list[tuple[str, Any]]:
    """Apply the study's ``set`` entries in place; returns the (key, value) pairs applied.

    Raises:
        ConfigError: an entry is not ``KEY=VALUE`` (an unclosed list: with a hint about the bracket),
            its key cannot be set, or it names a stage or variant the study does not have.
    """
    applied = []
    for entry in override_entries(config.get("set") or []):
        key, text = entry.split("=", 1)
        _check_named_entry(config, key.strip(), entry)
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
