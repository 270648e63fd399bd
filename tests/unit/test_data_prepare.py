"""Every dataset of the registry end to end on real data over loopback, plus fault tests.

enwik8: a zip of the real Wikipedia XML sample (shared data) stands in for enwik8.zip.
FineWeb: shards in modded-nanogpt's format made from GPT-2 tokens of the Wikipedia sample,
served by a fake Hugging Face endpoint (HEAD + GET on /datasets/{repo}/resolve/main/{file}).
OpenWebText: JSON lines of Wikipedia pages loaded with ``datasets.load_dataset("json")``.
"""

from __future__ import annotations

import bz2
import gzip
import html
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from workflow.data.fetch import fetch_source_file
from workflow.data.prepare import prepare, split_text
from workflow.data.datasets.fineweb import read_fineweb_header
from workflow.data.tokenizers import GPT2Tokenizer
from workflow.data.writers import DataError

WIKI_BYTES = 6_089_746
#: a test archive is not the registry's enwik8.zip: its size check is switched off (raw_files override)
TEST_ZIP = {"enwik8.zip": {"bytes": None}}


@pytest.fixture(scope="module")
def wiki_xml(shared_data) -> bytes:
    """The real MediaWiki XML sample, decompressed (6,089,746 bytes)."""
    return bz2.decompress((shared_data / "wikipedia" / "enwiki-sample.xml.bz2").read_bytes())


@pytest.fixture(scope="module")
def wiki_pages(wiki_xml) -> list[str]:
    """Article texts of the sample (one string per page with non-empty text)."""
    texts = re.findall(rb"<text[^>]*>(.*?)</text>", wiki_xml, flags=re.S)
    return [html.unescape(t.decode("utf-8")) for t in texts if t.strip()]


def _load(out: Path, split: str) -> tuple[dict, np.ndarray]:
    meta = json.loads((out / "meta.json").read_text())
    arrays = [np.fromfile(out / f["path"], dtype=meta["dtype"], offset=f["header_bytes"])
              for f in meta["splits"][split]["files"]]
    return meta, np.concatenate(arrays)


# ---------------------------------------------------------------------------------- enwik8

def _make_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_enwik8_over_loopback(wiki_xml, file_server, tmp_path):
    assert len(wiki_xml) == WIKI_BYTES and wiki_xml.startswith(b"<mediawiki")
    mirror = tmp_path / "mirror"
    _make_zip(mirror / "enwik8" / "enwik8.zip", {"enwik8": wiki_xml})
    srv = file_server(mirror)
    options = {"expected_bytes": WIKI_BYTES, "raw_files": {"enwik8.zip": {"bytes": None}}}
    raw = tmp_path / "data" / "raw" / "enwik8"
    fetch_source_file("enwik8", "enwik8.zip", raw / "enwik8.zip", mirror=srv.url, options=options, progress=False)
    out = tmp_path / "data" / "tokens" / "enwik8"
    meta = prepare("enwik8", raw, out, options)
    n_train, n_val = int(WIKI_BYTES * 0.9), int(WIKI_BYTES * 0.05)
    assert meta["vocab_size"] == 256 and meta["dtype"] == "uint8"
    assert [meta["splits"][s]["tokens"] for s in ("train", "val", "test")] == \
        [n_train, n_val, WIKI_BYTES - n_train - n_val]
    assert (out / "train.bin").read_bytes() == wiki_xml[:n_train]
    assert (out / "val.bin").read_bytes() == wiki_xml[n_train:n_train + n_val]
    assert (out / "test.bin").read_bytes() == wiki_xml[n_train + n_val:]
    assert meta["source"]["files"][0]["url"] == "http://mattmahoney.net/dc/enwik8.zip"

    # The real size check (10^8 bytes) is on by default and names archive and sizes.
    with pytest.raises(DataError, match=r"enwik8.zip:enwik8: 6089746 bytes, expected 100000000"):
        prepare("enwik8", raw, tmp_path / "other", {"raw_files": options["raw_files"]})
    assert not (tmp_path / "other" / "meta.json").exists()


def test_enwik8_zip_with_escaping_member_is_refused(tmp_path):
    raw = tmp_path / "raw" / "enwik8"
    _make_zip(raw / "enwik8.zip", {"enwik8": b"<mediawiki>" + b"x" * 100, "../evil.sh": b"rm -rf /"})
    out = tmp_path / "tokens"
    with pytest.raises(DataError, match=r"member '../evil.sh' escapes the extraction folder"):
        prepare("enwik8", raw, out, {"expected_bytes": None, "raw_files": TEST_ZIP})
    assert list(out.iterdir()) == []  # no split files, no temp files, no meta.json
    assert not (tmp_path / "raw" / "evil.sh").exists()


def test_enwik8_bad_magic(tmp_path):
    raw = tmp_path / "raw"
    _make_zip(raw / "enwik8.zip", {"enwik8": b"<html>" + b"x" * 100})
    with pytest.raises(DataError, match=r"byte 0 starts with b'<html>x"):
        prepare("enwik8", raw, tmp_path / "tok", {"expected_bytes": None, "raw_files": TEST_ZIP})


# --------------------------------------------------------------------------------- FineWeb

def _write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, tokens.size)
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


@pytest.fixture(scope="module")
def wiki_gpt2_tokens(wiki_xml, gpt2_ranks) -> np.ndarray:
    return GPT2Tokenizer(gpt2_ranks).encode(wiki_xml[:600_000].decode("utf-8", errors="ignore"))


def test_fineweb_via_fake_hf_endpoint(wiki_gpt2_tokens, file_server, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    parts = np.array_split(wiki_gpt2_tokens, 3)
    names = ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    for name, part in zip(names, parts):
        _write_shard(hub / name, part)
    srv = file_server(hub, hf_repo="kjj0/fineweb10B-gpt2")
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    options = {"train_shards": 2}
    raw = tmp_path / "data" / "raw" / "fineweb10B"
    for name in names:
        fetch_source_file("fineweb10B", name, raw / name, options=options, progress=False)
    assert any(r[0] == "HEAD" and "/datasets/kjj0/fineweb10B-gpt2/resolve/main/" in r[1] for r in srv.requests)
    out = tmp_path / "data" / "tokens" / "fineweb10B"
    meta = prepare("fineweb10B", raw, out, options)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 50257
    assert [f["path"] for f in meta["splits"]["train"]["files"]] == \
        ["../../raw/fineweb10B/fineweb_train_000001.bin", "../../raw/fineweb10B/fineweb_train_000002.bin"]
    assert all(f["header_bytes"] == 1024 for f in meta["splits"]["train"]["files"])
    assert meta["splits"]["val"]["tokens"] == parts[0].size
    assert meta["splits"]["train"]["tokens"] == parts[1].size + parts[2].size
    _, train = _load(out, "train")
    assert np.array_equal(train, np.concatenate(parts[1:]))
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]  # no copies of the shards


def test_fineweb_truncated_shard_names_file_and_byte(wiki_gpt2_tokens, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin"):
        _write_shard(raw / name, wiki_gpt2_tokens[:1000])
    shard = raw / "fineweb_train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:1024 + 1500])  # cut in the middle of the tokens
    with pytest.raises(DataError, match=r"fineweb_train_000001.bin: truncated: header \(byte 8\) says 1000 tokens"
                                        r" = 3024 bytes, file has 2524 bytes"):
        prepare("fineweb10B", raw, tmp_path / "tok", {"train_shards": 1})
    assert not (tmp_path / "tok" / "meta.json").exists()
    shard.write_bytes(b"\x00" * 2048)
    with pytest.raises(DataError, match=r"fineweb_train_000001.bin: byte 0: magic 0, expected 20240520"):
        read_fineweb_header(shard)
    shard.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"truncated header: file ends at byte 100"):
        read_fineweb_header(shard)


# ----------------------------------------------------------------------------- OpenWebText

def test_openwebtext_from_local_json_parallel_equals_serial(wiki_pages, gpt2_ranks, tmp_path):
    docs = wiki_pages[:120]
    data = tmp_path / "owt.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    options = {"data_files": [str(data)], "val_fraction": 0.1, "batch_docs": 8}
    meta2 = prepare("openwebtext", tmp_path, tmp_path / "p2", options, tokenizer_file=str(gpt2_ranks), workers=2)
    meta1 = prepare("openwebtext", tmp_path, tmp_path / "p1", options, tokenizer_file=str(gpt2_ranks), workers=1)
    for split in ("train", "val"):
        assert (tmp_path / "p2" / f"{split}.bin").read_bytes() == (tmp_path / "p1" / f"{split}.bin").read_bytes()
    assert meta2["splits"] == meta1["splits"]
    assert meta2["documents"] == {"train": 108, "val": 12}
    enc = GPT2Tokenizer(gpt2_ranks)
    expected_total = sum(len(enc.enc.encode_ordinary(t)) + 1 for t in docs)
    assert meta2["splits"]["train"]["tokens"] + meta2["splits"]["val"]["tokens"] == expected_total
    _, val = _load(tmp_path / "p2", "val")
    assert int((val == 50256).sum()) == 12 and val[-1] == 50256
    val_docs = enc.decode(val).split("<|endoftext|>")[:-1]
    assert set(val_docs) <= set(docs) and len(val_docs) == 12
    assert [p.name for p in (tmp_path / "p2").iterdir() if p.name.startswith(".")] == []  # temp cache removed


def test_openwebtext_missing_text_column(tmp_path, gpt2_ranks):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"body": "x"}\n' * 20)
    with pytest.raises(DataError, match=r"no column 'text'.*columns: \['body'\]"):
        prepare("openwebtext", tmp_path, tmp_path / "o", {"data_files": str(data)}, tokenizer_file=str(gpt2_ranks))


# ----------------------------------------------------------------------------- custom text

def test_custom_text_documents_bos_and_split(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("12+3.\nH\n\n\n7-1\n")          # docs: "12+3.\nH\n", "7-1\n"
    (folder / "b.txt").write_text("\nBL.\n\n0")                    # docs: "BL.\n", "0" (no final newline)
    (folder / "notes.md").write_text("ignored ###")
    options = {"folder": str(folder), "val_fraction": 0.25, "chunk_bytes": 4}  # tiny chunks: boundaries
    meta = prepare("custom_text", folder, tmp_path / "tok", options)
    assert meta["vocab_size"] == 32 and meta["dtype"] == "uint8" and meta["tokenizer"]["bos_id"] == 17
    assert meta["tokenizer"]["vocab"][:18] == list("0123456789+-HBL.\n") + ["<|bos|>"]
    assert meta["documents"] == {"train": 3, "val": 1}
    _, train = _load(tmp_path / "tok", "train")
    _, val = _load(tmp_path / "tok", "val")
    ids = {c: i for i, c in enumerate("0123456789+-HBL.\n")}
    enc = lambda s: [ids[c] for c in s]  # noqa: E731
    assert train.tolist() == [17, *enc("12+3.\nH\n"), 17, *enc("7-1\n"), 17, *enc("BL.\n")]
    assert val.tolist() == [17, *enc("0")]
    same = prepare("custom_text", folder, tmp_path / "tok2", {**options, "chunk_bytes": 1 << 20})
    assert (tmp_path / "tok2" / "train.bin").read_bytes() == (tmp_path / "tok" / "train.bin").read_bytes()
    assert same["splits"] == meta["splits"]


def test_custom_text_forbidden_character_names_file_line_column(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("1+1.\n" * 1000)
    (folder / "b.txt").write_text("12+3.\n\nH7-2\n45*6.\n")
    with pytest.raises(DataError, match=r"b.txt: line 4, column 3 \(byte 14\): character '\*' \(U\+002A\)"):
        prepare("custom_text", folder, tmp_path / "tok", {"folder": str(folder), "chunk_bytes": 8})
    assert not (tmp_path / "tok").exists() or list((tmp_path / "tok").iterdir()) == []
    (folder / "b.txt").write_text("12é\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1, column 3 .*'é' \(U\+00E9\)"):
        prepare("custom_text", folder, tmp_path / "tok", {"folder": str(folder)})


# -------------------------------------------------------------------------------- Multi30k

def test_multi30k_over_loopback(shared_data_server, shared_data, raw_copy, tmp_path, gpt2_ranks):
    raw = tmp_path / "data" / "raw" / "multi30k"
    from workflow.data.registry import source_files
    for name in source_files("multi30k"):
        fetch_source_file("multi30k", name, raw / name, mirror=shared_data_server, progress=False)
    raw_copy("gpt2", "r50k_base.tiktoken")
    out = tmp_path / "data" / "tokens" / "multi30k_en_de"
    meta = prepare("multi30k_en_de", raw, out)
    assert meta["dtype"] == "uint16" and meta["format"]["pair"] == "{en}\n{de}"
    counts = {}
    for split in ("train", "val", "test"):
        _, ids = _load(out, split)
        counts[split] = int((ids == 50256).sum())
    assert counts == {"train": 29000, "val": 1014, "test": 1000}
    _, test = _load(out, "test")
    first_pair = GPT2Tokenizer(gpt2_ranks).decode(test[:int(np.argmax(test == 50256))])
    with gzip.open(shared_data / "multi30k" / "test_2016_flickr.en.gz", "rt") as f_en, \
            gzip.open(shared_data / "multi30k" / "test_2016_flickr.de.gz", "rt") as f_de:
        assert first_pair == f_en.readline().rstrip("\n") + "\n" + f_de.readline().rstrip("\n")


@pytest.mark.parametrize("fraction, spec", [
    (0.9, "first 90 % of characters train, last 10 % val (nanoGPT shakespeare_char)"),
    (0.5, "first 50 % of characters train, last 50 % val"),
], ids=["default", "half"])
def test_meta_json_split_text_follows_train_fraction(fraction, spec, raw_copy, tmp_path):
    raw = raw_copy("tinyshakespeare", "input.txt")
    meta = prepare("shakespeare_char", raw, tmp_path / "tokens", {"train_fraction": fraction})
    assert meta["split_spec"] == spec
    assert json.loads((tmp_path / "tokens" / "meta.json").read_text())["split_spec"] == spec
    sizes = {s: (tmp_path / "tokens" / f"{s}.bin").stat().st_size for s in ("train", "val")}
    assert sizes["train"] / (sizes["train"] + sizes["val"]) == pytest.approx(fraction, abs=1e-3)


@pytest.mark.parametrize("dataset, options, spec", [
    ("shakespeare_gpt2", {"train_fraction": 0.75}, "first 75 % of characters train, last 25 % val, each encoded"),
    ("enwik8", {"fractions": [0.8, 0.1, 0.1]}, "bytes: first 80 % train, next 10 % val, last 10 % test"),
    ("custom_text", {"val_fraction": 0.2},
     "documents (separated by blank lines) in sorted file order: first 80 % train, last 20 % val"),
    ("openwebtext", {"val_fraction": 0.01}, "datasets train_test_split(test_size=0.01, seed=2357) of documents"),
    ("enwik8", {"fractions": [0.9, 0.05, 0.05]}, "bytes: first 90 % train, next 5 % val, last 5 % test (90M/5M/5M)"),
])
def test_split_text_of_every_dataset_with_split_options(dataset, options, spec):
    assert split_text(dataset, options) == spec
