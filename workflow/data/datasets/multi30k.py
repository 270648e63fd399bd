"""Multi30k en-de sentence pairs -> GPT-2 BPE token files, each pair formatted by ``pair_format``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Mapping

from workflow.data.tokenizers import (
    GPT2Tokenizer,
)
from workflow.data.writers import DataError, SplitWriters, _gpt2_ranks, _source_meta


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
