# Download rules: one generic rule per kind of source (checked with a registry sha256 or not).
#
#   {data_dir}/raw/{source}/{filename}   <-   python -m workflow.download --source ... --file ...
#
# The mirror (config["mirror"] or config["datasets"][name]["mirror"]) is handed to the
# download CLI through the environment variable STAGERUN_MIRRORS, NOT through params:
# a file's identity is its public URL + sha256/size (the params below), so moving to
# or from a mirror neither re-triggers downloads nor changes the between-workflow cache
# key (`snakemake --cache`; the key hashes params and inputs only, for run: rules).
# ensure(sha256=...) makes Snakemake re-check the hash after the job (it hashes with
# force=True, so --max-checksum-file-size does not limit this check in Snakemake 9).

import json as _json
import os as _os

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


def _raw_checks(wildcards):
    """--options-json of the download CLI: only this file's size / sha256 checks."""
    spec = _raw_spec(wildcards)
    return _json.dumps({"raw_files": {wildcards.filename: {"sha256": spec.sha256, "bytes": spec.bytes}}})


# Jobs are `shell:` jobs running `python` from PATH like every job of the workflow (a `run:`
# job would be spawned as a whole new Snakemake process,
# seconds per job). The mirror of every source goes to the download CLI through the
# environment (STAGERUN_MIRRORS, a JSON map source -> mirror or null), set here at parse time,
# so it is neither a param nor part of the command text; job subprocesses inherit it (and
# remote executors re-parse this file).
_os.environ["STAGERUN_MIRRORS"] = _json.dumps({name: _source_mirror(name, config) for name in _SOURCES})
_os.environ["PYTHONPATH"] = _os.pathsep.join(
    p for p in dict.fromkeys([_REPO_ROOT, *_os.environ.get("PYTHONPATH", "").split(_os.pathsep)]) if p)


rule download_checked:
    """Raw file of a source whose registry entry has a sha256 (verified twice: CLI and ensure)."""
    output:
        raw=ensure(f"{_DATA_DIR}/raw/{{source}}/{{filename}}", sha256=lambda wc: _raw_spec(wc).sha256),
    wildcard_constraints:
        source="|".join(_CHECKED),
        filename=r"[^/]+",
    params:
        url=lambda wc: _raw_spec(wc).url,
        sha256=lambda wc: _raw_spec(wc).sha256,
        bytes=lambda wc: _raw_spec(wc).bytes,
        checks=_raw_checks,
    cache: "omit-software"
    retries: 2
    shell:
        "python -m workflow.download --source {wildcards.source:q} --file {wildcards.filename:q} "
        "--out {output.raw:q} --options-json {params.checks:q}"


rule download_unchecked:
    """Raw file of a source without a registry sha256 (size check where known; FineWeb via HF hub)."""
    output:
        raw=f"{_DATA_DIR}/raw/{{source}}/{{filename}}",
    wildcard_constraints:
        source="|".join(_UNCHECKED),
        filename=r"[^/]+",
    params:
        url=lambda wc: _raw_spec(wc).url,
        sha256=lambda wc: _raw_spec(wc).sha256,
        bytes=lambda wc: _raw_spec(wc).bytes,
        checks=_raw_checks,
    cache: "omit-software"
    retries: 2
    shell:
        "python -m workflow.download --source {wildcards.source:q} --file {wildcards.filename:q} "
        "--out {output.raw:q} --options-json {params.checks:q}"
