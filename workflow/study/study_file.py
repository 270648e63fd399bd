"""Study files read strictly: duplicate keys refused, names kept as written, ``2e-3`` a number.

PyYAML (and so Snakemake's own ``--configfile`` loader) reads YAML 1.1, where

- a key written twice silently keeps its last value (two variants ``fast:``: one trains);
- a name is typed: ``123:`` is the int 123, ``yes:`` / ``on:`` the bool True, ``2:`` an int, so a
  variant or stage name is no longer a string;
- ``2e-3`` (no dot) is the *string* '2e-3', while ``2.0e-3`` is a float (YAML 1.2 and JSON read both
  as numbers).

:func:`load_study_file` reads a study with :class:`StudyLoader`, which refuses a duplicate key
(naming the file, both lines and the key), keeps every mapping key as the text written (``123:``
is the name '123', ``yes:`` the name 'yes') and reads ``2e-3`` as the number 0.002 (the YAML 1.2
float rule: written numbers are numbers, as in ``set=`` values and JSON). The Snakefile re-reads
the files Snakemake loaded with it (:func:`reload_study`), and ``python -m workflow.status`` reads
them with it, so both see the same study.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from workflow.study.resolve import deep_merge
from workflow.study.schema import ConfigError

#: YAML 1.2 core-schema floats, plus YAML 1.1's (``1.0e+6``, ``.5``, ``.inf``, ``.nan``).
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _DuplicateKey(Exception):
    """Internal: raised inside PyYAML's constructor, turned into a ConfigError outside it (a short traceback)."""


class StudyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats, mapping keys as written (strings) and duplicate
    keys refused (:class:`ConfigError` naming the key and both lines)."""

    #: The dotted path of the mapping being built (for the duplicate-key message).
    path: list[str] = []


# Floats: drop SafeLoader's float resolver (YAML 1.1: a dot is required), add the 1.2 one. Ints
# keep their resolver, which runs first for digits-only text.
StudyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StudyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _float(loader: StudyLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).replace("_", "")
    lower = text.lower()
    if lower.endswith(".inf"):
        return float("-inf") if lower.startswith("-") else float("inf")
    if lower == ".nan":
        return float("nan")
    return float(text)


def _mapping(loader: StudyLoader, node: yaml.MappingNode) -> dict:
    written = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor): their entries first, overridable
    merged = len(node.value) - written
    out: dict = {}
    lines: dict[str, int] = {}
    for index, (key_node, value_node) in enumerate(node.value):
        if isinstance(key_node, yaml.ScalarNode):
            key = key_node.value  # the name as written: '123', 'yes', '2'
        else:
            key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        path = loader.path + [str(key)]
        if key in lines and index >= merged:
            raise _DuplicateKey(
                f"{key_node.start_mark.name}, line {line}: {'.'.join(path)} is written twice (first on line "
                f"{lines[key]}); YAML would keep only the last one: rename or remove one of them")
        loader.path = path  # the values below name their keys from here
        try:
            out[key] = loader.construct_object(value_node, deep=True)
        finally:
            loader.path = path[:-1]
        if index >= merged:
            lines[key] = line
    return out


StudyLoader.add_constructor("tag:yaml.org,2002:float", _float)
StudyLoader.add_constructor("tag:yaml.org,2002:map", _mapping)


def _yaml_error(path: str, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    hint = ""
    if "\\t" in problem or "\t" in problem:
        hint = ": YAML cannot indent with tabs; indent with spaces"
    return ConfigError(f"{where}: not valid YAML ({problem}){hint}")


def load_study_text(text: str, name: str = "<study>") -> Any:
    """YAML text read with :class:`StudyLoader`.

    Raises:
        ConfigError: invalid YAML (``name``, line and column; a tab: "indent with spaces"), or a
            duplicate key (``name``, both lines, the key).
    """
    loader = StudyLoader(text)
    loader.name = name
    loader.path = []
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise _yaml_error(name, err) from None
    except _DuplicateKey as err:
        raise ConfigError(str(err)) from None
    finally:
        loader.dispose()


def load_study_file(path: str | os.PathLike) -> dict:
    """A study file (YAML or JSON) read with :class:`StudyLoader`; an empty file is ``{}``.

    Raises:
        ConfigError: see :func:`load_study_text`; or the file holds no mapping at its top.
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as handle:
        data = load_study_text(handle.read(), str(path))
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a study file is a mapping of keys (study:, variants:, stages:, ...), "
                          f"not a {type(data).__name__}")
    return dict(data)


def load_study_files(paths: Iterable[str | os.PathLike]) -> dict:
    """The study files merged in order (later files' keys win; mappings merge, as Snakemake)."""
    config: dict = {}
    for path in paths:
        config = deep_merge(config, load_study_file(path))
    return config


def reload_study(config: dict, paths: Iterable[str | os.PathLike], overrides: Mapping | None) -> None:
    """Replace the study Snakemake loaded (``config``, in place) by the same files read with
    :class:`StudyLoader`, with the ``--config`` values (``overrides``) on top as Snakemake puts
    them. A file using yte templates (``__use_yte__``) is left as Snakemake read it.

    Raises:
        ConfigError: a duplicate key or invalid YAML (naming the file and line).
    """
    paths = [str(p) for p in paths]
    if not paths:
        return
    strict = load_study_files(paths)
    if strict.get("__use_yte__"):
        return
    strict = deep_merge(strict, dict(overrides or {}))
    config.clear()
    config.update(strict)
