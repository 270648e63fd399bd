"""A tokenized dataset in nanoGPT's layout, for training scripts that read it.

CLI (what rules/script.smk runs when a study's trainer asks for ``{nanogpt_data_dir}``)::

    python -m workflow.data.nanogpt_layout --meta data/tokens/shakespeare_char/meta.json \\
        --out-dir data/tokens/shakespeare_char/nanogpt

Writes, each atomically (workflow.core.io), ``meta.pkl`` last:

- ``train.bin``, ``val.bin``: the split's token ids as little-endian **uint16**, no header
  (nanoGPT reads them with ``np.memmap(path, dtype=np.uint16, mode="r")``);
- ``meta.pkl``: a pickled dict with ``vocab_size``, and for character vocabularies ``stoi``
  (char -> id) and ``itos`` (id -> char), as nanoGPT's ``data/shakespeare_char/prepare.py``
  writes; plus ``dtype`` ("uint16") and ``tokenizer`` (the meta.json tokenizer kind).

The ids are stagerun's own (workflow.tokenize): the same split, the same vocabulary, only the
dtype and file names change, so a script on ``{nanogpt_data_dir}`` and the built-in trainer on
``{tokens_dir}`` see the same tokens. Shard datasets (FineWeb) are not rewritten: their shards
stay in modded-nanogpt's format (a 256 x int32 header, magic 20240520, then uint16 ids), which
modded-nanogpt-style scripts read directly (``{train_files}``, ``{val_files}``).

Exit status 1 with one ``error: ...`` line when the vocabulary needs more than 16 bits or the
dataset is a shard dataset.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

from workflow.core.io import atomic_write, read_json

SPLITS = ("train", "val")
CHUNK_TOKENS = 1 << 22


class LayoutError(ValueError):
    """The dataset cannot be written in nanoGPT's layout (the message says why)."""


def write_nanogpt_layout(meta_path: str | Path, out_dir: str | Path) -> dict:
    """Write ``train.bin``, ``val.bin`` (uint16) and ``meta.pkl`` of a tokenized dataset.

    Args:
        meta_path: the dataset's ``meta.json`` (workflow.tokenize).
        out_dir: the nanoGPT folder (created).
    Returns:
        ``{"vocab_size", "tokens": {split: count}}``.
    Raises:
        LayoutError: vocab_size > 65536, a split missing, or a shard dataset (header_bytes > 0).
    """
    meta_path, out_dir = Path(meta_path), Path(out_dir)
    meta = read_json(meta_path)
    vocab_size = int(meta["vocab_size"])
    if vocab_size > 1 << 16:
        raise LayoutError(f"{meta_path}: vocab_size {vocab_size} does not fit nanoGPT's uint16 ids")
    splits = meta.get("splits") or {}
    tokens = {}
    for split in SPLITS:
        info = splits.get(split)
        if info is None:
            raise LayoutError(f"{meta_path}: no split {split!r} (has: {', '.join(splits)})")
        files = info.get("files") or []
        if any(int(f.get("header_bytes") or 0) for f in files):
            raise LayoutError(
                f"{meta_path}: {meta.get('dataset', 'this dataset')} is a shard dataset: its shards stay in "
                "modded-nanogpt's format (256 x int32 header, magic 20240520); point the script at "
                "{train_files} / {val_files} instead of {nanogpt_data_dir}")
        dtype = np.dtype(meta.get("dtype", "uint16")).newbyteorder("<")
        count = 0
        with atomic_write(out_dir / f"{split}.bin", "wb") as handle:
            for f in files:
                ids = np.memmap(meta_path.parent / f["path"], dtype=dtype, mode="r")
                for start in range(0, len(ids), CHUNK_TOKENS):
                    handle.write(np.asarray(ids[start:start + CHUNK_TOKENS]).astype("<u2").tobytes())
                count += len(ids)
                del ids
        tokens[split] = count
    tokenizer = meta.get("tokenizer") or {}
    pkl = {"vocab_size": vocab_size, "dtype": "uint16", "tokenizer": tokenizer.get("kind")}
    if tokenizer.get("kind") == "char" and tokenizer.get("vocab"):
        vocab = list(tokenizer["vocab"])
        pkl["itos"] = dict(enumerate(vocab))
        pkl["stoi"] = {ch: i for i, ch in enumerate(vocab)}
    with atomic_write(out_dir / "meta.pkl", "wb") as handle:
        pickle.dump(pkl, handle)
    return {"vocab_size": vocab_size, "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.data.nanogpt_layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta", required=True, help="the dataset's meta.json")
    parser.add_argument("--out-dir", required=True, help="the nanoGPT folder to write")
    args = parser.parse_args(argv)
    try:
        info = write_nanogpt_layout(args.meta, args.out_dir)
    except (LayoutError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"nanoGPT layout in {args.out_dir}: vocab_size {info['vocab_size']}, "
          + ", ".join(f"{s} {n:,} tokens" for s, n in info["tokens"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
