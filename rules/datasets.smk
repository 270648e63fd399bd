# Download rules: one generic rule per kind of source (checked with a registry sha256 or not).
#
#   {data_dir}/raw/{source}/{filename}   <-   python -m workflow.download --source ... --file ...
#
# The mirror (config["mirror"] or config["datasets"][name]["mirror"]) is handed to the
# download CLI through the environment variable STAGERUN_MIRROR, NOT through params:
# a file's identity is its public URL + sha256/size (the params below), so moving to
# or from a mirror neither re-triggers downloads nor changes the between-workflow cache
# key (`snakemake --cache`; the key hashes params and inputs only, for run: rules).
# ensure(sha256=...) makes Snakemake re-check the hash after the job (it hashes with
# force=True, so --max-checksum-file-size does not limit this check in Snakemake 9).

import json as _json
import os as _os
import subprocess as _subprocess
import sys as _sys

from workflow.datasets import SOURCES as _SOURCES, source_file as _source_file
from workflow.datasets import __file__ as _DATASETS_PY
from workflow.datasets import source_mirror as _source_mirror, source_options as _source_options

_DATA_DIR = config.get("data_dir", "data")
# the repository root, so that job subprocesses import the same workflow package
_REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(_DATASETS_PY)))
_CHECKED = sorted(n for n, s in _SOURCES.items() if s.files and s.files_fn is None and all(f.sha256 for f in s.files))
_UNCHECKED = sorted(n for n in _SOURCES if n not in _CHECKED)


def _raw_options(wildcards):
    """Dataset options (size/hash overrides, shard counts) for this source, without the mirror."""
    opts = dict(_source_options(wildcards.source, config))
    opts.pop("mirror", None)
    return opts


def _raw_spec(wildcards):
    return _source_file(wildcards.source, wildcards.filename, _raw_options(wildcards))


def _run_download(wildcards, output):
    env = dict(_os.environ)
    mirror = _source_mirror(wildcards.source, config)
    if mirror:
        env["STAGERUN_MIRROR"] = str(mirror)
    else:
        env.pop("STAGERUN_MIRROR", None)
    env["PYTHONPATH"] = _os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
    _subprocess.run(
        [_sys.executable, "-m", "workflow.download", "--source", wildcards.source,
         "--file", wildcards.filename, "--out", str(output[0]),
         "--options-json", _json.dumps(_raw_options(wildcards))],
        check=True, env=env,
    )


rule download_checked:
    """Raw file of a source whose registry entry has a sha256 (verified twice: CLI and ensure)."""
    output:
        ensure(f"{_DATA_DIR}/raw/{{source}}/{{filename}}", sha256=lambda wc: _raw_spec(wc).sha256),
    wildcard_constraints:
        source="|".join(_CHECKED),
        filename=r"[^/]+",
    params:
        url=lambda wc: _raw_spec(wc).url,
        sha256=lambda wc: _raw_spec(wc).sha256,
        bytes=lambda wc: _raw_spec(wc).bytes,
    cache: "omit-software"
    retries: 2
    run:
        _run_download(wildcards, output)


rule download_unchecked:
    """Raw file of a source without a registry sha256 (size check where known; FineWeb via HF hub)."""
    output:
        f"{_DATA_DIR}/raw/{{source}}/{{filename}}",
    wildcard_constraints:
        source="|".join(_UNCHECKED),
        filename=r"[^/]+",
    params:
        url=lambda wc: _raw_spec(wc).url,
        sha256=lambda wc: _raw_spec(wc).sha256,
        bytes=lambda wc: _raw_spec(wc).bytes,
    cache: "omit-software"
    retries: 2
    run:
        _run_download(wildcards, output)
