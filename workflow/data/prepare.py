"""Tokenizing a dataset: :func:`prepare`, the one entry point (``python -m workflow.tokenize``).

Each dataset module (workflow/data/datasets/) gives its ``Dataset.prepare(raw_dir, out_dir, opts,
**kwargs) -> dict``, which writes the split files into ``out_dir`` (through
:class:`workflow.data.writers.SplitWriters`) and returns the body of ``meta.json``;
:func:`prepare` verifies the raw files first and writes ``meta.json`` last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from workflow.core.io import read_json, write_json_atomic
from workflow.data.registry import dataset_options, get_dataset, get_source, tokens_mismatch
from workflow.data.writers import DataError, gpt2_ranks_path, verify_raw_files


def _pct(fraction: float) -> str:
    return f"{float(fraction) * 100:g} %"


#: The split recipe of a dataset whose split options differ from the defaults (the registry's
#: ``split_spec`` describes the defaults, and is written unchanged for them).
_SPLIT_TEXT = {
    "shakespeare_char": lambda o: (f"first {_pct(o['train_fraction'])} of characters train, last "
                                   f"{_pct(1 - float(o['train_fraction']))} val"),
    "shakespeare_gpt2": lambda o: (f"first {_pct(o['train_fraction'])} of characters train, last "
                                   f"{_pct(1 - float(o['train_fraction']))} val, each encoded"),
    "enwik8": lambda o: "bytes: first {} train, next {} val, last {} test".format(*map(_pct, o["fractions"])),
    "custom_text": lambda o: (f"documents (separated by blank lines) in sorted file order: first "
                              f"{_pct(1 - float(o['val_fraction']))} train, last {_pct(o['val_fraction'])} val"),
    "openwebtext": lambda o: (f"datasets train_test_split(test_size={o['val_fraction']}, seed={o['seed']}) of "
                              "documents"),
}


def split_text(dataset: str, options: Mapping[str, Any] | None = None) -> str:
    """The split recipe meta.json records for ``dataset`` tokenized with ``options``: the registry's
    ``split_spec`` for the default split options, else the recipe with the study's fractions.

    Raises:
        UnknownNameError: unknown dataset or option.
    """
    ds = get_dataset(dataset)
    opts = dataset_options(dataset, options)
    keys = [k for k in ("train_fraction", "val_fraction", "fractions", "seed") if k in ds.defaults]
    if dataset not in _SPLIT_TEXT or all(opts[k] == ds.defaults[k] for k in keys):
        return ds.split_spec
    return _SPLIT_TEXT[dataset](opts)


def prepare(dataset: str, raw_dir: str | os.PathLike, out_dir: str | os.PathLike,
            options: Mapping[str, Any] | None = None, *, tokenizer_file: str | None = None,
            workers: int | None = None) -> dict:
    """Tokenize ``dataset`` from ``raw_dir`` into ``out_dir``; returns the meta.json dict.

    Args:
        dataset: a name of workflow.data.registry.DATASETS.
        raw_dir: folder of the raw files (``{data_dir}/raw/{source}``; custom_text: its folder).
        out_dir: ``{data_dir}/tokens/{tokens_dir_name}``; gets ``{split}.bin`` and meta.json (last).
        options: the study's ``datasets.<dataset>`` options (merged over the defaults).
        tokenizer_file: GPT-2 BPE ranks file (see module docstring).
        workers: processes for GPT-2 BPE of large corpora (default: option num_proc / all CPUs).
    Raises:
        UnknownNameError: unknown dataset or option.
        DataError / TokenizeError / FileNotFoundError: bad or missing raw data (names file and place);
            a raw file that differs from the registry's size / sha256 (:func:`verify_raw_files`);
            a split with no room for a training window (:class:`SplitWriters`);
            ``out_dir`` holds finished tokens made with other options (DataError: a finished
            tokens folder is never rewritten with different options; nothing is touched).
    """
    ds = get_dataset(dataset)
    opts = dataset_options(dataset, options)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    finished = out_dir / "meta.json"
    if finished.is_file():
        try:
            why = tokens_mismatch(read_json(finished), dataset, opts)
        except ValueError:  # an unreadable meta.json describes nothing: it is rewritten
            why = None
        if why:
            raise DataError(f"{out_dir}: holds finished tokens, but {why}; a tokens folder is never rewritten "
                            "with different options (each set of options has its own folder: "
                            "workflow.data.registry.tokens_dir_name)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    ranks = gpt2_ranks_path(raw_dir, tokenizer_file) if ds.needs_gpt2_ranks else None
    verify_raw_files(get_source(ds.source) if ds.source is not None else None, raw_dir, opts, ranks)
    body = ds.prepare(raw_dir, out_dir, opts, tokenizer_file=tokenizer_file, workers=workers)
    meta = {"dataset": dataset, "split_spec": split_text(dataset, opts), **body}
    meta["options"] = {k: v for k, v in opts.items() if k != "mirror"}
    write_json_atomic(out_dir / "meta.json", meta)
    return meta
