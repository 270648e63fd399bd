"""Tokenizers and the tokenize CLI on real tiny Shakespeare (char level and GPT-2 BPE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from workflow.data.tokenizers import CharsetTokenizer, CharTokenizer, GPT2Tokenizer, TokenizeError, token_dtype

SHAKESPEARE_SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_char_tokenizer_round_trip(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65 and tok.vocab[0] == "\n" and tok.vocab[1] == " "
    ids = tok.encode(text)
    assert ids.shape == (len(text),) and ids.min() == 0 and ids.max() == 64
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("First Citizen:")) == "First Citizen:"


def test_char_tokenizer_unknown_char_names_position():
    tok = CharTokenizer(sorted(set("abc")))
    with pytest.raises(TokenizeError, match=r"'z' \(U\+007A\) at position 2"):
        tok.encode("abzc")
    with pytest.raises(ValueError, match="sorted"):
        CharTokenizer(["b", "a"])
    # the non-ASCII (UTF-32) path: characters beyond the table and holes inside it
    wide = CharTokenizer(sorted(set("abé€")))
    assert wide.encode("a€é").tolist() == [0, 3, 2]
    with pytest.raises(TokenizeError, match=r"'😀' \(U\+1F600\) at position 1"):
        wide.encode("a😀")
    with pytest.raises(TokenizeError, match=r"'ü' \(U\+00FC\) at position 2"):
        wide.encode("abü")
    with pytest.raises(TokenizeError, match=r"'\\x00' \(U\+0000\) at position 0"):
        tok.encode("\x00a")  # ASCII path: a byte below the smallest vocabulary character


def test_token_dtype_edges():
    assert [token_dtype(n) for n in (65, 256, 257, 50257, 65536, 65537)] == \
        ["uint8", "uint8", "uint16", "uint16", "uint16", "uint32"]


def test_charset_tokenizer_round_trip():
    tok = CharsetTokenizer()
    assert tok.vocab_size == 32 and tok.bos_id == 17 and len(tok.vocab) == 32
    ids = tok.encode("12+7.H\n")
    assert ids.tolist() == [1, 2, 10, 7, 15, 12, 16]
    assert tok.decode(ids) == "12+7.H\n"
    with pytest.raises(TokenizeError, match=r"'=' \(U\+003D\) at position 2"):
        tok.encode("1+=")


def test_gpt2_tokenizer_offline(gpt2_ranks):
    tok = GPT2Tokenizer(gpt2_ranks)
    ids = tok.encode("Hello world<|endoftext|>")
    assert ids.tolist()[:2] == [15496, 995]  # the well-known GPT-2 ids of "Hello", " world"
    assert 50256 not in ids.tolist()  # special tokens in the text stay plain text
    assert tok.decode(ids) == "Hello world<|endoftext|>"
    assert tok.encode_batch(["a", "b"], eot=True) == [[64, 50256], [65, 50256]]


def _tokenize_cli(repo_root, *args):
    return subprocess.run([sys.executable, "-m", "workflow.tokenize", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo_root)})


def _read_split(out_dir, meta, split):
    info = meta["splits"][split]["files"][0]
    return np.fromfile(out_dir / info["path"], dtype=meta["dtype"], offset=info["header_bytes"])


def test_tokenize_cli_shakespeare_char(repo_root, raw_copy, tmp_path, shared_data):
    raw = raw_copy("tinyshakespeare", "input.txt")
    out = tmp_path / "data" / "tokens" / "shakespeare_char"
    proc = _tokenize_cli(repo_root, "--dataset", "shakespeare_char", "--raw-dir", str(raw), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "shakespeare_char"
    assert meta["vocab_size"] == 65 and meta["dtype"] == "uint8"
    assert meta["tokenizer"]["kind"] == "char" and meta["tokenizer"]["bos_id"] is None
    assert len(meta["tokenizer"]["vocab"]) == 65 and meta["tokenizer"]["vocab"][:3] == ["\n", " ", "!"]
    assert meta["splits"]["train"] == {"tokens": 1003854,
                                       "files": [{"path": "train.bin", "header_bytes": 0, "tokens": 1003854}]}
    assert meta["splits"]["val"]["tokens"] == 111540
    assert meta["source"]["name"] == "tinyshakespeare"
    assert meta["source"]["files"][0]["sha256"] == SHAKESPEARE_SHA
    assert meta["source"]["files"][0]["bytes"] == 1115394
    assert meta["source"]["files"][0]["url"].startswith("https://raw.githubusercontent.com/karpathy/char-rnn/")
    assert (out / "train.bin").stat().st_size == 1003854 and (out / "val.bin").stat().st_size == 111540
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tok = CharTokenizer(meta["tokenizer"]["vocab"])
    train, val = _read_split(out, meta, "train"), _read_split(out, meta, "val")
    assert tok.decode(train[:200]) == text[:200]
    assert tok.decode(val) == text[1003854:]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temp files


def test_tokenize_cli_shakespeare_gpt2_counts(repo_root, raw_copy, tmp_path, gpt2_ranks, shared_data):
    raw = raw_copy("tinyshakespeare", "input.txt")
    raw_copy("gpt2", "r50k_base.tiktoken")  # the default place: {raw-dir}/../gpt2/
    out = tmp_path / "data" / "tokens" / "shakespeare_gpt2"
    proc = _tokenize_cli(repo_root, "--dataset", "shakespeare_gpt2", "--raw-dir", str(raw), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    assert meta["splits"]["train"]["tokens"] == 301966
    assert meta["splits"]["val"]["tokens"] == 36059
    val = _read_split(out, meta, "val")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert GPT2Tokenizer(gpt2_ranks).decode(val) == text[int(len(text) * 0.9):]


def test_tokenize_cli_errors(repo_root, tmp_path):
    proc = _tokenize_cli(repo_root, "--dataset", "nope", "--raw-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert "unknown dataset 'nope'" in proc.stderr and "shakespeare_char" in proc.stderr
    proc = _tokenize_cli(repo_root, "--dataset", "shakespeare_char", "--raw-dir", str(tmp_path),
                         "--out-dir", str(tmp_path / "o"), "--options-json", '{"train_frac": 0.8}')
    assert proc.returncode == 1 and "train_frac" in proc.stderr and "train_fraction" in proc.stderr
    proc = _tokenize_cli(repo_root, "--dataset", "shakespeare_char", "--raw-dir", str(tmp_path / "missing"),
                         "--out-dir", str(tmp_path / "o"))
    assert proc.returncode == 1 and "input.txt" in proc.stderr
    assert not (tmp_path / "o" / "meta.json").exists()


def test_failed_run_leaves_no_stale_meta(raw_copy, tmp_path):
    from workflow.data.prepare import prepare

    raw = raw_copy("tinyshakespeare", "input.txt")
    out = tmp_path / "tok"
    unchecked = {"raw_files": {"input.txt": {"sha256": None, "bytes": None}}}  # past the registry check
    prepare("shakespeare_char", raw, out, unchecked)  # the same options both times (else refused)
    assert (out / "meta.json").exists()
    (raw / "input.txt").write_bytes(b"\xff\xfe broken")
    with pytest.raises(ValueError, match=r"input.txt: not UTF-8 at byte 0"):
        prepare("shakespeare_char", raw, out, unchecked)
    assert not (out / "meta.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_bpe_safe_pieces_give_identical_ids(shared_data, gpt2_ranks):
    from workflow.data.datasets.shakespeare import bpe_safe_pieces

    enc = GPT2Tokenizer(gpt2_ranks).enc
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    pieces = list(bpe_safe_pieces(text, target_chars=5000))
    assert len(pieces) > 100 and "".join(pieces) == text
    assert [i for p in pieces for i in enc.encode_ordinary(p)] == enc.encode_ordinary(text)
    assert list(bpe_safe_pieces("no newline at all " * 10, target_chars=5)) == ["no newline at all " * 10]


def test_parallel_encode_equals_encode_ordinary_loop(shared_data, gpt2_ranks):
    """Threads (workers=2) and the calling thread (workers=1) give exactly the ids of a
    per-document encode_ordinary loop plus <|endoftext|>, in document order, special-token
    text included (encoded as plain text)."""
    from workflow.data.datasets.openwebtext import parallel_encode

    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    docs = [text[i:i + 5000] for i in range(0, 200_000, 5000)] + ["a <|endoftext|> b", "", "é\n"]
    enc = GPT2Tokenizer(gpt2_ranks).enc
    expected = [t for d in docs for t in [*enc.encode_ordinary(d), 50256]]
    for workers in (1, 2):
        batches = (docs[i:i + 7] for i in range(0, len(docs), 7))
        arrays = list(parallel_encode(batches, str(gpt2_ranks), workers))
        assert len(arrays) == 7 and all(a.dtype == np.uint16 for a in arrays)
        assert np.concatenate(arrays).tolist() == expected
