# Tokenize rules: raw files -> {data_dir}/tokens/{dataset}/meta.json (+ {split}.bin).
#
# Three rules that differ only in their static split files (Snakemake needs the same
# outputs for every value of a wildcard): train/val datasets, train/val/test datasets,
# and FineWeb, whose meta.json points at the raw shards (no split files of its own).
# The mirror is not part of params (per-dataset options are, without "mirror").

import json as _tjson
import os as _tos

from workflow.datasets import DATASETS as _DATASETS, dataset_raw_dir as _dataset_raw_dir
from workflow.datasets import dataset_raw_inputs as _dataset_raw_inputs
from workflow.datasets import __file__ as _TDATASETS_PY

_TDATA_DIR = config.get("data_dir", "data")
_TREPO_ROOT = _tos.path.dirname(_tos.path.dirname(_tos.path.abspath(_TDATASETS_PY)))
_TWO = sorted(n for n, d in _DATASETS.items() if d.static_split_files and d.splits == ("train", "val"))
_THREE = sorted(n for n, d in _DATASETS.items() if d.static_split_files and d.splits == ("train", "val", "test"))
_META_ONLY = sorted(n for n, d in _DATASETS.items() if not d.static_split_files)
_PARALLEL = {"openwebtext"}  # datasets whose tokenizer uses several processes


def _dataset_opts(wildcards):
    return dict((config.get("datasets") or {}).get(wildcards.dataset) or {})


def _tokenize_inputs(wildcards):
    return _dataset_raw_inputs(wildcards.dataset, _TDATA_DIR, _dataset_opts(wildcards))


def _tokenize_options_json(wildcards):
    opts = _dataset_opts(wildcards)
    opts.pop("mirror", None)
    return _tjson.dumps(opts, sort_keys=True)


# shell jobs (not run:, which Snakemake spawns as a whole new Snakemake process per job)
_tos.environ["PYTHONPATH"] = _tos.pathsep.join(
    p for p in dict.fromkeys([_TREPO_ROOT, *_tos.environ.get("PYTHONPATH", "").split(_tos.pathsep)]) if p)
_TOKENIZE_CMD = ("python -m workflow.tokenize --dataset {wildcards.dataset:q} --raw-dir {params.raw_dir:q} "
                 "--out-dir {params.out_dir:q} --options-json {params.options:q} --workers {threads}")


rule tokenize:
    """Datasets with train.bin and val.bin."""
    input: _tokenize_inputs
    output:
        meta=f"{_TDATA_DIR}/tokens/{{dataset}}/meta.json",
        train=f"{_TDATA_DIR}/tokens/{{dataset}}/train.bin",
        val=f"{_TDATA_DIR}/tokens/{{dataset}}/val.bin",
    wildcard_constraints:
        dataset="|".join(_TWO),
    params:
        raw_dir=lambda wc: _dataset_raw_dir(wc.dataset, _TDATA_DIR, _dataset_opts(wc)),
        options=_tokenize_options_json,
        out_dir=lambda wc, output: _tos.path.dirname(output.meta),
    threads: lambda wc: workflow.cores if wc.dataset in _PARALLEL else 1
    shell:
        _TOKENIZE_CMD


rule tokenize_with_test:
    """Datasets with train.bin, val.bin and test.bin."""
    input: _tokenize_inputs
    output:
        meta=f"{_TDATA_DIR}/tokens/{{dataset}}/meta.json",
        train=f"{_TDATA_DIR}/tokens/{{dataset}}/train.bin",
        val=f"{_TDATA_DIR}/tokens/{{dataset}}/val.bin",
        test=f"{_TDATA_DIR}/tokens/{{dataset}}/test.bin",
    wildcard_constraints:
        dataset="|".join(_THREE),
    params:
        raw_dir=lambda wc: _dataset_raw_dir(wc.dataset, _TDATA_DIR, _dataset_opts(wc)),
        options=_tokenize_options_json,
        out_dir=lambda wc, output: _tos.path.dirname(output.meta),
    threads: 1
    shell:
        _TOKENIZE_CMD


rule tokenize_shards:
    """Pre-tokenized shard datasets (FineWeb): only meta.json, pointing at the raw shards."""
    input: _tokenize_inputs
    output:
        meta=f"{_TDATA_DIR}/tokens/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset="|".join(_META_ONLY),
    params:
        raw_dir=lambda wc: _dataset_raw_dir(wc.dataset, _TDATA_DIR, _dataset_opts(wc)),
        options=_tokenize_options_json,
        out_dir=lambda wc, output: _tos.path.dirname(output.meta),
    threads: 1
    shell:
        _TOKENIZE_CMD
