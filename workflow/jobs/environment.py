"""The environment every job inherits from the Snakemake process (rules/env.smk sets it once, at parse).

Jobs are subprocesses of Snakemake (or, on a cluster, ``sbatch --export=ALL`` copies of its
environment), so what a job must know but must not rerun for reaches it here, never through
params or the command text (params are rerun triggers and part of the ``snakemake --cache`` key):

- ``PYTHONPATH`` / ``PATH``: ``python -m workflow.<step>`` runs from any working directory with
  the interpreter that runs Snakemake (first on PATH; a conda env activated for a rule still wins).
- ``STAGERUN_MIRRORS``: JSON ``{source: mirror or null}`` (:func:`workflow.data.registry.source_mirror`),
  read by ``workflow.download``: a raw file's identity is its public URL + sha256/size, so moving
  to or from a mirror neither reruns downloads nor changes the cache key.
- ``STAGERUN_TOKENIZE_RUNTIME``: JSON ``{dataset: {option: value}}`` of the options that change no
  token (``num_proc``, ``batch_docs``, ``chunk_bytes``), read by ``workflow.tokenize``: changing
  them neither reruns tokenization nor the runs after it.
- ``STAGERUN_INVOCATION``: one id per ``snakemake`` invocation (main process only,
  :data:`workflow.jobs.launcher.INVOCATION_ENV`): the launcher of a grouped run restores a run that
  finished earlier in this invocation instead of training it again
  (:func:`workflow.jobs.launcher.keep_finished`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from workflow.data.registry import RUNTIME_OPTIONS, SOURCES, source_mirror
from workflow.jobs.launcher import INVOCATION_ENV

MIRRORS_ENV = "STAGERUN_MIRRORS"  # the same name as workflow.data.fetch.MIRRORS_ENV (which imports requests)
TOKENIZE_RUNTIME_ENV = "STAGERUN_TOKENIZE_RUNTIME"


def tokenize_runtime_options(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{dataset: {option: value}}``: the study's ``datasets.<name>`` options that change no token
    (:data:`workflow.data.registry.RUNTIME_OPTIONS` without ``mirror``, which has its own variable)."""
    return {
        name: {k: v for k, v in (options or {}).items() if k in RUNTIME_OPTIONS and k != "mirror"}
        for name, options in (config.get("datasets") or {}).items()
    }


def job_environment(config: Mapping[str, Any], basedir: str, python: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to the Snakemake process's environment (every job inherits them).

    Args:
        config: the validated study.
        basedir: the workflow's folder (the repository root: ``workflow`` is importable there),
            put first on ``PYTHONPATH``.
        python: the interpreter running Snakemake (``sys.executable``); its folder goes first on ``PATH``.
        environ: the current environment (its ``PYTHONPATH`` and ``PATH`` are kept after ours).

    Returns:
        ``PYTHONPATH``, ``PATH``, ``STAGERUN_MIRRORS`` and ``STAGERUN_TOKENIZE_RUNTIME``, as strings.
    """
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [basedir, environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join(filter(None, [os.path.dirname(python), environ.get("PATH")])),
        MIRRORS_ENV: json.dumps({name: source_mirror(name, config) for name in SOURCES}),
        TOKENIZE_RUNTIME_ENV: json.dumps(tokenize_runtime_options(config)),
    }


def invocation_environment(main_process: bool) -> dict[str, str]:
    """``{STAGERUN_INVOCATION: <new random hex id>}`` in the main Snakemake process; ``{}`` in a
    process that re-parses the workflow to run one job (it inherits the main process's id)."""
    return {INVOCATION_ENV: uuid.uuid4().hex} if main_process else {}
