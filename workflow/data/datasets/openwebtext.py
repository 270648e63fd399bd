"""OpenWebText (Hugging Face parquet shards) -> GPT-2 BPE token files, encoded in parallel worker processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from workflow.data.tokenizers import (
    GPT2_EOT_ID,
    GPT2Tokenizer,
    gpt2_encoding,
)
from workflow.data.spec import Dataset
from workflow.data.writers import DataError, SplitWriters, file_meta, gpt2_ranks_path

OPENWEBTEXT_HF_NAME = "Skylion007/openwebtext"
OPENWEBTEXT_HF_REVISION = "refs/convert/parquet"
#: documents of OpenWebText (nanoGPT data/openwebtext/readme.md: 8,009,762 train + 4,007 val)
OPENWEBTEXT_DOCUMENTS = 8_013_769

# openwebtext ---------------------------------------------------------------------------

_WORKER_ENC = None
_WORKER_RANKS: object = object()  # ranks file _WORKER_ENC was built from (sentinel: none yet)


def worker_init(ranks_file: str | None) -> None:
    """Build the GPT-2 encoding once per process (and again only for another ranks file)."""
    global _WORKER_ENC, _WORKER_RANKS
    if _WORKER_ENC is None or _WORKER_RANKS != ranks_file:
        _WORKER_ENC, _WORKER_RANKS = gpt2_encoding(ranks_file), ranks_file


_EOT_U32 = np.array([GPT2_EOT_ID], dtype=np.uint32)


def _encode_doc(text: str) -> np.ndarray:
    """uint32 GPT-2 ids of one document, special-token text encoded as plain text (the ids of
    ``encode_ordinary``), straight into a numpy buffer (no list of Python ints)."""
    return _WORKER_ENC.encode_to_numpy(text, disallowed_special=())


def _concat_eot(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """uint16 array of ``arrays`` concatenated, ``<|endoftext|>`` (50256) after each."""
    parts = []
    for ids in arrays:
        parts += (ids, _EOT_U32)
    if not parts:
        return np.empty(0, dtype=np.uint16)
    return np.concatenate(parts, dtype=np.uint16, casting="unsafe")  # GPT-2 ids < 50257 < 2**16


def encode_docs_gpt2(texts: list[str]) -> np.ndarray:
    """uint16 ids of ``texts`` concatenated, ``<|endoftext|>`` (50256) after each, in this thread
    (a process-pool worker function: :func:`worker_init` must have run in the process)."""
    return _concat_eot(map(_encode_doc, texts))


def parallel_encode(batches: Iterable[list[str]], ranks_file: str | None, workers: int) -> Iterator[np.ndarray]:
    """GPT-2 BPE of document batches on ``workers`` threads, in order.

    tiktoken's Rust encoder releases the GIL while it encodes a text, so threads run in
    parallel without the start-up, fork and pickling costs of worker processes
    (bench/bench_tokenize.py measures both against a single-thread loop). Documents of a
    batch are spread over the threads one by one (uneven lengths balance out), each encoded
    with ``Encoding.encode_to_numpy`` (ids of ``encode_ordinary``); one batch encodes while
    the previous one is assembled, so at most two batches are in memory.

    Args:
        batches: lists of document texts.
        ranks_file: GPT-2 BPE ranks (see :func:`workflow.data.tokenizers.gpt2_encoding`).
        workers: threads (<= 1: encode in the calling thread).
    Yields:
        One uint16 array per batch: every document's ids followed by ``<|endoftext|>`` (50256).
    """
    worker_init(ranks_file)
    if workers <= 1:
        for texts in batches:
            yield encode_docs_gpt2(texts)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="gpt2-bpe") as pool:
        pending: collections.deque = collections.deque()
        for texts in batches:
            pending.append(pool.map(_encode_doc, texts))  # submits every document now
            if len(pending) >= 2:
                yield _concat_eot(pending.popleft())
        while pending:
            yield _concat_eot(pending.popleft())


def prepare_openwebtext(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], *,
                        tokenizer_file: str | None = None, workers: int | None = None, **_) -> dict:
    """OpenWebText (or local json/parquet files) -> GPT-2 BPE uint16 train/val.

    ``datasets.load_dataset(hf_name, revision=hf_revision)`` (default: the Hub's parquet
    conversion of ``Skylion007/openwebtext``, whose main branch is a loading script that
    datasets >= 4 no longer runs; the document count must equal ``expected_documents``,
    8,013,769, unless that is null) or, with ``data_files``, ``load_dataset(format,
    data_files=...)`` (no count check); ``train_test_split(test_size=val_fraction, seed=seed, shuffle=True)``;
    every document encoded with encode_ordinary plus ``<|endoftext|>``, on ``workers``
    threads (:func:`parallel_encode`), streamed to disk. Source: nanoGPT data/openwebtext/prepare.py.
    """
    import datasets  # deferred heavy import: Hugging Face datasets, only for OpenWebText

    ranks = gpt2_ranks_path(raw_dir, tokenizer_file)
    workers = workers or opts["num_proc"] or os.cpu_count() or 1
    data_files = opts["data_files"]
    with contextlib.ExitStack() as stack:
        if data_files:
            files = [data_files] if isinstance(data_files, str) else list(data_files)
            cache = stack.enter_context(tempfile.TemporaryDirectory(dir=out_dir, prefix=".hf-cache-"))
            ds = datasets.load_dataset(opts["format"], data_files=files, split="train", cache_dir=cache)
            source = {"name": "local", "files": [file_meta(Path(f)) for f in files]}
        else:
            name, revision = opts["hf_name"], opts["hf_revision"]
            ds = datasets.load_dataset(name, revision=revision, split="train", num_proc=workers)
            expected = opts["expected_documents"]
            if expected is not None and len(ds) != int(expected):
                raise DataError(f"https://huggingface.co/datasets/{name} (revision {revision}): {len(ds):,} "
                                f"documents, expected {int(expected):,} (datasets.openwebtext.expected_documents; "
                                f"a partial parquet conversion? null skips the check)")
            source = {"name": name, "revision": revision, "files": [
                {"url": f"https://huggingface.co/datasets/{name}/tree/{revision}", "sha256": None,
                 "fingerprint": ds._fingerprint, "bytes": None}]}
        field = opts["text_field"]
        if field not in ds.column_names:
            raise DataError(f"{data_files or opts['hf_name']}: no column {field!r} "
                            f"(datasets.openwebtext.text_field); columns: {ds.column_names}")
        parts = ds.train_test_split(test_size=opts["val_fraction"], seed=opts["seed"], shuffle=True)
        split_ds = {"train": parts["train"], "val": parts["test"]}
        batch_docs = int(opts["batch_docs"])
        with SplitWriters(out_dir, ("train", "val"), "uint16", 50257) as w:
            for split, d in split_ds.items():
                def batches(d=d):
                    for batch in d.select_columns([field]).iter(batch_size=batch_docs):
                        yield batch[field]
                with tqdm(total=len(d), desc=f"{split} docs", unit="doc", file=sys.stderr, mininterval=1) as bar:
                    for arr in parallel_encode(batches(), ranks, workers):
                        w.write(split, arr)
                        bar.update(int((arr == 50256).sum()))
    return {"source": source, "tokenizer": GPT2Tokenizer.__new__(GPT2Tokenizer).to_meta(),
            "vocab_size": 50257, "dtype": "uint16", "splits": w.splits_meta(),
            "documents": {s: len(d) for s, d in split_ds.items()}}


def _local_data_files(opts: Mapping[str, Any]) -> list[str]:
    """The local ``data_files`` of the options (none: the Hugging Face cache, no Snakemake input)."""
    files = opts["data_files"]
    if not files:
        return []
    return [files] if isinstance(files, str) else list(files)


SOURCES = ()
DATASETS = (
    Dataset(
        name="openwebtext", source=None, tokenizer="gpt2", splits=("train", "val"),
        split_spec="datasets train_test_split(test_size=0.0005, seed=2357) of documents (nanoGPT)",
        # The Hub repo's default branch holds a loading script (openwebtext.py), which
        # datasets >= 4 refuses to run; the Hub's parquet conversion of the same data
        # (branch refs/convert/parquet, config plain_text) loads without code.
        defaults={"hf_name": OPENWEBTEXT_HF_NAME, "hf_revision": OPENWEBTEXT_HF_REVISION,
                  "expected_documents": OPENWEBTEXT_DOCUMENTS,
                  "data_files": None, "format": "json", "text_field": "text",
                  "val_fraction": 0.0005, "seed": 2357, "num_proc": None, "batch_docs": 256},
        needs_gpt2_ranks=True,
        description="OpenWebText, GPT-2 BPE, <|endoftext|> after every document",
        prepare=prepare_openwebtext,
        local_inputs_fn=_local_data_files,
    ),
)
