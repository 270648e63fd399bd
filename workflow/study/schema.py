"""The schema (config/schema.yaml), the one source of defaults, and schema errors people can read.

:func:`validate_study` names the key, value, rule and the key's description in a few lines;
:func:`validate_section` validates and fills in one section (the trainer's ``train``).
"""

from __future__ import annotations

import copy
import difflib
import json
from functools import lru_cache

import jsonschema

from workflow.core.schema_file import SCHEMA_PATH, load_schema

__all__ = ["SCHEMA_PATH", "ConfigError", "load_schema", "validate_section", "validate_study", "validator_with_defaults"]


class ConfigError(ValueError):
    """A study or run configuration is invalid; the message names the key at fault."""


@lru_cache(maxsize=None)
def _section_validator(definition: str) -> jsonschema.protocols.Validator:
    """The validator of ``#/definitions/<definition>``, built once per process (building a
    validator class costs milliseconds; a big study resolves thousands of run configs)."""
    schema = load_schema()
    sub = dict(schema["definitions"][definition])
    sub["definitions"] = schema["definitions"]
    return validator_with_defaults(sub)


def validator_with_defaults(schema: dict) -> jsonschema.protocols.Validator:
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
