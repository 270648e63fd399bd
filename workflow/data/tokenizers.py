"""Tokenizers: character level, byte level, GPT-2 BPE (tiktoken) and fixed character set.

All ``encode`` methods return 1-D numpy integer arrays of token ids; ``decode`` inverts
them. :func:`token_dtype` picks the on-disk dtype (uint8 / uint16 / uint32) from the
vocabulary size. ``to_meta()`` gives the ``tokenizer`` object of meta.json
(docs/architecture.md).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from workflow.data.spec import Source, SourceFile

GPT2_EOT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
GPT2_SOURCE = "gpt2"
GPT2_RANKS_FILE = "r50k_base.tiktoken"
#: the GPT-2 BPE ranks (a raw file of every GPT-2 BPE dataset: tiktoken runs offline)
GPT2_RANKS = Source(
    name=GPT2_SOURCE,
    files=(SourceFile(
        GPT2_RANKS_FILE,
        "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
        sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        bytes=835554),),
    homepage="https://github.com/openai/tiktoken",
    license="MIT (GPT-2 BPE ranks, tiktoken r50k_base = gpt2)",
)


class TokenizeError(ValueError):
    """Text that the tokenizer cannot encode; the message names where (file/line/column or position)."""


def token_dtype(vocab_size: int) -> str:
    """Smallest unsigned dtype name holding ids ``0..vocab_size-1``: uint8 if <= 256, uint16 if <= 65536, else uint32."""
    if vocab_size <= 1 << 8:
        return "uint8"
    if vocab_size <= 1 << 16:
        return "uint16"
    return "uint32"


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer:
    """Character-level tokenizer: id ``i`` is ``vocab[i]``; vocab is sorted unique characters.

    Source: nanoGPT data/shakespeare_char/prepare.py (vocabulary = sorted(set(text))).
    """

    kind = "char"

    @staticmethod
    def planned_vocab(options: Mapping[str, Any]) -> tuple[int, str]:
        """(vocab_size to plan with before tokenizing, where it comes from): 256, an upper bound."""
        return 256, "estimate (char tokenizer)"

    def __init__(self, vocab: Sequence[str]):
        """Args: vocab: distinct single characters, sorted by code point (ValueError otherwise)."""
        vocab = list(vocab)
        if any(len(c) != 1 for c in vocab):
            raise ValueError("char vocab entries must be single characters")
        if vocab != sorted(set(vocab)):
            raise ValueError("char vocab must be sorted and without duplicates")
        self.vocab = vocab
        codes = np.array([ord(c) for c in vocab], dtype=np.int64)
        # code point -> id lookup table (-1: not in the vocabulary); at least 256 entries (any
        # byte indexes it), at most 0x110000; int16 when the ids fit (half the memory traffic)
        lut_dtype = np.int16 if len(vocab) < 1 << 15 else np.int32
        self._lut = np.full(max(256, int(codes.max()) + 1 if codes.size else 1), -1, dtype=lut_dtype)
        self._lut[codes] = np.arange(codes.size, dtype=lut_dtype)
        # ASCII text with a vocabulary of < 255 ids: bytes.translate maps characters to ids in
        # one C pass (255 marks characters outside the vocabulary)
        self._ascii_table = None
        if len(vocab) < 255:
            self._ascii_table = bytes(int(i) if i >= 0 else 255 for i in self._lut[:256])

    @classmethod
    def from_text(cls, text: str, chunk_chars: int = 1 << 22) -> "CharTokenizer":
        """Vocabulary = sorted set of the characters of ``text`` (counted in chunks, bounded memory)."""
        seen = np.zeros(0x110000, dtype=bool)
        for i in range(0, len(text), chunk_chars):
            codes = np.frombuffer(text[i:i + chunk_chars].encode("utf-32-le"), dtype=np.uint32)
            seen[np.flatnonzero(np.bincount(codes, minlength=0))] = True
        return cls([chr(c) for c in np.flatnonzero(seen)])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of ``text``: shape (len(text),); uint8 for ASCII text with a
        vocabulary below 255 (``bytes.translate`` with a 256-entry table, one C pass), else
        int16 (vocabularies below 32768) or int32 from a vectorized table lookup of the code
        points (ASCII text viewed as bytes, other text as UTF-32 via ``np.frombuffer``).

        Raises:
            TokenizeError: a character outside the vocabulary (names position and character).
        """
        if text.isascii() and self._ascii_table is not None:
            mapped = text.encode("ascii").translate(self._ascii_table)
            first_bad = mapped.find(255)
            ids = np.frombuffer(mapped, dtype=np.uint8)
            bad = np.array([first_bad] if first_bad >= 0 else [], dtype=np.int64)
        elif text.isascii():
            ids = self._lut[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
            bad = np.flatnonzero(ids < 0)
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            inside = codes < self._lut.size
            ids = self._lut[np.where(inside, codes, 0)]
            bad = np.flatnonzero((ids < 0) | ~inside)
        if bad.size:
            pos = int(bad[0])
            raise TokenizeError(f"character {_describe(text[pos])} at position {pos} is not in the vocabulary")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (IndexError for an id >= vocab_size)."""
        return "".join(self.vocab[int(i)] for i in ids)

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab, "bos_id": None}


class ByteTokenizer:
    """Byte-level tokenizer: the token ids are the bytes themselves (vocab 256). Used for enwik8."""

    kind = "byte"
    vocab_size = 256

    @staticmethod
    def planned_vocab(options: Mapping[str, Any]) -> tuple[int, str]:
        """(vocab_size to plan with before tokenizing, where it comes from)."""
        return 256, "estimate (byte tokenizer)"

    def encode(self, data: bytes | bytearray | memoryview | str) -> np.ndarray:
        """uint8 array of shape (len(data),) viewing ``data`` (str is UTF-8 encoded first); no copy for bytes."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        """UTF-8 text of the bytes ``ids`` (invalid sequences replaced)."""
        return bytes(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.uint8)).decode(
            "utf-8", errors="replace")

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab": None, "bos_id": None}


def gpt2_encoding(ranks_file: str | os.PathLike | None = None):
    """tiktoken ``Encoding`` of GPT-2 BPE (50,257 tokens, ``<|endoftext|>`` = 50256).

    Args:
        ranks_file: local copy of tiktoken's ``r50k_base.tiktoken`` (same ranks as ``gpt2``);
            the encoding is then built offline with ``tiktoken.load.load_tiktoken_bpe``
            (hash-checked). None: ``tiktoken.get_encoding("gpt2")`` (network or
            ``TIKTOKEN_CACHE_DIR``).
    Source: tiktoken_ext/openai_public.py (``gpt2`` / ``r50k_base``).
    """
    import tiktoken  # deferred heavy import: tiktoken, only for GPT-2 BPE

    if ranks_file is None:
        return tiktoken.get_encoding("gpt2")
    import tiktoken_ext.openai_public as public  # deferred heavy import: tiktoken
    from tiktoken.load import load_tiktoken_bpe  # deferred heavy import: tiktoken

    ranks = load_tiktoken_bpe(
        os.fspath(ranks_file),
        expected_hash="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    )
    # r50k_base() would download; reuse its pattern constant without calling it.
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class GPT2Tokenizer:
    """GPT-2 BPE via tiktoken; ``encode`` ignores special tokens in the text (encode_ordinary)."""

    kind = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE

    @staticmethod
    def planned_vocab(options: Mapping[str, Any]) -> tuple[int, str]:
        """(vocab_size to plan with before tokenizing, where it comes from)."""
        return GPT2_VOCAB_SIZE, "estimate (gpt2 tokenizer)"
    eot_id = GPT2_EOT_ID

    def __init__(self, ranks_file: str | os.PathLike | None = None):
        """Args: ranks_file: see :func:`gpt2_encoding`."""
        self.enc = gpt2_encoding(ranks_file)

    def encode(self, text: str) -> np.ndarray:
        """int64 array of BPE ids of ``text`` (``<|endoftext|>`` in the text is plain text)."""
        return np.asarray(self.enc.encode_ordinary(text), dtype=np.int64)

    def encode_batch(self, texts: Sequence[str], eot: bool = True, num_threads: int = 1) -> list[list[int]]:
        """BPE ids of each text, with ``eot_id`` appended to each when ``eot``."""
        out = self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
        if eot:
            for ids in out:
                ids.append(self.eot_id)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids])

    def to_meta(self) -> dict:
        return {"kind": self.kind, "name": "gpt2", "vocab": None, "bos_id": None, "eot_id": self.eot_id}


class CharsetTokenizer:
    """Fixed character set: ``charset[i]`` has id i, then ``bos`` has id ``len(charset)``;
    the vocabulary is padded to ``vocab_size`` (unused ids). Single-byte (ASCII) characters only.

    Default (custom_text): ``0123456789+-HBL.`` and newline = ids 0..16, ``<|bos|>`` = 17, vocab 32.
    """

    kind = "charset"

    @staticmethod
    def planned_vocab(options: Mapping[str, Any]) -> tuple[int, str]:
        """(vocab_size to plan with before tokenizing, where it comes from): the option ``vocab_size``."""
        return int(options["vocab_size"]), "estimate (charset vocab_size)"

    def __init__(self, charset: str = "0123456789+-HBL.\n", bos: str = "<|bos|>", vocab_size: int = 32):
        if len(set(charset)) != len(charset):
            raise ValueError(f"charset {charset!r} has duplicate characters")
        if any(ord(c) > 127 for c in charset):
            raise ValueError(f"charset {charset!r}: only ASCII characters are supported")
        if vocab_size < len(charset) + 1:
            raise ValueError(f"vocab_size {vocab_size} < len(charset) + 1 = {len(charset) + 1}")
        self.charset, self.bos, self.vocab_size = charset, bos, vocab_size
        self.bos_id = len(charset)
        self.lut = np.full(256, 255, dtype=np.uint8)  # byte -> id, 255 = forbidden
        for i, ch in enumerate(charset):
            self.lut[ord(ch)] = i

    @property
    def vocab(self) -> list[str]:
        pad = [f"<|pad{i}|>" for i in range(self.bos_id + 1, self.vocab_size)]
        return list(self.charset) + [self.bos] + pad

    def encode_bytes(self, data: bytes) -> tuple[np.ndarray, int | None]:
        """(uint8 ids of shape (len(data),), index of the first forbidden byte or None)."""
        ids = self.lut[np.frombuffer(data, dtype=np.uint8)]
        bad = np.flatnonzero(ids == 255)
        return ids, (int(bad[0]) if bad.size else None)

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` (no bos added). TokenizeError names position and character."""
        for pos, ch in enumerate(text):
            if ord(ch) > 127 or self.lut[ord(ch)] == 255:
                raise TokenizeError(f"character {_describe(ch)} at position {pos} is not in the charset {self.charset!r}")
        return self.lut[np.frombuffer(text.encode("ascii"), dtype=np.uint8)].astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        vocab = self.vocab
        return "".join(vocab[int(i)] for i in ids)

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab, "bos_id": self.bos_id}


class PretokenizedGPT2:
    """Shards that already hold GPT-2 token ids (FineWeb): nothing to encode."""

    kind = "pretokenized"

    @staticmethod
    def planned_vocab(options: Mapping[str, Any]) -> tuple[int, str]:
        """(vocab_size to plan with before reading the shards, where it comes from)."""
        return GPT2_VOCAB_SIZE, "estimate (pretokenized tokenizer)"


#: Tokenizer kinds by name (a dataset's ``tokenizer``; meta.json's ``tokenizer.kind``).
TOKENIZERS: dict[str, type] = {
    CharTokenizer.kind: CharTokenizer,
    ByteTokenizer.kind: ByteTokenizer,
    GPT2Tokenizer.kind: GPT2Tokenizer,
    CharsetTokenizer.kind: CharsetTokenizer,
    PretokenizedGPT2.kind: PretokenizedGPT2,
}
