"""FineWeb-10B GPT-2 shards (modded-nanogpt's format: 256 int32 header, magic 20240520) -> meta.json over the shards as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from workflow.data.spec import Dataset, Source, SourceFile
from workflow.data.writers import FINEWEB_HEADER_BYTES, FINEWEB_MAGIC, FINEWEB_VERSION, DataError, source_meta

FINEWEB_URL = "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main/{}"
#: training shards the Hub repo holds
FINEWEB_TRAIN_SHARDS = 103


def fineweb_files(options: Mapping[str, Any]) -> list[SourceFile]:
    """The val shard and ``train_shards`` training shards (option, 1..103, default 9).

    Raises:
        ValueError: ``train_shards`` not an integer in 1..103 (names the key).
    """
    n = options.get("train_shards", 9)
    if not isinstance(n, int) or not 1 <= n <= FINEWEB_TRAIN_SHARDS:
        raise ValueError(f"datasets.fineweb10B.train_shards: must be an integer in 1..103, got {n!r}")
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n + 1)]
    return [SourceFile(name, FINEWEB_URL.format(name)) for name in names]


FINEWEB10B = Source(
    name="fineweb10B",
    files_fn=fineweb_files,
    every_file_fn=lambda: fineweb_files({"train_shards": FINEWEB_TRAIN_SHARDS}),
    homepage="https://huggingface.co/datasets/kjj0/fineweb10B-gpt2",
    license="FineWeb: ODC-By 1.0 (HuggingFaceFW/fineweb); CommonCrawl terms of use",
    hf_repo="kjj0/fineweb10B-gpt2",
)


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
    names = [f.filename for f in FINEWEB10B.file_specs(opts)]
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
    return {"source": source_meta(FINEWEB10B, raw_dir, opts, names),
            "tokenizer": {"kind": "gpt2", "name": "gpt2", "vocab": None, "bos_id": None, "eot_id": 50256},
            "vocab_size": 50257, "dtype": "uint16", "splits": splits}


SOURCES = (FINEWEB10B,)
DATASETS = (
    Dataset(
        name="fineweb10B", source="fineweb10B", tokenizer="pretokenized", splits=("train", "val"),
        split_spec="shard fineweb_val_000000 is val; fineweb_train_000001..N train (N = train_shards)",
        defaults={"train_shards": 9}, static_split_files=False,
        description="FineWeb 10B-token sample, GPT-2 tokens, 100M tokens per shard (modded-nanogpt)",
        prepare=prepare_fineweb10B,
    ),
)
