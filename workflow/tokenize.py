"""Raw files -> token files + meta.json (docs/architecture.md, "Data layout").

CLI::

    python -m workflow.tokenize --dataset shakespeare_char --raw-dir data/raw/tinyshakespeare \\
        --out-dir data/tokens/shakespeare_char [--options-json '{}'] [--tokenizer-file F] [--workers N]

Writes ``{split}.bin`` (little-endian ``dtype`` ids, no header) for each split of the
dataset and LAST ``meta.json``; every file is written atomically (workflow.io), and a
stale meta.json is deleted before anything else, so a failed run never leaves a
meta.json that describes missing or different token files. FineWeb writes only
meta.json, pointing at the raw shards (1024-byte header, memmapped by workflow.data).

``--tokenizer-file``: GPT-2 BPE ranks (tiktoken ``r50k_base.tiktoken``); default
``{raw-dir}/../gpt2/r50k_base.tiktoken`` when it exists, else tiktoken's own download/cache.
Exit status 1 with a one-line ``error: ...`` naming the file / line / byte at fault.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import concurrent.futures
import contextlib
import gzip
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from workflow.datasets import (
    GPT2_RANKS_FILE, GPT2_SOURCE, UnknownNameError, custom_text_files, dataset_options,
    get_dataset, source_file, source_files,
)
from workflow.io import atomic_write, sha256_file, write_json_atomic
from workflow.tokenizers import (
    GPT2_EOT_ID, ByteTokenizer, CharsetTokenizer, CharTokenizer, GPT2Tokenizer, TokenizeError, gpt2_encoding,
    token_dtype,
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


def _file_meta(path: Path, url: str | None = None, filename: str | None = None) -> dict:
    return {"filename": filename or path.name, "url": url or path.resolve().as_uri(),
            "sha256": _sha256(path), "bytes": path.stat().st_size}


def verify_raw_file(path: Path, source: str, filename: str, opts: Mapping[str, Any] | None = None) -> None:
    """Check a raw file against the registry's size and sha256 (workflow.datasets.SOURCES).

    The download checked the same values; this catches a file changed since (a corrupted disk,
    an edited cache, a partial copy from another machine). ``opts``' ``raw_files`` overrides apply.

    Raises:
        FileNotFoundError: the file is missing.
        DataError: size or sha256 differ (message: the file, both sizes, both sha256).
    """
    spec = source_file(source, filename, opts)
    if spec.sha256 is None and spec.bytes is None:
        return
    if not path.is_file():
        raise FileNotFoundError(f"{path}: raw file of source {source!r} is missing (download it first)")
    size = path.stat().st_size
    actual = _sha256(path) if spec.sha256 is not None else None
    if (spec.bytes is not None and size != spec.bytes) or (actual is not None and actual != spec.sha256):
        found = f"{size:,} bytes" + (f", sha256 {actual}" if actual else "")
        expected = (f"{spec.bytes:,} bytes" if spec.bytes is not None else "") + (
            f"{', ' if spec.bytes is not None else ''}sha256 {spec.sha256}" if spec.sha256 else "")
        raise DataError(
            f"{path}: {found}, but the registry (source {source!r}, {spec.url}) expects {expected}: the file "
            "changed after its download (corrupted disk, edited cache or partial copy); delete it and rerun to "
            "download it again"
        )


def verify_raw_files(dataset: str, raw_dir: Path, opts: Mapping[str, Any], tokenizer_file: str | None = None) -> int:
    """Check every registry file that tokenizing ``dataset`` reads (:func:`verify_raw_file`):
    the source's files in ``raw_dir`` and, for GPT-2 BPE datasets, the ranks file used.

    Returns:
        The number of files checked against a size or sha256.
    """
    ds = get_dataset(dataset)
    checked = 0
    if ds.source is not None:
        for name in source_files(ds.source, opts):
            spec = source_file(ds.source, name, opts)
            if spec.sha256 is not None or spec.bytes is not None:
                verify_raw_file(raw_dir / name, ds.source, name, opts)
                checked += 1
    ranks = _gpt2_ranks(raw_dir, tokenizer_file) if ds.needs_gpt2_ranks else None
    if ranks is not None:
        verify_raw_file(Path(ranks), GPT2_SOURCE, GPT2_RANKS_FILE)
        checked += 1
    return checked


def _source_meta(source: str, raw_dir: Path, opts: Mapping[str, Any], names: list[str] | None = None) -> dict:
    """meta.json ``source``: public URL plus the actual sha256 / size of each raw file used."""
    files = []
    for name in names or source_files(source, opts):
        path = raw_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: raw file of source {source!r} is missing (download it first)")
        files.append(_file_meta(path, source_file(source, name, opts).url, name))
    return {"name": source, "files": files}


def _gpt2_ranks(raw_dir: Path, tokenizer_file: str | None) -> str | None:
    if tokenizer_file:
        return tokenizer_file
    default = raw_dir.parent / GPT2_SOURCE / GPT2_RANKS_FILE
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
    source_future = hasher.submit(_source_meta, "tinyshakespeare", raw_dir, opts)
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
    tok = GPT2Tokenizer(_gpt2_ranks(raw_dir, tokenizer_file))
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
    return {"source": _source_meta("tinyshakespeare", raw_dir, opts), "tokenizer": tok.to_meta(),
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


BYTE_CHUNK_BYTES = 1 << 20  # read -> write stays in the CPU caches (16 MB chunks: ~1.5x slower)


def write_byte_splits(fin, w: "SplitWriters", bounds: list[tuple[str, int]], *,
                      chunk_bytes: int = BYTE_CHUNK_BYTES, first_chunk=None, progress=None) -> int:
    """Byte-level tokenization of a stream: its bytes are the ids (uint8), cut into splits.

    Reads ``fin`` with ``readinto`` into one reused buffer (no allocation per chunk) and
    writes views of it: byte ``i`` goes to the first split ``(name, end)`` of ``bounds``
    with ``i < end`` (``end`` in bytes from the start, increasing); bytes past the last
    ``end`` are not written. ``first_chunk(ids)`` sees the first chunk (e.g. a magic-number
    check); ``progress(n)`` gets the size of every chunk.

    Returns:
        Bytes written (``<= bounds[-1][1]``; fewer when the stream ends early).
    """
    buf = bytearray(chunk_bytes)
    view = np.frombuffer(buf, dtype=np.uint8)
    limit = bounds[-1][1]
    pos = 0
    while pos < limit:
        got = fin.readinto(buf)
        if not got:
            break
        ids = view[:got]
        if pos == 0 and first_chunk is not None:
            first_chunk(ids)
        start = pos
        for split, end in bounds:
            lo, hi = max(start, pos), min(start + got, end)
            if hi > lo:
                w.write(split, ids[lo - start:hi - start])
                pos = hi
        if progress is not None:
            progress(got)
    return pos


def check_zip_members(zf: zipfile.ZipFile, zip_path: Path) -> None:
    """Refuse an archive with a member that would escape the extraction folder.

    Raises:
        DataError: a member name is absolute, has a drive, or has a ``..`` component
            (message names the archive and the member).
    """
    for name in zf.namelist():
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise DataError(f"{zip_path}: member {name!r} escapes the extraction folder; refusing the archive")


def prepare_enwik8(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], **_) -> dict:
    """Byte-level enwik8 streamed from ``enwik8.zip`` (no extracted copy): vocab 256, uint8.

    The member (``member``, default ``enwik8``) must be ``expected_bytes`` long (10^8; null
    skips the check) and start with ``magic`` (``<mediawiki``). Splits by ``fractions``
    (0.9/0.05/0.05 = 90M/5M/5M bytes; test gets the remainder). Source: the Hutter Prize
    file and the split of Transformer-XL / nanoGPT-style enwik8 scripts.

    Raises:
        DataError: unsafe member names (``../``), missing member, size or magic mismatch
            (message names archive, member and byte), corrupt zip (CRC).
    """
    zip_path = raw_dir / "enwik8.zip"
    member, expected, magic = opts["member"], opts["expected_bytes"], opts["magic"].encode()
    fractions = list(opts["fractions"])
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"datasets.enwik8.fractions: need 3 non-negative fractions summing to 1, got {fractions}")
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise DataError(f"{zip_path}: not a zip archive ({err})") from None
    tok = ByteTokenizer()
    # hash the archive for meta.json in a thread while the member streams (hashlib and
    # zlib release the GIL on large buffers)
    hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    source_future = hasher.submit(_source_meta, "enwik8", raw_dir, opts)
    with zf, hasher:
        check_zip_members(zf, zip_path)
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise DataError(f"{zip_path}: no member {member!r}; members: {zf.namelist()}") from None
        n = info.file_size
        if expected is not None and n != expected:
            raise DataError(f"{zip_path}:{member}: {n} bytes, expected {expected} "
                            f"(datasets.enwik8.expected_bytes)")
        n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
        bounds = [("train", n_train), ("val", n_train + n_val), ("test", n)]
        with SplitWriters(out_dir, ("train", "val", "test"), "uint8", 256) as w, zf.open(info) as fin, \
                tqdm(total=n, unit="B", unit_scale=True, desc="enwik8", file=sys.stderr, mininterval=1) as bar:
            def check_magic(head: np.ndarray) -> None:
                if bytes(head[:len(magic)]) != magic:
                    raise DataError(f"{zip_path}:{member}: byte 0 starts with {bytes(head[:len(magic)])!r}, "
                                    f"expected {magic!r}")
            try:
                pos = write_byte_splits(fin, w, bounds, first_chunk=check_magic, progress=bar.update)
            except zipfile.BadZipFile as err:
                raise DataError(f"{zip_path}:{member}: corrupt archive near byte {w.tokens_total()}: {err}") from None
            if pos != n:
                raise DataError(f"{zip_path}:{member}: member ended at byte {pos}, header says {n}")
        source = source_future.result()
    return {"source": source, "tokenizer": tok.to_meta(),
            "vocab_size": 256, "dtype": "uint8", "splits": w.splits_meta()}


def read_fineweb_header(path: Path) -> int:
    """Validate a modded-nanogpt token shard and return its token count.

    Format: 256 little-endian int32 (magic 20240520, version 1, token count, zeros) =
    1024 bytes, then ``count`` uint16 tokens. Source: modded-nanogpt data/cached_fineweb10B.py
    and train_gpt.py ``_load_data_shard``.

    Raises:
        DataError: short header, wrong magic / version, or a file size that differs from
            1024 + 2 * count (message names the file and the byte offset).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(FINEWEB_HEADER_BYTES)
    if len(raw) < FINEWEB_HEADER_BYTES:
        raise DataError(f"{path}: truncated header: file ends at byte {len(raw)}, header is {FINEWEB_HEADER_BYTES} bytes")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != FINEWEB_MAGIC:
        raise DataError(f"{path}: byte 0: magic {int(header[0])}, expected {FINEWEB_MAGIC}")
    if header[1] != FINEWEB_VERSION:
        raise DataError(f"{path}: byte 4: version {int(header[1])}, expected {FINEWEB_VERSION}")
    count = int(header[2])
    expected = FINEWEB_HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header (byte 8) says {count} tokens = {expected} bytes, "
                        f"file has {size} bytes (first bad byte {min(size, expected)})")
    return count


def prepare_fineweb10B(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], **_) -> dict:
    """FineWeb-10B GPT-2 shards: validate every shard header and write meta.json only;
    split files are the raw shards (paths relative to out_dir, header_bytes 1024, uint16)."""
    names = source_files("fineweb10B", opts)
    splits: dict[str, dict] = {"train": {"tokens": 0, "files": []}, "val": {"tokens": 0, "files": []}}
    for name in names:
        path = raw_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FineWeb shard is missing (download it first)")
        count = read_fineweb_header(path)
        split = "val" if "_val_" in name else "train"
        splits[split]["files"].append({"path": os.path.relpath(path, out_dir), "header_bytes": FINEWEB_HEADER_BYTES,
                                       "tokens": count})
        splits[split]["tokens"] += count
    return {"source": _source_meta("fineweb10B", raw_dir, opts, names),
            "tokenizer": {"kind": "gpt2", "name": "gpt2", "vocab": None, "bos_id": None, "eot_id": 50256},
            "vocab_size": 50257, "dtype": "uint16", "splits": splits}


def prepare_multi30k_en_de(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], *,
                           tokenizer_file: str | None = None, **_) -> dict:
    """Multi30k en-de pairs as language-modeling text, GPT-2 BPE, uint16.

    Each aligned pair becomes ``pair_format.format(en=..., de=...)`` (default
    ``"{en}\\n{de}"``) followed by ``<|endoftext|>``; splits are the official train /
    val / test_2016_flickr files. Raises DataError if the en and de line counts differ.
    """
    tok = GPT2Tokenizer(_gpt2_ranks(raw_dir, tokenizer_file))
    fmt = opts["pair_format"]
    prefixes = {"train": "train", "val": "val", "test": "test_2016_flickr"}
    with SplitWriters(out_dir, tuple(prefixes), "uint16", tok.vocab_size) as w:
        for split, prefix in prefixes.items():
            en, de = (_read_gz_lines(raw_dir / f"{prefix}.{lang}.gz") for lang in ("en", "de"))
            if len(en) != len(de):
                raise DataError(f"{raw_dir}/{prefix}.en.gz has {len(en)} lines but {prefix}.de.gz has {len(de)}")
            texts = [fmt.format(en=e, de=d) for e, d in zip(en, de)]
            for ids in tok.encode_batch(texts, eot=True, num_threads=2):
                w.write(split, ids)
    return {"source": _source_meta("multi30k", raw_dir, opts), "tokenizer": tok.to_meta(),
            "vocab_size": tok.vocab_size, "dtype": "uint16", "splits": w.splits_meta(),
            "format": {"pair": fmt, "eot_after_pair": True}}


def _read_gz_lines(path: Path) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return handle.read().splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 at (decompressed) byte {err.start}") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: {err}") from None


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
    return {"source": {"name": "custom_text", "files": [_file_meta(p) for p in files]},
            "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size, "dtype": dtype,
            "splits": w.splits_meta(), "documents": {"train": n_train, "val": n_docs - n_train},
            "normalized": {"crlf_line_ends": normalized.get("crlf", 0), "utf8_bom_files": normalized.get("bom", 0)}}


# openwebtext ---------------------------------------------------------------------------

_WORKER_ENC = None
_WORKER_RANKS: object = object()  # ranks file _WORKER_ENC was built from (sentinel: none yet)


def _worker_init(ranks_file: str | None) -> None:
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
    (a process-pool worker function: :func:`_worker_init` must have run in the process)."""
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
        ranks_file: GPT-2 BPE ranks (see :func:`workflow.tokenizers.gpt2_encoding`).
        workers: threads (<= 1: encode in the calling thread).
    Yields:
        One uint16 array per batch: every document's ids followed by ``<|endoftext|>`` (50256).
    """
    _worker_init(ranks_file)
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
    import datasets

    ranks = _gpt2_ranks(raw_dir, tokenizer_file)
    workers = workers or opts["num_proc"] or os.cpu_count() or 1
    data_files = opts["data_files"]
    with contextlib.ExitStack() as stack:
        if data_files:
            files = [data_files] if isinstance(data_files, str) else list(data_files)
            cache = stack.enter_context(tempfile.TemporaryDirectory(dir=out_dir, prefix=".hf-cache-"))
            ds = datasets.load_dataset(opts["format"], data_files=files, split="train", cache_dir=cache)
            source = {"name": "local", "files": [_file_meta(Path(f)) for f in files]}
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


PREPARERS = {
    "shakespeare_char": prepare_shakespeare_char,
    "shakespeare_gpt2": prepare_shakespeare_gpt2,
    "enwik8": prepare_enwik8,
    "fineweb10B": prepare_fineweb10B,
    "multi30k_en_de": prepare_multi30k_en_de,
    "custom_text": prepare_custom_text,
    "openwebtext": prepare_openwebtext,
}


def prepare(dataset: str, raw_dir: str | os.PathLike, out_dir: str | os.PathLike,
            options: Mapping[str, Any] | None = None, *, tokenizer_file: str | None = None,
            workers: int | None = None) -> dict:
    """Tokenize ``dataset`` from ``raw_dir`` into ``out_dir``; returns the meta.json dict.

    Args:
        dataset: key of workflow.datasets.DATASETS.
        raw_dir: folder of the raw files (``{data_dir}/raw/{source}``; custom_text: its folder).
        out_dir: ``{data_dir}/tokens/{dataset}``; gets ``{split}.bin`` and meta.json (last).
        options: the study's ``datasets.<dataset>`` options (merged over the defaults).
        tokenizer_file: GPT-2 BPE ranks file (see module docstring).
        workers: processes for GPT-2 BPE of large corpora (default: option num_proc / all CPUs).
    Raises:
        UnknownNameError: unknown dataset or option.
        DataError / TokenizeError / FileNotFoundError: bad or missing raw data (names file and place);
            a raw file that differs from the registry's size / sha256 (:func:`verify_raw_files`);
            a split with no room for a training window (:class:`SplitWriters`).
    """
    ds = get_dataset(dataset)
    opts = dataset_options(dataset, options)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    verify_raw_files(dataset, raw_dir, opts, tokenizer_file)
    body = PREPARERS[dataset](raw_dir, out_dir, opts, tokenizer_file=tokenizer_file, workers=workers)
    meta = {"dataset": dataset, "split_spec": ds.split_spec, **body}
    meta["options"] = {k: v for k, v in opts.items() if k != "mirror"}
    write_json_atomic(out_dir / "meta.json", meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workflow.tokenize", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--raw-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options-json", default="{}")
    parser.add_argument("--tokenizer-file", default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        try:
            options = json.loads(args.options_json)
        except json.JSONDecodeError as err:
            raise ValueError(f"--options-json: invalid JSON at column {err.colno}: {err.msg}") from None
        meta = prepare(args.dataset, args.raw_dir, args.out_dir, options,
                       tokenizer_file=args.tokenizer_file, workers=args.workers)
    except (UnknownNameError, ValueError, OSError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {v['tokens']:,}" for s, v in meta["splits"].items())
    print(f"{args.dataset}: vocab {meta['vocab_size']}, {meta['dtype']}, tokens: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
