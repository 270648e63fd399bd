"""The study schema file, config/schema.yaml, read once: the one source of every default.

Below every package so the torch-free specs beside their domain (``workflow.model.spec``,
``workflow.optim.schedules``) read their defaults without importing study resolution;
validation and readable errors are ``workflow.study.schema``'s.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The study schema (``config/schema.yaml``) as a dict (cached: do not modify it)."""
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)
