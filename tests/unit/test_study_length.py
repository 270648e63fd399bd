"""One source for run length and block size (workflow/study/length.py): the plan printed at every
start, the compute plan, the tables and the trainer's inputs agree on every run's steps.

Real data: the shipped studies' datasets tokenized from ../shared/data (multi30k for gossip.yaml,
tiny Shakespeare for diloco.yaml), so a length in epochs resolves to the steps the trainer runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workflow.analysis.compute_plan import compute_plan, run_estimate
from workflow.analysis.tables import naive_compute
from workflow.data.loader import TokenSplit
from workflow.data.prepare import prepare
from workflow.data.registry import study_meta_path
from workflow.compute_plan import load_study
from workflow.study.length import model_block_size, resolve_num_iterations, run_steps
from workflow.study.printed_plan import format_printed_plan, printed_plan
from workflow.study.resolve import run_config, stage_order, stage_seeds

REPO = Path(__file__).resolve().parents[2]


def _tokenized(study: str, tmp_path: Path, shared_data: Path, gpt2_ranks: Path, sources: dict) -> dict:
    config = load_study([str(REPO / "config" / "studies" / study)])
    config["data_dir"] = str(tmp_path / "data")
    for source, files in sources.items():
        raw = tmp_path / "data" / "raw" / source
        raw.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy(shared_data / source / name, raw / name)
    shutil.copy(gpt2_ranks, tmp_path / "data" / "raw" / "gpt2_ranks.tiktoken")
    options = dict((config.get("datasets") or {}).get(config["dataset"]) or {})
    options.pop("mirror", None)
    raw_dir = tmp_path / "data" / "raw" / next(iter(sources))
    prepare(config["dataset"], raw_dir, Path(study_meta_path(config)).parent, options,
            tokenizer_file=str(tmp_path / "data" / "raw" / "gpt2_ranks.tiktoken"))
    return config


def _assert_all_agree(config: dict) -> list[int]:
    meta = study_meta_path(config)
    train_tokens = TokenSplit(meta, "train").num_tokens  # what the trainer reads
    printed = {p["stage"]: p for p in printed_plan(config)}
    plan = compute_plan(config, vocab_size=256)
    seen = []
    for stage in stage_order(config):
        by_variant = {}
        for variant in config["variants"]:
            cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
            # the trainer: resolve_num_iterations(train, its train split's tokens, its block size)
            trainer_steps = resolve_num_iterations(cfg["train"], train_tokens, model_block_size(cfg["model"]))
            assert run_steps(cfg, train_tokens) == trainer_steps
            assert run_estimate(config, stage, variant, 256)["num_iterations"] == trainer_steps, (stage, variant)
            by_variant[variant] = trainer_steps
        steps = list(by_variant.values())
        assert printed[stage]["steps"] == (min(steps), max(steps)), stage
        assert printed[stage]["epochs"] is None
        entry = next(s for s in plan["stages"] if s["stage"] == stage)
        assert {v: e["num_iterations"] for v, e in entry["per_run"].items()} == by_variant
        seen += steps
    final = stage_order(config)[-1]
    for variant, entry in naive_compute(config)["naive"].items():
        assert entry["tokens_per_run"] is not None, variant
    text = format_printed_plan(config)
    assert "steps once tokenized" not in text
    assert f"{max(printed[final]['steps'][1], 1):,} steps" in text
    return seen


def _in_epochs(config: dict, epoch: str = "tokens") -> dict:
    """gossip.yaml with its length in epochs (it ships the reference's 8,844 rounds): 12 epochs,
    stage A 4, as the study offers in its header (``train.epoch``: what an epoch counts)."""
    config["train"].update(num_epochs=12, epoch=epoch)
    config["stages"]["A"]["train"] = {"num_epochs": 4}
    return config


def test_gossip_study_in_epochs_agrees(tmp_path, shared_data, gpt2_ranks):
    config = _tokenized("gossip.yaml", tmp_path, shared_data, gpt2_ranks,
                        {"multi30k": ["train.en.gz", "train.de.gz", "val.en.gz", "val.de.gz",
                                      "test_2016_flickr.en.gz", "test_2016_flickr.de.gz"]})
    steps = _assert_all_agree(_in_epochs(config))
    stride_1 = _assert_all_agree(_in_epochs(config, "stride_1"))  # DeMuon's epoch: every stride-1 window
    assert min(stride_1) > 8_844 > max(steps)  # en+de GPT-2 tokens: 12 stride-1 epochs exceed the reference's rounds
    # the same epochs give more steps in a longer stage: the length comes from the data, not num_iterations
    assert len(set(steps)) > 1 and all(s != 100 for s in steps)


def test_diloco_study_with_outer_steps_agrees(tmp_path, shared_data, gpt2_ranks):
    config = _tokenized("diloco.yaml", tmp_path, shared_data, gpt2_ranks, {"tinyshakespeare": ["input.txt"]})
    _assert_all_agree(config)


def test_num_tokens_study_agrees(tmp_path, shared_data, gpt2_ranks):
    config = _tokenized("diloco_cpu.yaml", tmp_path, shared_data, gpt2_ranks, {"tinyshakespeare": ["input.txt"]})
    for stage in config["stages"].values():
        stage.setdefault("train", {})["num_tokens"] = 3 * 4096 + 1  # not a multiple of a step's tokens
    steps = _assert_all_agree(config)
    assert all(s >= 1 for s in steps)


def test_printed_plan_says_epochs_before_tokenization(tmp_path):
    config = _in_epochs(load_study([str(REPO / "config" / "studies" / "gossip.yaml")]))
    config["data_dir"] = str(tmp_path / "nothing")
    text = format_printed_plan(config)
    assert "epochs (steps once tokenized)" in text and "runs of 100 steps" not in text


def test_stride_1_epoch_reproduces_demuons_rounds():
    """MozarTuring/DeMuon: one epoch = every stride-1 window; 12 epochs at 8 workers x batch 64
    are 8,844 rounds on its split (377,344 windows of 64 tokens = 377,408 training tokens)."""
    from workflow.study.schema import validate_section

    def train(**values):
        return validate_section(values, "train", "train")

    cfg = train(num_epochs=12, epoch="stride_1", batch_size=512)
    assert resolve_num_iterations(cfg, 377_408, 64) == 8_844
    # stagerun's default epoch (one pass of the split's tokens) is 64x shorter at block 64
    assert resolve_num_iterations(train(num_epochs=12, batch_size=512), 377_408, 64) == 139
    assert train()["epoch"] == "tokens"
    with pytest.raises(Exception, match="is not one of"):
        train(epoch="windows")


def test_gossip_study_ships_the_references_rounds():
    config = load_study([str(REPO / "config" / "studies" / "gossip.yaml")])
    final = stage_order(config)[-1]
    for variant in config["variants"]:
        cfg = run_config(config, final, variant, stage_seeds(config, final)[0])
        assert run_steps(cfg, None) == 8_844, variant
