"""Token files: the split writers (atomic, checked), raw-file verification, meta.json pieces.

Every preparer (workflow/data/datasets/) writes through :class:`SplitWriters`; the CLI is
``python -m workflow.tokenize`` (workflow/tokenize.py, which documents the formats).
"""

from __future__ import annotations

import codecs
import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from workflow.core.io import atomic_write, sha256_file
from workflow.data.spec import Source
from workflow.data.tokenizers import (
    GPT2_RANKS,
    GPT2_RANKS_FILE,
    TokenizeError,
)

CHUNK_BYTES = 16 << 20
FINEWEB_MAGIC = 20240520
FINEWEB_VERSION = 1
FINEWEB_HEADER_INTS = 256
FINEWEB_HEADER_BYTES = FINEWEB_HEADER_INTS * 4
#: tokens of the shortest training window (block_size 1 + 1); workflow.launch checks the model's own
MIN_SPLIT_TOKENS = 2
UTF8_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Raw data that violates its format (message names file and byte / line / member)."""


# --------------------------------------------------------------------------- writers

class SplitWriters:
    """Streaming writers of ``{out_dir}/{split}.bin``, all committed atomically together.

    Use as a context manager; ``write(split, ids)`` appends ids (any integer array) after
    checking ``0 <= ids < vocab_size`` and casting to ``dtype``. On an exception no split
    file is renamed into place. ``tokens[split]`` counts the ids written. A split with fewer
    than :data:`MIN_SPLIT_TOKENS` tokens (no window of any block_size) raises DataError naming
    the split and its token count, and no split file is written.
    """

    def __init__(self, out_dir: Path, splits: Iterable[str], dtype: str, vocab_size: int):
        self.out_dir, self.splits = Path(out_dir), list(splits)
        self.dtype, self.vocab_size = np.dtype(dtype).newbyteorder("<"), vocab_size
        self.tokens = {s: 0 for s in self.splits}
        self._stack = contextlib.ExitStack()
        self._files: dict[str, Any] = {}

    def __enter__(self) -> "SplitWriters":
        for split in self.splits:
            self._files[split] = self._stack.enter_context(atomic_write(self.out_dir / f"{split}.bin", "wb"))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        short = {s: n for s, n in self.tokens.items() if n < MIN_SPLIT_TOKENS}
        if exc_type is None and short:
            split, n = next(iter(short.items()))
            exc = DataError(
                f"{self.out_dir / (split + '.bin')}: split {split!r} has {n} tokens, but a training window needs "
                f"block_size + 1 >= {MIN_SPLIT_TOKENS} tokens (the trainer checks the model's own window before "
                "training); give this split more text"
            )
            self._stack.__exit__(DataError, exc, None)  # discards every split file
            raise exc
        return self._stack.__exit__(exc_type, exc, tb)

    def write(self, split: str, ids: np.ndarray | list[int]) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.dtype != self.dtype:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.vocab_size:
                raise TokenizeError(f"{split}: token id {hi if hi >= self.vocab_size else lo} outside "
                                    f"0..{self.vocab_size - 1}")
            arr = arr.astype(self.dtype)
        self._files[split].write(arr.data if arr.flags.c_contiguous else arr.tobytes())
        self.tokens[split] += int(arr.size)

    def tokens_total(self) -> int:
        """Ids written so far, all splits."""
        return sum(self.tokens.values())

    def splits_meta(self) -> dict:
        return {s: {"tokens": n, "files": [{"path": f"{s}.bin", "header_bytes": 0, "tokens": n}]}
                for s, n in self.tokens.items()}


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of ``path``, computed once per (path, size, mtime) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(path)
    return _SHA256_CACHE[key]


def file_meta(path: Path, url: str | None = None, filename: str | None = None) -> dict:
    """meta.json's record of one raw file: ``{filename, url (default: the file's URI), sha256, bytes}``."""
    return {"filename": filename or path.name, "url": url or path.resolve().as_uri(),
            "sha256": _sha256(path), "bytes": path.stat().st_size}


def verify_raw_file(path: Path, source: Source, filename: str, opts: Mapping[str, Any] | None = None) -> None:
    """Check a raw file against its source's size and sha256 (the dataset module's ``SOURCES``).

    The download checked the same values; this catches a file changed since (a corrupted disk,
    an edited cache, a partial copy from another machine). ``opts``' ``raw_files`` overrides apply.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: size or sha256 differ (message: the file, both sizes, both sha256).
    """
    spec = source.file(filename, opts)
    if spec.sha256 is None and spec.bytes is None:
        return
    if not path.is_file():
        raise FileNotFoundError(f"{path}: raw file of source {source.name!r} is missing (download it first)")
    size = path.stat().st_size
    actual = _sha256(path) if spec.sha256 is not None else None
    if (spec.bytes is not None and size != spec.bytes) or (actual is not None and actual != spec.sha256):
        found = f"{size:,} bytes" + (f", sha256 {actual}" if actual else "")
        expected = (f"{spec.bytes:,} bytes" if spec.bytes is not None else "") + (
            f"{', ' if spec.bytes is not None else ''}sha256 {spec.sha256}" if spec.sha256 else "")
        raise DataError(
            f"{path}: {found}, but the registry (source {source.name!r}, {spec.url}) expects {expected}: the file "
            "changed after its download (corrupted disk, edited cache or partial copy); delete it and rerun to "
            "download it again"
        )


def verify_raw_files(source: Source | None, raw_dir: Path, opts: Mapping[str, Any], ranks_file: str | None = None) -> int:
    """Check every registry file that tokenizing a dataset reads (:func:`verify_raw_file`):
    ``source``'s files in ``raw_dir`` and the GPT-2 BPE ranks file ``ranks_file`` (if any).

    Returns:
        The number of files checked against a size or sha256.
    """
    checked = 0
    if source is not None:
        for spec in source.file_specs(opts):
            if spec.sha256 is not None or spec.bytes is not None:
                verify_raw_file(raw_dir / spec.filename, source, spec.filename, opts)
                checked += 1
    if ranks_file is not None:
        verify_raw_file(Path(ranks_file), GPT2_RANKS, GPT2_RANKS_FILE)
        checked += 1
    return checked


def source_meta(source: Source, raw_dir: Path, opts: Mapping[str, Any], names: list[str] | None = None) -> dict:
    """meta.json ``source``: public URL plus the actual sha256 / size of each raw file used
    (``names``, default every file of the source for ``opts``).

    Raises:
        FileNotFoundError: a raw file is missing (names it).
    """
    files = []
    for name in names or [f.filename for f in source.file_specs(opts)]:
        path = raw_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: raw file of source {source.name!r} is missing (download it first)")
        files.append(file_meta(path, source.file(name, opts).url, name))
    return {"name": source.name, "files": files}


def gpt2_ranks_path(raw_dir: Path, tokenizer_file: str | None) -> str | None:
    """The GPT-2 BPE ranks file to read: ``tokenizer_file``, else ``{raw_dir}/../gpt2/r50k_base.tiktoken``
    if it exists, else None (tiktoken's own cache)."""
    if tokenizer_file:
        return tokenizer_file
    default = raw_dir.parent / GPT2_RANKS.name / GPT2_RANKS_FILE
    return str(default) if default.is_file() else None


# --------------------------------------------------------------------------- datasets

def iter_text(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """UTF-8 text of ``path`` in chunks of about ``chunk_bytes`` (bounded memory).

    Raises:
        DataError: invalid UTF-8 (message names the file and the byte offset).
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as handle:
        while True:
            data = handle.read(chunk_bytes)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not UTF-8 at byte {offset + err.start}: {err.reason}") from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return
