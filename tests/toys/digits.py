"""A toy dataset: the decimal digits of the user's ``digits.txt``, character level, first
``train_fraction`` train; registered as ``toy_digits`` by tests/unit/test_registries.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from workflow.data.spec import Dataset
from workflow.data.tokenizers import CharTokenizer
from workflow.data.writers import SplitWriters, file_meta


def prepare_digits(raw_dir: Path, out_dir: Path, opts: Mapping[str, Any], **_) -> dict:
    """Char-level ids of ``raw_dir/digits.txt`` (vocab: the ten digits), uint8."""
    path = raw_dir / "digits.txt"
    text = path.read_text(encoding="ascii").strip()
    tok = CharTokenizer(list("0123456789"))
    cut = int(len(text) * opts["train_fraction"])
    with SplitWriters(out_dir, ("train", "val"), "uint8", tok.vocab_size) as w:
        w.write("train", tok.encode(text[:cut]))
        w.write("val", tok.encode(text[cut:]))
    return {"source": {"name": "toy_digits", "files": [file_meta(path)]}, "tokenizer": tok.to_meta(),
            "vocab_size": tok.vocab_size, "dtype": "uint8", "splits": w.splits_meta()}


SOURCES = ()
DATASETS = (
    Dataset(
        name="toy_digits", source=None, tokenizer="char", splits=("train", "val"),
        split_spec="first train_fraction of the digits train, the rest val",
        defaults={"folder": None, "train_fraction": 0.75},
        description="decimal digits of a user file, character level",
        prepare=prepare_digits,
        raw_dir_fn=lambda opts: str(opts["folder"]),
        local_inputs_fn=lambda opts: [str(Path(opts["folder"]) / "digits.txt")],
    ),
)
