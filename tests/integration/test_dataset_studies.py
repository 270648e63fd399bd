"""Every dataset of the registry through the real DAG: download -> tokenize -> one training run.

For each dataset a tiny one-stage study (one variant, one seed, a 1-layer 32-wide model, three
steps) is derived from the dataset's example study in config/studies/ (config/config.yaml for
shakespeare_char; written here for fineweb10B and custom_text) and run with the real
``snakemake`` CLI in its own folder. Raw files come over loopback HTTP only:

* tinyshakespeare, GPT-2 ranks, multi30k: the shared data server (``--config mirror=``);
* enwik8: a zip of the real Wikipedia XML sample on a second server (a per-dataset
  ``mirror``), with the 10^8-byte size check relaxed through the dataset options;
* fineweb10B: modded-nanogpt shards of real GPT-2 tokens behind a fake Hugging Face
  endpoint (``HF_ENDPOINT``; the downloads go through ``huggingface_hub``);
* openwebtext: a local parquet file of the Wikipedia pages (``data_files``), with the Hub
  switched off (``HF_HUB_OFFLINE``);
* custom_text: a folder of generated arithmetic documents.

Each test checks the run's result.json (success, finite val_loss below ln V + 1), that
meta.json has the dataset's vocabulary, that the final checkpoint loads strictly into a
model built with meta.json's vocab_size and predicts exactly that many classes on real
val tokens, and that the parameter count the run reports is that model's.
"""

from __future__ import annotations

import bz2
import html
import json
import math
import os
import random
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from workflow.data.registry import DATASETS, dataset_options, tokens_dir
from workflow.study.checks import check_model_configs, check_study
from workflow.study.schema import validator_with_defaults, load_schema

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "config" / "studies"
WIKI_BYTES = 6_089_746
FINEWEB_REPO = "kjj0/fineweb10B-gpt2"
TINY_MODEL = {"block_size": 16, "n_embd": 32, "n_layer": 1, "n_head": 2, "depth": None, "dropout": 0.0}
TINY_TRAIN = {"batch_size": 4, "device_batch_size": None, "val_loss_every": 0, "val_tokens": 64, "log_every": 1,
              "warmup_iters": 0, "warmdown_iters": 0, "compile": False, "dtype": "float32", "device": "cpu",
              "checkpoint_every": 0, "curriculum_block_sizes": None, "curriculum_steps": None}
STEPS = 3
#: every study shipped with the project: the default one and the examples in config/studies/
SHIPPED_STUDIES = [REPO / "config" / "config.yaml", *sorted(STUDIES.glob("*.yaml"))]

pytestmark = pytest.mark.timeout(600)


# --------------------------------------------------------------------------------- inputs

@pytest.fixture(scope="module")
def mirrors(tmp_path_factory, shared_data, shared_data_server, gpt2_ranks, module_file_server):
    """Loopback sources of every dataset (see the module docstring); a dict of URLs and paths."""
    root = tmp_path_factory.mktemp("mirrors")
    xml = bz2.decompress((shared_data / "wikipedia" / "enwiki-sample.xml.bz2").read_bytes())
    assert len(xml) == WIKI_BYTES

    # enwik8: the real sample as the archive member "enwik8" (deflated like the real zip)
    (root / "enwik8" / "enwik8").mkdir(parents=True)
    with zipfile.ZipFile(root / "enwik8" / "enwik8" / "enwik8.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("enwik8", xml)

    # FineWeb: modded-nanogpt shards (1024-byte header, uint16) of real GPT-2 tokens
    from workflow.data.tokenizers import GPT2Tokenizer
    tokens = GPT2Tokenizer(gpt2_ranks).encode(xml[:300_000].decode("utf-8", errors="ignore"))
    hub = root / "hub"
    hub.mkdir()
    shards = dict(zip(("fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"),
                      np.array_split(tokens, 3)))
    for name, part in shards.items():
        header = np.zeros(256, dtype="<i4")
        header[:3] = (20240520, 1, part.size)
        (hub / name).write_bytes(header.tobytes() + part.astype("<u2").tobytes())

    # OpenWebText: the sample's pages as a parquet file with a "text" column
    import pyarrow as pa
    import pyarrow.parquet as pq
    pages = [html.unescape(t.decode("utf-8")) for t in re.findall(rb"<text[^>]*>(.*?)</text>", xml, flags=re.S)
             if t.strip()]
    owt = root / "owt" / "pages.parquet"
    owt.parent.mkdir()
    pq.write_table(pa.table({"text": pages[:60]}), owt)

    # custom_text: arithmetic documents in the default charset
    custom = root / "custom"
    custom.mkdir()
    rng = random.Random(0)
    for part in ("a", "b"):
        docs = []
        for _ in range(150):
            x, y = rng.randrange(1000), rng.randrange(1000)
            docs.append(f"{x}+{y}\nH{x + y}.\nB{x - y}L\n")
        (custom / f"{part}.txt").write_text("\n".join(docs))

    return {
        "shared": shared_data_server,
        "enwik8": module_file_server(root / "enwik8").url,
        "hub": module_file_server(hub, hf_repo=FINEWEB_REPO),
        "owt": owt,
        "owt_docs": 60,
        "custom": custom,
        "fineweb_tokens": {name: int(part.size) for name, part in shards.items()},
        "hf_home": root / "hf-home",
    }


@dataclass
class Case:
    """How the tiny study of one dataset is made and run."""

    base_study: Path | None            # example study the tiny one is derived from
    vocab_size: int                     # what meta.json must say
    dtype: str
    options: Callable[[dict], dict] = lambda m: {}
    global_mirror: bool = True          # pass --config mirror=<shared data server>
    env: Callable[[dict], dict] = lambda m: {}
    raw: tuple[str, ...] = ()           # files expected under data/raw/
    check: Callable[[dict, dict, Path], None] = lambda meta, m, folder: None  # folder: the tokens folder


def _check_counts(meta, **tokens):
    assert {s: meta["splits"][s]["tokens"] for s in tokens} == tokens


def _check_enwik8(meta, m, folder):
    n_train, n_val = int(WIKI_BYTES * 0.9), int(WIKI_BYTES * 0.05)
    assert [meta["splits"][s]["tokens"] for s in ("train", "val", "test")] == \
        [n_train, n_val, WIKI_BYTES - n_train - n_val]


def _check_fineweb(meta, m, folder):
    tokens = m["fineweb_tokens"]
    assert meta["splits"]["val"]["tokens"] == tokens["fineweb_val_000000.bin"]
    assert meta["splits"]["train"]["tokens"] == tokens["fineweb_train_000001.bin"] + tokens["fineweb_train_000002.bin"]
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]
    hub_gets = [r for r in m["hub"].requests if r[0] == "GET" and f"/datasets/{FINEWEB_REPO}/resolve/" in r[1]]
    assert len(hub_gets) >= 3, m["hub"].requests


def _check_openwebtext(meta, m, folder):
    assert meta["source"]["name"] == "local"
    assert sum(meta["documents"].values()) == m["owt_docs"]


def _check_custom(meta, m, folder):
    assert meta["documents"] == {"train": 270, "val": 30}
    assert meta["tokenizer"]["bos_id"] == 17


def _check_multi30k(meta, m, folder):
    from workflow.data.loader import TokenSplit
    val = TokenSplit(folder / "meta.json", "val").files[0].tokens
    assert int((np.asarray(val) == 50256).sum()) == 1014  # one <|endoftext|> per official val pair


CASES: dict[str, Case] = {
    "shakespeare_char": Case(REPO / "config" / "config.yaml", 65, "uint8", raw=("tinyshakespeare/input.txt",),
                             check=lambda meta, m, w: _check_counts(meta, train=1003854, val=111540)),
    "shakespeare_gpt2": Case(STUDIES / "shakespeare_gpt2.yaml", 50257, "uint16",
                             raw=("tinyshakespeare/input.txt", "gpt2/r50k_base.tiktoken"),
                             check=lambda meta, m, w: _check_counts(meta, train=301966, val=36059)),
    "enwik8": Case(STUDIES / "enwik8.yaml", 256, "uint8",
                   options=lambda m: {"mirror": m["enwik8"], "expected_bytes": WIKI_BYTES,
                                      "raw_files": {"enwik8.zip": {"bytes": None}}},
                   raw=("enwik8/enwik8.zip",), check=_check_enwik8),
    "fineweb10B": Case(None, 50257, "uint16", options=lambda m: {"train_shards": 2}, global_mirror=False,
                       env=lambda m: {"HF_ENDPOINT": m["hub"].url},
                       raw=("fineweb10B/fineweb_val_000000.bin", "fineweb10B/fineweb_train_000002.bin"),
                       check=_check_fineweb),
    "openwebtext": Case(STUDIES / "openwebtext.yaml", 50257, "uint16",
                        options=lambda m: {"data_files": [str(m["owt"])], "format": "parquet", "val_fraction": 0.1,
                                           "batch_docs": 8},
                        env=lambda m: {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                        raw=("gpt2/r50k_base.tiktoken",), check=_check_openwebtext),
    "custom_text": Case(None, 32, "uint8", options=lambda m: {"folder": str(m["custom"])}, global_mirror=False,
                        check=_check_custom),
    "multi30k_en_de": Case(STUDIES / "multi30k.yaml", 50257, "uint16",
                           raw=("multi30k/train.en.gz", "multi30k/test_2016_flickr.de.gz", "gpt2/r50k_base.tiktoken"),
                           check=_check_multi30k),
}


def tiny_study(dataset: str, case: Case, m: dict) -> dict:
    """The one-stage, one-variant, one-seed study of ``dataset`` derived from its example study."""
    base = yaml.safe_load(case.base_study.read_text()) if case.base_study else {}
    assert base.get("dataset", dataset) == dataset, f"{case.base_study} names dataset {base.get('dataset')}"
    options = {**((base.get("datasets") or {}).get(dataset) or {}), **case.options(m)}
    return {
        "study": f"tiny-{dataset}",
        "dataset": dataset,
        "datasets": {dataset: options},
        "model": {**(base.get("model") or {}), **TINY_MODEL},
        "train": {**(base.get("train") or {}), **TINY_TRAIN},
        "variants": {"baseline": {}},
        "stages": {"A": {"seeds": 1, "train": {"num_iterations": STEPS}}},
    }


def run_snakemake(workdir: Path, configfile: Path, *targets: str, mirror: str | None, env: dict) -> None:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *targets, "--configfile", str(configfile)]
    if mirror:
        cmd += ["--config", f"mirror={mirror}"]
    # Jobs call `python` / `torchrun`: those of this interpreter's environment.
    full_env = {**os.environ, "PYTHONPATH": str(REPO),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=500)
    if proc.returncode != 0:
        logs = "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in workdir.glob("results/**/train.log"))
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}{logs}")


# ---------------------------------------------------------------------------------- tests

def test_every_registered_dataset_has_a_study_case():
    assert set(CASES) == set(DATASETS)


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_dataset_study_downloads_tokenizes_and_trains(dataset, mirrors, tmp_path):
    import torch

    from workflow.data.loader import TokenSplit
    from workflow.model import GPT
    from workflow.model.spec import build_model_config

    case = CASES[dataset]
    study = tiny_study(dataset, case, mirrors)
    configfile = tmp_path / "study.yaml"
    configfile.write_text(yaml.safe_dump(study))
    workdir = tmp_path / "work"
    run_dir = workdir / "results" / study["study"] / "stage_A" / "baseline" / "seed_1337"
    env = {"HF_HOME": str(mirrors["hf_home"]), **case.env(mirrors)}
    run_snakemake(workdir, configfile, str((run_dir / "result.json").relative_to(workdir)),
                  mirror=mirrors["shared"] if case.global_mirror else None, env=env)

    for rel in case.raw:
        assert (workdir / "data" / "raw" / rel).stat().st_size > 0, rel
    # the folder the study's options name ({dataset}-{hash} unless they are the defaults)
    meta_path = Path(tokens_dir(dataset, str(workdir / "data"), study["datasets"][dataset])) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["dataset"] == dataset and meta["vocab_size"] == case.vocab_size and meta["dtype"] == case.dtype
    case.check(meta, mirrors, meta_path.parent)

    result = json.loads((run_dir / "result.json").read_text())
    assert result["success"] is True and result["dataset"] == dataset and result["final_step"] == STEPS, result
    val_loss = result["final_val_loss"]
    assert math.isfinite(val_loss) and 0 < val_loss < math.log(case.vocab_size) + 1, val_loss

    # The trained weights belong to a model of meta.json's vocabulary.
    config = build_model_config(result["config"]["model"], meta["vocab_size"])
    model = GPT(config)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"], strict=True)
    assert state["model"]["transformer.wte.weight"].shape[0] == config.padded_vocab_size >= meta["vocab_size"]
    assert result["num_parameters"] == model.num_parameters()
    val = TokenSplit(meta_path, "val")
    train = TokenSplit(meta_path, "train")
    assert max(int(np.max(f.tokens)) for f in train.files + val.files) < meta["vocab_size"]
    window = torch.from_numpy(np.asarray(val.files[0].tokens[:config.block_size + 1], dtype=np.int64))[None]
    model.eval()
    with torch.no_grad():
        logits, loss = model(window[:, :-1], window[:, 1:])
    assert logits.shape == (1, config.block_size, meta["vocab_size"])
    assert math.isfinite(float(loss))


@pytest.mark.parametrize("path", SHIPPED_STUDIES, ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    """Every shipped study (default and examples), full size, validates (schema + defaults), passes the semantic
    checks, names a registered dataset with known options, and builds every variant's model for
    its vocabulary (the tiny runs above keep only the baseline and shrink the model)."""
    config = yaml.safe_load(path.read_text())
    errors = list(validator_with_defaults(load_schema()).iter_errors(config))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
    check_study(config)
    assert config["dataset"] in DATASETS
    for name, options in (config.get("datasets") or {}).items():
        dataset_options(name, options)  # unknown names / keys raise, naming them
    check_model_configs(config, CASES[config["dataset"]].vocab_size)
