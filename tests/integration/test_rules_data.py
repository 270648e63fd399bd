"""rules/download.smk + rules/tokenize.smk through real Snakemake runs over a loopback mirror.

The repository's Snakefile with the tiny study (tests/configs/tiny.yaml), its data folder in
tmp_path and ``mirror`` pointing at the loopback server of the shared data; the target is
the tokenized dataset only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow.data.registry import (
    DATASETS,
    UnknownNameError,
    dataset_options,
    dataset_raw_inputs,
    dataset_source,
    source_file,
    source_files,
    source_mirror,
)

SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _write_study(tmp_path: Path, repo_root: Path, mirror: str) -> None:
    config = yaml.safe_load((repo_root / "tests" / "configs" / "tiny.yaml").read_text())
    config.update(data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"), mirror=mirror)
    (tmp_path / "config.json").write_text(json.dumps(config))


def _snakemake(tmp_path: Path, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    # jobs call `python`: this interpreter's environment first on PATH
    env = {**os.environ, "PYTHONPATH": str(repo_root), "SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache"),
           "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(repo_root / "Snakefile"), "--configfile", str(tmp_path / "config.json"),
         "--directory", str(tmp_path), "--cores", "1", *args],
        capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed next to this python")
def test_rules_download_tokenize_cache_and_mirror_independence(shared_data_server, repo_root, tmp_path):
    (tmp_path / "cache").mkdir()
    _write_study(tmp_path, repo_root, shared_data_server)
    target = str(tmp_path / "data" / "tokens" / "shakespeare_char" / "meta.json")
    run = _snakemake(tmp_path, repo_root, target, "--cache")
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads(Path(target).read_text())
    assert meta["splits"]["train"]["tokens"] == 1003854 and meta["splits"]["val"]["tokens"] == 111540

    # Another mirror (here: a folder) changes nothing: no job in a dry run.
    _write_study(tmp_path, repo_root, str(Path(shared_data_server.replace("http://", "/nonexistent/"))))
    dry = _snakemake(tmp_path, repo_root, target, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr

    # A fresh data folder with an unreachable mirror: the raw file comes from the
    # between-workflow cache (same key whatever the mirror), only tokenize runs.
    raw = tmp_path / "data" / "raw" / "tinyshakespeare" / "input.txt"
    raw.unlink()
    Path(target).unlink()
    again = _snakemake(tmp_path, repo_root, target, "--cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert raw.exists() and json.loads(Path(target).read_text())["splits"] == meta["splits"]
    assert "from cache" in again.stderr


def test_registry_functions():
    assert dataset_source("shakespeare_char") == "tinyshakespeare"
    assert source_files("tinyshakespeare") == ["input.txt"]
    assert dataset_raw_inputs("shakespeare_char", "data") == ["data/raw/tinyshakespeare/input.txt"]
    assert dataset_raw_inputs("shakespeare_gpt2", "d") == ["d/raw/tinyshakespeare/input.txt",
                                                           "d/raw/gpt2/r50k_base.tiktoken"]
    fw = source_files("fineweb10B", {"train_shards": 3})
    assert fw == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin",
                  "fineweb_train_000003.bin"]
    assert len(dataset_raw_inputs("fineweb10B", "data")) == 10  # default 9 train shards + val
    spec = source_file("enwik8", "enwik8.zip", {"raw_files": {"enwik8.zip": {"bytes": None}}})
    assert spec.bytes is None and source_file("enwik8", "enwik8.zip").bytes == 36445475
    assert set(DATASETS) >= {"shakespeare_char", "shakespeare_gpt2", "enwik8", "fineweb10B", "openwebtext",
                             "custom_text", "multi30k_en_de"}


def test_registry_errors_list_known_names():
    with pytest.raises(KeyError) as err:
        dataset_source("shakespeare")
    assert "unknown dataset 'shakespeare'" in str(err.value) and "shakespeare_char" in str(err.value)
    with pytest.raises(UnknownNameError, match="known: .*train_fraction"):
        dataset_options("shakespeare_char", {"train_fractoin": 0.8})
    with pytest.raises(UnknownNameError, match="input.txt"):
        source_file("tinyshakespeare", "nope.txt")
    with pytest.raises(ValueError, match="train_shards"):
        source_files("fineweb10B", {"train_shards": 0})


def test_source_mirror_precedence():
    config = {"mirror": "http://global", "dataset": "shakespeare_gpt2",
              "datasets": {"shakespeare_gpt2": {"mirror": "/local/copy"}}}
    assert source_mirror("tinyshakespeare", config) == "/local/copy"
    assert source_mirror("gpt2", config) == "/local/copy"  # the study's BPE ranks come along
    assert source_mirror("multi30k", config) == "http://global"
    assert source_mirror("multi30k", {"mirror": None}) is None
