"""enwik8 (the Hutter prize zip) -> byte-level token files (90M / 5M / 5M split).
"""

from __future__ import annotations

import concurrent.futures
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from workflow.data.tokenizers import (
    ByteTokenizer,
)
from workflow.data.spec import Dataset, Source, SourceFile
from workflow.data.writers import DataError, SplitWriters, source_meta

ENWIK8 = Source(
    name="enwik8",
    files=(SourceFile("enwik8.zip", "http://mattmahoney.net/dc/enwik8.zip", bytes=36445475),),
    homepage="http://mattmahoney.net/dc/textdata.html",
    license="Wikipedia text, CC BY-SA (Hutter Prize test data)",
)

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
    source_future = hasher.submit(source_meta, ENWIK8, raw_dir, opts)
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


SOURCES = (ENWIK8,)
DATASETS = (
    Dataset(
        name="enwik8", source="enwik8", tokenizer="byte", splits=("train", "val", "test"),
        split_spec="bytes: first 90 % train, next 5 % val, last 5 % test (90M/5M/5M)",
        defaults={"member": "enwik8", "expected_bytes": 100_000_000, "magic": "<mediawiki",
                  "fractions": [0.9, 0.05, 0.05]},
        description="first 10^8 bytes of an English Wikipedia XML dump, byte level (vocab 256)",
        prepare=prepare_enwik8,
    ),
)
