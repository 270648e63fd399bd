"""workflow.jobs.environment: the variables every job inherits from the Snakemake process
(rules/env.smk), as the download, tokenize and launcher steps read them."""

from __future__ import annotations

import json
import os

from workflow.data.registry import SOURCES
from workflow.jobs.environment import (
    MIRRORS_ENV, TOKENIZE_RUNTIME_ENV, invocation_environment, job_environment, tokenize_runtime_options,
)
from workflow.jobs.launcher import INVOCATION_ENV

STUDY = {"dataset": "shakespeare_char", "mirror": "http://127.0.0.1:1/m",
         "datasets": {"openwebtext": {"num_proc": 4, "batch_docs": 16, "mirror": "http://o", "train_fraction": 0.9},
                      "shakespeare_char": None}}


def test_jobs_find_the_package_and_this_interpreter_first():
    env = job_environment(STUDY, "/repo", "/venv/bin/python", {"PYTHONPATH": "/lib", "PATH": "/usr/bin"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/repo", "/lib"])
    assert env["PATH"] == os.pathsep.join(["/venv/bin", "/usr/bin"])
    bare = job_environment(STUDY, "/repo", "/venv/bin/python", {})
    assert bare["PYTHONPATH"] == "/repo" and bare["PATH"] == "/venv/bin"
    assert all(isinstance(v, str) for v in env.values())


def test_every_source_gets_its_mirror_and_the_speed_options_reach_tokenize():
    env = job_environment(STUDY, "/repo", "/venv/bin/python", {})
    mirrors = json.loads(env[MIRRORS_ENV])
    assert set(mirrors) == set(SOURCES)
    assert mirrors["tinyshakespeare"] == "http://127.0.0.1:1/m"  # the study's mirror
    # only the options that change no token, without the mirror (which has its own variable)
    assert json.loads(env[TOKENIZE_RUNTIME_ENV]) == {"openwebtext": {"num_proc": 4, "batch_docs": 16},
                                                     "shakespeare_char": {}}
    assert tokenize_runtime_options({"datasets": None}) == {}
    assert json.loads(job_environment({"dataset": "shakespeare_char"}, "/r", "/p", {})[MIRRORS_ENV])["tinyshakespeare"] is None


def test_one_new_invocation_id_in_the_main_process_only():
    first, second = invocation_environment(True), invocation_environment(True)
    assert set(first) == {INVOCATION_ENV} and len(first[INVOCATION_ENV]) == 32
    assert first != second
    assert invocation_environment(False) == {}
