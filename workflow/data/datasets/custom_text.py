"""The user's own text with a fixed character vocabulary (``charset``) -> token files.

A character outside the charset is an error naming the file, line and byte offset.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from workflow.data.spec import Dataset
from workflow.data.tokenizers import (
    CharsetTokenizer,
    token_dtype,
)
from workflow.data.writers import UTF8_BOM, DataError, SplitWriters, file_meta


def custom_text_files(folder: str, pattern: str = "*.txt") -> list[str]:
    """Sorted files matching ``pattern`` in ``folder``; ValueError naming both if none."""
    files = sorted(glob.glob(os.path.join(glob.escape(str(folder)), pattern)))
    if not files:
        raise ValueError(f"datasets.custom_text.folder: no files matching {pattern!r} in {folder}")
    return files


def custom_text_folder(opts: Mapping[str, Any]) -> str:
    """The ``folder`` option (the raw folder of custom_text). Raises ValueError when unset."""
    if not opts["folder"]:
        raise ValueError("datasets.custom_text.folder: not set (the folder of the .txt files)")
    return str(opts["folder"])

# custom text ---------------------------------------------------------------------------

def _iter_line_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """Chunks of ~chunk_bytes that end at a line end (or the end of the file)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            if not chunk.endswith(b"\n"):
                chunk += handle.readline()
            yield chunk


def _charset_chunks(path: Path, tok: CharsetTokenizer, chunk_bytes: int,
                    stats: dict | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of ``path``: (token ids with bos inserted and blank lines removed,
    positions in those ids where a document starts). Raises DataError at a forbidden byte.

    Windows line ends are read as ``\n`` (every ``\r\n`` becomes ``\n``; a lone ``\r`` is an
    ordinary character) and a UTF-8 byte order mark at the start of the file is skipped;
    ``stats`` (if given) counts them: ``crlf`` line ends, ``bom`` files. Error positions
    (line, column, byte) are those of the file as it is on disk.
    """
    prev2 = np.array([10, 10], dtype=np.uint8)  # file start behaves like after a blank line
    line_no, offset = 1, 0
    for chunk in _iter_line_chunks(path, chunk_bytes):
        size_on_disk, skipped = len(chunk), 0
        if offset == 0 and chunk.startswith(UTF8_BOM):
            chunk, skipped = chunk[len(UTF8_BOM):], len(UTF8_BOM)
            if stats is not None:
                stats["bom"] = stats.get("bom", 0) + 1
        crlf_at = None  # positions (in the chunk as read) of the removed \r of each \r\n
        if b"\r\n" in chunk:
            disk = np.frombuffer(chunk, dtype=np.uint8)
            crlf_at = np.flatnonzero((disk[:-1] == 13) & (disk[1:] == 10))
            chunk = chunk.replace(b"\r\n", b"\n")
            if stats is not None:
                stats["crlf"] = stats.get("crlf", 0) + int(crlf_at.size)
        raw = np.frombuffer(chunk, dtype=np.uint8)
        ids, bad = tok.encode_bytes(chunk)
        if bad is not None:
            before = raw[:bad]
            nl = np.flatnonzero(before == 10)
            line = line_no + int(nl.size)
            col = bad - (int(nl[-1]) + 1 if nl.size else 0)  # chunks start at line starts
            line_bytes = chunk[(int(nl[-1]) + 1 if nl.size else 0):].split(b"\n", 1)[0]
            ch = _decode_char(chunk, bad)
            removed = 0 if crlf_at is None else int(np.searchsorted(crlf_at - np.arange(crlf_at.size), bad, side="right"))
            raise DataError(f"{path}: line {line}, column {col + 1} (byte {offset + skipped + bad + removed}): "
                            f"character {ch} is not in the charset {tok.charset!r}; line: {line_bytes[:80]!r}")
        ext = np.concatenate([prev2, raw])
        is_nl = raw == 10
        prev_nl = ext[1:-1] == 10
        prev2_nl = ext[:-2] == 10
        blank = is_nl & prev_nl             # the newline of an empty line
        doc_start = ~is_nl & prev_nl & prev2_nl  # first char of a line after a blank line / file start
        counts = (~blank).astype(np.int32) + doc_start
        out = np.repeat(ids, counts)
        starts = (np.cumsum(counts) - counts)[doc_start]
        out[starts] = tok.bos_id
        yield out, starts
        if raw.size:
            prev2 = ext[-2:]
        line_no += int(is_nl.sum())
        offset += size_on_disk



def _decode_char(chunk: bytes, pos: int) -> str:
    for length in range(1, 5):
        try:
            ch = chunk[pos:pos + length].decode("utf-8")
            return f"{ch!r} (U+{ord(ch):04X})"
        except (UnicodeDecodeError, TypeError):
            continue
    return f"byte 0x{chunk[pos]:02x}"


def prepare_custom_text(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], **_) -> dict:
    """User ``.txt`` files (sorted) with a fixed charset; streaming, bounded memory.

    Documents are separated by blank lines (and by file ends); each document becomes
    ``<|bos|>`` followed by its characters including line ends (blank lines dropped).
    Windows line ends (``\r\n``) are read as ``\n`` and a UTF-8 byte order mark at the start
    of a file is skipped (counted in meta.json ``normalized``), so a CRLF file gives the ids of
    its LF copy.
    Pass 1 validates every byte and counts documents; pass 2 writes: the first
    ``1 - val_fraction`` of the documents go to train, the rest to val.

    Raises:
        DataError: a character outside the charset (file, line, column, byte, character).
    """
    tok = CharsetTokenizer(opts["charset"], opts["bos"], opts["vocab_size"])
    files = [Path(p) for p in custom_text_files(str(raw_dir), opts["pattern"])]
    chunk = int(opts["chunk_bytes"])
    n_docs = 0
    normalized: dict[str, int] = {}
    for path in tqdm(files, desc="check", unit="file", file=sys.stderr, mininterval=1):
        for _, starts in _charset_chunks(path, tok, chunk, normalized):
            n_docs += int(starts.size)
    if n_docs == 0:
        raise DataError(f"{raw_dir}: no documents in {len(files)} files")
    n_train = n_docs - int(round(n_docs * float(opts["val_fraction"])))
    dtype = token_dtype(tok.vocab_size)
    doc = 0
    with SplitWriters(out_dir, ("train", "val"), dtype, tok.vocab_size) as w:
        for path in tqdm(files, desc="tokenize", unit="file", file=sys.stderr, mininterval=1):
            for ids, starts in _charset_chunks(path, tok, chunk):
                # the document with global index n_train starts the val split
                local = n_train - doc
                if 0 <= local < starts.size:
                    cut = int(starts[local])
                    w.write("train", ids[:cut])
                    w.write("val", ids[cut:])
                else:
                    w.write("train" if doc + starts.size <= n_train else "val", ids)
                doc += int(starts.size)
    return {"source": {"name": "custom_text", "files": [file_meta(p) for p in files]},
            "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size, "dtype": dtype,
            "splits": w.splits_meta(), "documents": {"train": n_train, "val": n_docs - n_train},
            "normalized": {"crlf_line_ends": normalized.get("crlf", 0), "utf8_bom_files": normalized.get("bom", 0)}}


SOURCES = ()
DATASETS = (
    Dataset(
        name="custom_text", source=None, tokenizer="charset", splits=("train", "val"),
        split_spec="documents (separated by blank lines) in sorted file order: first 90 % train, last 10 % val",
        defaults={"folder": None, "pattern": "*.txt", "charset": "0123456789+-HBL.\n",
                  "bos": "<|bos|>", "vocab_size": 32, "val_fraction": 0.1,
                  "chunk_bytes": 4 << 20},
        description="user .txt files, fixed character set, <|bos|> before every document",
        prepare=prepare_custom_text,
        raw_dir_fn=custom_text_folder,
        local_inputs_fn=lambda opts: custom_text_files(custom_text_folder(opts), opts["pattern"]),
    ),
)
