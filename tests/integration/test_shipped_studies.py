"""Every shipped study plans (``snakemake -n``), and every CPU-sized one runs end to end cut short.

The studies are used as a new user would: the shipped YAML, ``--config set=...`` to cut each
stage to a few steps, the data from a loopback mirror of ../shared/data. Every variant starts,
trains and reaches the gates; the trainer runs the steps the printed plan announced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, run_snakemake

STUDIES = sorted(p.name for p in (REPO_ROOT / "config" / "studies").glob("*.yaml"))
# CPU-sized studies (the default config/config.yaml too): run end to end, cut short
CPU_STUDIES = ["config.yaml", "speedrun_cpu.yaml", "diloco_cpu.yaml", "gossip_cpu.yaml", "comm_study_cpu.yaml",
               "custom_vocab.yaml", "script_example.yaml"]


def study_path(name: str) -> Path:
    return REPO_ROOT / "config" / name if name == "config.yaml" else REPO_ROOT / "config" / "studies" / name


def custom_text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "custom_text"
    folder.mkdir(exist_ok=True)
    for i in range(20):  # documents (one per file): the val split takes the last ones
        (folder / f"doc_{i:02d}.txt").write_text(("12+34-46.HBL\n" * 40 + f"{i}0987654321\n") * 3)
    return folder


def extra_config(name: str, tmp_path: Path) -> list[str]:
    if name == "custom_vocab.yaml":
        return [f"datasets={{custom_text: {{folder: {custom_text_folder(tmp_path)}}}}}"]
    return []


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_plans(name, tmp_path):
    """``snakemake -n`` of the shipped study: no error, the plan printed, training jobs listed."""
    proc = run_snakemake(tmp_path, "-n", "--config", "mirror=http://127.0.0.1:9/unused",
                         *extra_config(name, tmp_path), configfiles=(study_path(name),), timeout=300)
    assert "stagerun plan for study" in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"^train\s+\d+", proc.stdout, re.M) or " train" in proc.stdout, proc.stdout[-2000:]


def cut_short(name: str, steps: int = 6) -> list[str]:
    """``set=`` overrides that cut every stage of a study to ``steps`` steps and one seed (the gates
    then advance nobody: one seed is below ``min_successful_runs``, which is all a smoke run needs)."""
    study = yaml.safe_load(study_path(name).read_text())
    sets = []
    last = list(study["stages"])[-1]
    sequential = bool((study.get("verdict") or {}).get("sequential"))
    for stage, spec in study["stages"].items():
        train = (spec or {}).get("train") or {}
        # a sequential last stage keeps its seeds (its last look must equal them); it never runs here
        seeds = spec["seeds"] if sequential and stage == last else 1
        sets += [f"stages.{stage}.train.num_iterations={steps}", f"stages.{stage}.train.val_loss_every={steps // 2}",
                 f"stages.{stage}.seeds={seeds}"]
        if "warmdown_iters" in train:
            sets.append(f"stages.{stage}.train.warmdown_iters=2")
    sets += ["train.val_tokens=1024", "train.warmup_iters=2"]
    return [f"set=[{', '.join(sets)}]"]


@pytest.mark.parametrize("name", CPU_STUDIES)
def test_cpu_study_runs_end_to_end_cut_short(name, tmp_path, shared_data_server):
    work = tmp_path / "work"
    proc = run_snakemake(work, "--cores", "2", "--config", f"mirror={shared_data_server}", *extra_config(name, tmp_path),
                         *cut_short(name), configfiles=(study_path(name),), timeout=1200)
    study = yaml.safe_load(study_path(name).read_text())["study"]
    results = work / "results" / study
    first = next(iter(yaml.safe_load(study_path(name).read_text())["stages"]))
    variants = yaml.safe_load(study_path(name).read_text())["variants"]
    ran = {p.parent.parent.name for p in (results / f"stage_{first}").glob("*/seed_*/result.json")}
    assert ran == set(variants), f"variants without a finished run in stage {first}: {set(variants) - ran}"
    for result in results.glob("stage_*/*/seed_*/result.json"):
        row = json.loads(result.read_text())
        assert row["num_iterations"] == 6, (result, row["num_iterations"])  # what the printed plan announced
    assert "runs of 6 steps" in proc.stderr
    if len(yaml.safe_load(study_path(name).read_text())["stages"]) > 1:  # a one-stage study has no gate
        assert (results / "gates" / f"gate_{first}.json").is_file()
    verdict = json.loads((results / "verdict.json").read_text())
    assert "winners" in verdict
