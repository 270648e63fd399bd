"""Driving a study (workflow/sweep.py and the Snakefile's parse): grid sweeps, `--config set=`
overrides, the plan printed up front, GPU stages on a machine without a GPU, and a parse that
does not import torch. The dry runs use the repository's real Snakefile (no jobs run)."""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from workflow.study.checks import check_study
from workflow.study.overrides import apply_overrides, expand_sweep, prepare_study, set_path
from workflow.study.printed_plan import format_printed_plan, printed_plan
from workflow.study.resolve import run_config
from workflow.study.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SCHEMA = str(REPO / "config" / "schema.yaml")


def tiny(**changes) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config.update(copy.deepcopy(changes))
    return config


def snakemake_dry_run(workdir: Path, configfile: Path, *args: str, python_flags=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *python_flags, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "-n", "-p", "--cores", "1", "--configfile", str(configfile), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_sweep_expands_into_named_variants_validated_like_hand_written():
    config = tiny(sweep={"train.lr": ["1e-3", 2.0e-3], "model.n_embd": [64, 96]})
    prepare_study(config)
    validate(config, SCHEMA)
    check_study(config)
    generated = [v for v in config["variants"] if v.startswith("lr-")]
    assert generated == ["lr-6e-3", "lr-1e-4", "lr-0.001_n_embd-64", "lr-0.001_n_embd-96", "lr-0.002_n_embd-64",
                         "lr-0.002_n_embd-96"]
    run = run_config(config, "A", "lr-0.002_n_embd-96", 1337)
    assert run["train"]["lr"] == 0.002 and run["model"]["n_embd"] == 96
    # "1e-3" (a string in YAML 1.1) is a number in a sweep
    assert run_config(config, "A", "lr-0.001_n_embd-64", 1337)["train"]["lr"] == 0.001
    # the hand-written variants are untouched; the baseline stays the reference
    assert config["variants"]["baseline"] == {} and config["baseline"] == "baseline"


def test_bad_sweeps_stop_naming_the_key():
    with pytest.raises(ConfigError, match=r"sweep\.optim\.lr: sweep keys are model\.<key> or train\.<key>"):
        expand_sweep(tiny(sweep={"optim.lr": [1]}))
    with pytest.raises(ConfigError, match=r"sweep\.train\.lr: expected a non-empty list"):
        expand_sweep(tiny(sweep={"train.lr": 0.1}))
    # a sweep value the schema rejects fails like a hand-written one, naming the variant and key
    config = tiny(sweep={"train.warmup_iters": [-1]})
    prepare_study(config)
    validate(config, SCHEMA)  # (Snakemake's validate fills the defaults, as in the Snakefile)
    with pytest.raises(ConfigError, match=r"variants\.warmup_iters--1\.train\.warmup_iters"):
        check_study(config)


def test_sweep_name_clash_with_a_hand_written_variant():
    config = tiny(sweep={"train.lr": [0.006]}, variants={"baseline": {}, "lr-0.006": {"train": {"lr": 0.006}}})
    with pytest.raises(ConfigError, match="'lr-0.006' is also written by hand"):
        expand_sweep(config)


def test_set_overrides_nested_keys_from_the_command_line_form():
    config = tiny(set=["stages.C.train.num_iterations=350", "train.lr=3e-3", "variants.lr-6e-3.train.lr=0.5",
                       "stages.A.gate.k=2"])
    applied = apply_overrides(config)
    assert applied == [("stages.C.train.num_iterations", 350), ("train.lr", 0.003), ("variants.lr-6e-3.train.lr", 0.5),
                       ("stages.A.gate.k", 2)]
    validate(config, SCHEMA)
    check_study(config)
    assert run_config(config, "C", "baseline", 1337)["train"]["num_iterations"] == 350
    assert run_config(config, "A", "baseline", 1337)["train"]["lr"] == 0.003
    assert run_config(config, "A", "lr-6e-3", 1337)["train"]["lr"] == 0.5
    # a variant name with dots is one key when it exists
    config = tiny(variants={"baseline": {}, "lr-1.5e-3": {"train": {"lr": 1.5e-3}}})
    set_path(config, "variants.lr-1.5e-3.train.lr", 0.25)
    assert config["variants"]["lr-1.5e-3"]["train"]["lr"] == 0.25
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        apply_overrides(tiny(set="stages.C.train.num_iterations"))
    with pytest.raises(ConfigError, match=r"study is 'tiny', not a mapping"):
        apply_overrides(tiny(set="study.name=x"))


def test_plan_counts_the_most_runs_per_stage():
    config = tiny()
    validate(config, SCHEMA)
    plan = {p["stage"]: p for p in printed_plan(config)}
    assert plan["A"]["runs"] == 4 * 2  # every variant
    assert plan["B"]["variants"] == 2 and plan["B"]["runs"] == 2 * 2  # top_k k=1 + the baseline
    assert plan["C"]["variants"] == 2 and plan["C"]["runs"] == 2 * 3  # beats_baseline: at most all of B
    assert plan["A"]["tokens"] == 8 * 8 * 32 * 4 * 2  # steps x batch x block_size x runs
    text = format_printed_plan(config)
    assert "at most 18 training runs" in text and "stage C: <= 2 variants" in text


def test_dry_run_with_sweep_override_plan_and_gpu_cap(tmp_path):
    """One real dry run: a swept study, a `--config set=` override given on the command line with
    a target after `--`, the plan printed once, and a GPU stage capped on a machine without GPU."""
    if glob.glob("/dev/nvidia[0-9]*"):
        pytest.skip("this machine has an NVIDIA GPU: the CPU cap does not apply")
    config = tiny(sweep={"train.lr": [1e-3, 2e-3], "model.n_embd": [64, 96]})
    config["stages"]["A"]["resources"] = {"gpus": 8}
    study = tmp_path / "sweep.yaml"
    study.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = snakemake_dry_run(tmp_path / "work", study, "--config", "set=[stages.A.seeds=3, train.batch_size=4]",
                             "mirror=http://127.0.0.1:9/unused", "--", "stage_A")
    out = proc.stdout + proc.stderr
    jobs = re.findall(r"rule train:.*?wildcards: stage=A, variant=([^,]+), seed=(\d+)", out, flags=re.S)
    assert len(jobs) == 8 * 3, out[-3000:]  # 4 hand-written + 4 swept variants, 3 seeds from set=
    assert {v for v, _ in jobs} >= {"lr-0.001_n_embd-64", "lr-0.002_n_embd-96"}
    command = next(line for line in out.splitlines() if "lr-0.002_n_embd-96/seed_1339" in line and "--run-config" in line)
    assert '"lr": 0.002' in command and '"n_embd": 96' in command and '"batch_size": 4' in command
    # every job's --run-config (resolved once per stage and variant, rules/common.smk's run_config_json) is exactly
    # run_config() of its own seed
    resolved = {**yaml.safe_load(study.read_text()), "set": ["stages.A.seeds=3", "train.batch_size=4"]}
    prepare_study(resolved)
    validate(resolved, SCHEMA)
    configs = [json.loads(m) for m in re.findall(r"--run-config '(\{.*?\})' --out-dir", out)]
    assert len(configs) == len(jobs)
    for job in configs:
        assert job == run_config(resolved, "A", job["variant"], job["seed"]), job["variant"]
    assert out.count("stagerun plan for study 'tiny'") == 1
    assert "stage A: <= 8 variants (all variants) x 3 seeds = <= 24 runs" in out
    assert "asks for 8 GPUs per node, but this machine has none" in out
    # an explicit train.device: cpu keeps its processes (the launcher does not cap it): no warning
    explicit = snakemake_dry_run(tmp_path / "work", study, "--config", "set=[train.device=cpu]",
                                 "mirror=http://127.0.0.1:9/unused", "--", "stage_A")
    assert "GPUs per node, but this machine has none" not in explicit.stdout + explicit.stderr
    assert "--nproc-per-node 8 " in command  # the DAG keeps the study's request; the launcher caps it
    from workflow.jobs.launcher import cap_processes

    assert cap_processes(8, 1, "auto", cpus=2, has_gpu=False) == 2
    assert cap_processes(8, 1, "auto", cpus=2, has_gpu=True) == 8
    assert cap_processes(8, 2, "auto", cpus=2, has_gpu=False) == 8  # several nodes: a cluster's allocation
    assert cap_processes(1, 1, "auto", cpus=2, has_gpu=False) == 1
    assert cap_processes(4, 1, "cpu", cpus=2, has_gpu=False) == 4  # a CPU study's gloo workers: on purpose


def test_parse_and_dry_run_do_not_import_torch(tmp_path):
    proc = snakemake_dry_run(tmp_path, TINY, "--config", "mirror=http://127.0.0.1:9/unused",
                             python_flags=("-X", "importtime"))
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "snakemake" in imported and "workflow.study.resolve" in imported
    assert "torch" not in imported, sorted(m for m in imported if m.startswith("torch"))[:5]
    # nor the analysis stack (workflow.analysis.tables / .stats: scipy, statsmodels): jobs import it
    assert not {"scipy", "statsmodels", "workflow.analysis.stats", "workflow.analysis.tables"} & imported
