"""A study with a continued stage B and a sequential stage C through the real Snakefile: stage B's
runs for stage A's seeds resume A's branch checkpoints, stage C's look is a checkpoint, and each
variant runs exactly the seeds of the looks it stayed open for."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY_STUDY, run_snakemake

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_continued_and_sequential_stages_run_through_the_dag(tmp_path, shared_data_server):
    study = yaml.safe_load(TINY_STUDY.read_text())
    study["study"] = "tiny-seq"
    study["variants"].pop("diverge")
    study["train"]["schedule"] = "trapezoidal"
    study["stages"] = {
        "A": {"seeds": 2, "train": {"num_iterations": 8, "warmdown_iters": 2}, "gate": {"rule": "top_k", "k": 1}},
        "B": {"seeds": 2, "continue_from": "A", "train": {"num_iterations": 12, "warmdown_iters": 3},
              "gate": {"rule": "top_k", "k": 1}},
        "C": {"seeds": 3, "train": {"num_iterations": 16, "warmdown_iters": 4}},
    }
    study["verdict"] = {"alpha": 0.05, "sequential": {"looks": [2, 3], "spending": "pocock"}}
    path = tmp_path / "tiny-seq.yaml"
    path.write_text(yaml.safe_dump(study))
    run_snakemake(tmp_path, "--cores", "2", configfiles=(path,), mirror=shared_data_server)
    results = tmp_path / "results" / "tiny-seq"

    for run in (results / "stage_B").glob("*/seed_133[78]/result.json"):  # stage A's seeds: continued at step 6
        assert json.loads(run.read_text())["continued_from"]["step"] == 6
    assert sorted(p.name for p in (results / "stage_B" / "baseline").glob("seed_*")) == ["seed_1337", "seed_1338"]

    look = json.loads((results / "looks" / "look_1.json").read_text())
    verdict = json.loads((results / "verdict.json").read_text())
    assert verdict["sequential"]["design"]["looks"] == [2, 3]
    for entry in verdict["results"]:
        seeds = sorted(p.name for p in (results / "stage_C" / entry["variant"]).glob("seed_*"))
        if entry["variant"] == "baseline":
            assert len(seeds) == (3 if look["open"] else 2)
            continue
        info = entry["sequential"]
        assert info["decision"] in ("winner", "not_winner")
        # a variant decided at look 1 ran 2 seeds, one open after it ran all 3
        assert len(seeds) == (3 if entry["variant"] in look["open"] else 2) == len(info["seeds"])
        assert info["look"] == (2 if entry["variant"] in look["open"] else 1)
