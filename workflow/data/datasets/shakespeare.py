"""Tiny Shakespeare -> character-level or GPT-2 BPE token files (nanoGPT's 90 % / 10 % split).
"""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from workflow.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    token_dtype,
)
from workflow.data.spec import Dataset, Source, SourceFile
from workflow.data.writers import SplitWriters, gpt2_ranks_path, iter_text, source_meta

TINYSHAKESPEARE = Source(
    name="tinyshakespeare",
    files=(SourceFile(
        "input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        bytes=1115394),),
    homepage="https://github.com/karpathy/char-rnn",
    license="char-rnn repo MIT; text public domain",
)


def _split_by_chars(path: Path, cut: int) -> Iterator[tuple[str, str]]:
    """(split, text) pieces of ``path``: characters [0, cut) are train, the rest val."""
    pos = 0
    for text in iter_text(path):
        if pos + len(text) <= cut:
            yield "train", text
        elif pos >= cut:
            yield "val", text
        else:
            yield "train", text[:cut - pos]
            yield "val", text[cut - pos:]
        pos += len(text)


def prepare_shakespeare_char(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], **_) -> dict:
    """Char-level tiny Shakespeare: vocab = sorted set of characters (65), uint8,
    first ``train_fraction`` (0.9) of the characters train, the rest val. Two streaming
    passes (vocabulary and length, then ids): memory is bounded for any file size.
    Source: nanoGPT data/shakespeare_char/prepare.py (1,003,854 / 111,540 tokens)."""
    path = raw_dir / "input.txt"
    # sha256 of the raw file for meta.json in a thread (hashlib releases the GIL) while we tokenize
    hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    source_future = hasher.submit(source_meta, TINYSHAKESPEARE, raw_dir, opts)
    seen = np.zeros(0x110000, dtype=bool)
    n_chars = 0
    for text in iter_text(path):
        if text.isascii():  # bytes are code points: 4x less data than UTF-32
            codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        seen[np.flatnonzero(np.bincount(codes))] = True
        n_chars += len(text)
    tok = CharTokenizer([chr(c) for c in np.flatnonzero(seen)])
    cut = int(n_chars * opts["train_fraction"])
    dtype = token_dtype(tok.vocab_size)
    with hasher, SplitWriters(out_dir, ("train", "val"), dtype, tok.vocab_size) as w:
        for split, text in _split_by_chars(path, cut):
            w.write(split, tok.encode(text))
        source = source_future.result()
    return {"source": source, "tokenizer": tok.to_meta(),
            "vocab_size": tok.vocab_size, "dtype": dtype, "splits": w.splits_meta()}


def prepare_shakespeare_gpt2(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], *,
                             tokenizer_file: str | None = None, **_) -> dict:
    """GPT-2 BPE tiny Shakespeare: split 90/10 by characters, each part encoded with
    encode_ordinary (in :func:`bpe_safe_pieces`, identical ids, bounded memory), uint16.
    Source: nanoGPT data/shakespeare/prepare.py (301,966 / 36,059 tokens)."""
    path = raw_dir / "input.txt"
    n_chars = sum(len(text) for text in iter_text(path))
    tok = GPT2Tokenizer(gpt2_ranks_path(raw_dir, tokenizer_file))
    cut = int(n_chars * opts["train_fraction"])
    dtype = token_dtype(tok.vocab_size)
    with SplitWriters(out_dir, ("train", "val"), dtype, tok.vocab_size) as w:
        buffers = {"train": "", "val": ""}
        for split, text in _split_by_chars(path, cut):
            if split == "val" and buffers["train"]:
                w.write("train", tok.encode(buffers["train"]))  # the forced 90 % cut
                buffers["train"] = ""
            pieces = list(bpe_safe_pieces(buffers[split] + text))
            for piece in pieces[:-1]:
                w.write(split, tok.encode(piece))
            buffers[split] = pieces[-1]  # may continue in the next chunk
        for split, rest in buffers.items():
            if rest:
                w.write(split, tok.encode(rest))
    return {"source": source_meta(TINYSHAKESPEARE, raw_dir, opts), "tokenizer": tok.to_meta(),
            "vocab_size": tok.vocab_size, "dtype": dtype, "splits": w.splits_meta()}


_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def bpe_safe_pieces(text: str, target_chars: int = 1 << 21) -> Iterator[str]:
    """Split ``text`` into pieces of about ``target_chars`` whose GPT-2 BPE ids concatenate
    to the ids of the whole text (memory stays bounded on large files).

    Cuts only after a newline that sits between two non-whitespace characters: GPT-2's
    pre-tokenizer regex always ends a piece after such a newline and starts the next word
    there, so no BPE merge spans the cut. A piece may be longer when no such newline exists.
    """
    start = 0
    while len(text) - start > target_chars:
        m = _SAFE_CUT.search(text, start + target_chars)
        if m is None:
            break
        yield text[start:m.end()]
        start = m.end()
    yield text[start:]


SOURCES = (TINYSHAKESPEARE,)
DATASETS = (
    Dataset(
        name="shakespeare_char", source="tinyshakespeare", tokenizer="char", splits=("train", "val"),
        split_spec="first 90 % of characters train, last 10 % val (nanoGPT shakespeare_char)",
        defaults={"train_fraction": 0.9},
        description="tiny Shakespeare, character level, vocabulary = sorted set of characters",
        prepare=prepare_shakespeare_char,
    ),
    Dataset(
        name="shakespeare_gpt2", source="tinyshakespeare", tokenizer="gpt2", splits=("train", "val"),
        split_spec="first 90 % of characters train, last 10 % val, each encoded (nanoGPT shakespeare)",
        defaults={"train_fraction": 0.9}, needs_gpt2_ranks=True,
        description="tiny Shakespeare, GPT-2 BPE",
        prepare=prepare_shakespeare_gpt2,
    ),
)
