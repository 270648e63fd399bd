"""Values of ``trainer.env`` stay off disk and off command lines (torch-free).

``trainer.env`` may hold secrets (``WANDB_API_KEY: sk-...``). Snakemake stores every param in
``.snakemake/metadata`` and writes the shell command into its log, and ``ps`` shows command lines,
so the run config a job gets on its command line carries, for each env value, a token instead:
``"stagerun-env:<sha256 of the value, 16 hex digits>"`` (:func:`redact_trainer`). The values
themselves travel in the environment of the Snakemake process, which every job inherits
(local jobs as children; SLURM jobs through ``--export=ALL``): :data:`ENV_VAR` holds the JSON
``{token: value}`` (:func:`export_values`), and the job puts the values back
(:func:`restore_trainer`) before it starts the script. An edited value changes its token, so
the runs that use it rerun, as before.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, MutableMapping

#: the environment variable that carries ``{token: value}`` from the Snakemake process to its jobs
ENV_VAR = "STAGERUN_TRAINER_ENV"
PREFIX = "stagerun-env:"


def token(value) -> str:
    """``stagerun-env:`` + the first 16 hex digits of the sha256 of the value's JSON text."""
    return PREFIX + hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def redact_env(env: Mapping | None) -> dict:
    """``env`` with every value replaced by its :func:`token`."""
    return {key: token(value) for key, value in (env or {}).items()}


def redact_trainer(trainer: Mapping) -> dict:
    """A copy of a trainer section with its ``env`` values replaced by tokens."""
    out = dict(trainer)
    if out.get("env"):
        out["env"] = redact_env(out["env"])
    return out


def redact_study(config: Mapping) -> dict:
    """A deep copy of a study with the ``env`` values of every ``trainer`` section (study, stages,
    variants) replaced by tokens: what params that carry the whole study may show."""
    out = copy.deepcopy(dict(config))
    sections = [out] + list((out.get("stages") or {}).values()) + list((out.get("variants") or {}).values())
    for section in sections:
        if isinstance(section, dict) and isinstance(section.get("trainer"), dict) and section["trainer"].get("env"):
            section["trainer"] = redact_trainer(section["trainer"])
    return out


def export_values(trainers: Iterable[Mapping], environ: MutableMapping[str, str] = os.environ) -> None:
    """Put ``{token: value}`` of every env value of ``trainers`` into ``environ[ENV_VAR]`` (the
    Snakemake process's environment, which its jobs inherit); nothing when there is none."""
    values = {token(v): v for trainer in trainers for v in (trainer.get("env") or {}).values()}
    if values:
        environ[ENV_VAR] = json.dumps(values, sort_keys=True)


def restore_trainer(trainer: Mapping, environ: Mapping[str, str] = os.environ) -> dict:
    """A copy of a redacted trainer section with its env values back (from ``environ[ENV_VAR]``);
    values that are no token stay as they are.

    Raises:
        KeyError: ``"trainer.env.WANDB_API_KEY: its value is not in $STAGERUN_TRAINER_ENV ..."``
            (the job was not started by the Snakemake process of the study).
    """
    values = json.loads(environ.get(ENV_VAR) or "{}")
    out = dict(trainer)
    env = {}
    for key, value in (trainer.get("env") or {}).items():
        if isinstance(value, str) and value.startswith(PREFIX):
            if value not in values:
                raise KeyError(f"trainer.env.{key}: its value is not in ${ENV_VAR} (start the job from the study's "
                               "snakemake call, which passes env values through the environment, never the command line)")
            value = values[value]
        env[key] = value
    if "env" in trainer:
        out["env"] = env
    return out
