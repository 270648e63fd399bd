"""Multi30k en-de sentence pairs -> GPT-2 BPE token files, each pair formatted by ``pair_format``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Mapping

from workflow.data.tokenizers import (
    GPT2Tokenizer,
)
from workflow.data.spec import Dataset, Source, SourceFile
from workflow.data.writers import DataError, SplitWriters, gpt2_ranks_path, source_meta

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{}"
MULTI30K = Source(
    name="multi30k",
    files=tuple(SourceFile(name, MULTI30K_URL.format(name), sha256=sha) for name, sha in (
        ("train.en.gz", "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f"),
        ("train.de.gz", "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
        ("val.en.gz", "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28"),
        ("val.de.gz", "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
        ("test_2016_flickr.en.gz", "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9"),
        ("test_2016_flickr.de.gz", "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"),
    )),
    homepage="https://github.com/multi30k/dataset",
    license="research and education use (derived from Flickr30K)",
)


def prepare_multi30k_en_de(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], *,
                           tokenizer_file: str | None = None, **_) -> dict:
    """Multi30k en-de pairs as language-modeling text, GPT-2 BPE, uint16.

    Each aligned pair becomes ``pair_format.format(en=..., de=...)`` (default
    ``"{en}\\n{de}"``) followed by ``<|endoftext|>``; splits are the official train /
    val / test_2016_flickr files. Raises DataError if the en and de line counts differ.
    """
    tok = GPT2Tokenizer(gpt2_ranks_path(raw_dir, tokenizer_file))
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
    return {"source": source_meta(MULTI30K, raw_dir, opts), "tokenizer": tok.to_meta(),
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


SOURCES = (MULTI30K,)
DATASETS = (
    Dataset(
        name="multi30k_en_de", source="multi30k", tokenizer="gpt2", splits=("train", "val", "test"),
        split_spec="official train / val / test_2016_flickr; one pair = '{en}\\n{de}' + <|endoftext|>",
        defaults={"pair_format": "{en}\n{de}"}, needs_gpt2_ranks=True,
        description="Multi30k task 1 English-German caption pairs as a language-modeling corpus, GPT-2 BPE",
        prepare=prepare_multi30k_en_de,
    ),
)
