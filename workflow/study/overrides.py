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
from workflow.study.study_file import load_study_text

#: Variant names the schema accepts (config/schema.yaml, variants.propertyNames).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# ---- one-off overrides ------------------------------------------------------------------


def _number(value: Any) -> Any:
    """``1e-3`` written in YAML 1.1 is the string '1e-3' (it needs '1.0e-3'): a number here."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def parse_value(text: str, where: str = "set") -> Any:
    """A ``set`` value: YAML read as a study file is (workflow.study.study_file: ``1e-3`` is a
    number, lists ``[16, 32]`` and mappings ``{a: 1}`` as written); empty text is None.

    Raises:
        ConfigError: the value is not valid YAML (``where``, the value and YAML's reason).
    """
    if not text.strip():
        return None
    try:
        return _number(load_study_text(text, "value"))
    except ConfigError as err:
        reason = str(err).split(": ", 1)[-1]
        raise ConfigError(f"{where}: the value {text.strip()!r} is {reason}; quote a string, write a list "
                          "as [16, 32] and a mapping as {a: 1}") from None


def cli_value(text: str) -> Any:
    """A ``--config KEY=VALUE`` value as Snakemake reads it (snakemake.cli.parse_config): int, float,
    True/False, else YAML with every scalar a string (yaml.BaseLoader), else the text."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text


def _unparse(value: Any) -> str:
    """yaml.BaseLoader's reading of flow text, written back (its scalars are the text written)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_unparse(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_unparse(v) for v in value) + "]"
    return str(value)


def _split_top_level(text: str) -> list[str]:
    """``a=1, k=[16, 32], m={x: 1}`` -> its items: commas inside brackets, braces or quotes do not split.

    Raises:
        ConfigError: a bracket or brace that is never closed, or closed without being opened.
    """
    items, depth, quote, start = [], [], None, 0
    pairs = {"[": "]", "{": "}"}
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in pairs:
            depth.append(pairs[char])
        elif char in "]}":
            if not depth or depth.pop() != char:
                raise ConfigError(f"the {char!r} after {text[:i]!r} closes nothing that was opened")
        elif char == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    if depth or quote:
        opened = quote or {"]": "[", "}": "{"}[depth[-1]]
        raise ConfigError(f"a {opened!r} is never closed")
    return [*items, text[start:]]


def override_entries(value: Any) -> list[str]:
    """The ``KEY=VALUE`` entries of a ``set`` value: one entry (``KEY=VALUE``, its value any YAML:
    ``k=[16, 32]``, ``k={a: 1}``), a list of them (``[KEY=VALUE, KEY=VALUE]``, as text or as a
    list), as written on the command line or in the study file.

    Raises:
        ConfigError: naming the entry that is not ``KEY=VALUE``, or the bracket left open.
    """
    if isinstance(value, dict):  # Snakemake read 'k={a: 1}' as the mapping {'k={a': '1}'}: the text again
        value = ", ".join(f"{k}: {_unparse(v)}" for k, v in value.items())
    if isinstance(value, str) and value.strip().startswith("["):
        text = value.strip()
        if not text.endswith("]"):
            raise ConfigError(
                f"set: {value!r} has no closing ']': an unclosed list is read as one string; write the whole list, "
                "set='[KEY=VALUE, KEY=VALUE]', or one KEY=VALUE")
        try:
            entries = [item.strip() for item in _split_top_level(text[1:-1])]
        except ConfigError as err:
            raise ConfigError(f"set: {value!r}: {err} inside the list's brackets [...]") from None
        entries = [] if entries == [""] else entries
    else:
        entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        raise ConfigError(f"set: expected KEY=VALUE or a list of them, got {value!r}")
    out = []
    for entry in entries:
        if isinstance(entry, (dict, list)):
            entry = _unparse(entry)[1:-1] if isinstance(entry, dict) else _unparse(entry)
        if not isinstance(entry, str) or "=" not in entry or not entry.split("=", 1)[0].strip():
            raise ConfigError(f"set: {entry!r} is not KEY=VALUE (e.g. set='stages.C.train.num_iterations=350'; "
                              "several: set='[KEY=VALUE, KEY=VALUE]')")
        try:
            _split_top_level(entry)
        except ConfigError as err:
            raise ConfigError(f"set: {entry!r}: {err} (a list value is [16, 32], a mapping {{a: 1}}; "
                              "several sets: set='[KEY=VALUE, KEY=VALUE]')") from None
        out.append(entry.strip())
    return out


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
        value = parse_value(text, where=f"set {entry!r}")
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
