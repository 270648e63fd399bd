"""Job groups of a grouped stage (``stages.<S>.resources.group_runs``) in real Snakemake DAGs.

Dry runs (``snakemake -n --profile profiles/slurm-ci``: no cluster needed) of a two-stage study,
counting the group jobs and the runs in each: every target gets groups of the size asked for.
Before runs were cut into one group id per chunk (workflow.study.resources.run_groups), every
target with a checkpoint (the default one, ``verdict``) got G x G runs per group job: 16 runs
and G = 4 went out as one group of 16, ``-- stage_A`` as four groups of 4.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
REPO = Path(__file__).resolve().parents[2]


def _study(tmp_path: Path, *, variants: int, seeds: int, group_runs: int, stages: int = 2) -> Path:
    names = [chr(ord("A") + i) for i in range(stages)]
    study = {
        "study": "groups", "dataset": "shakespeare_char", "base_seed": 1337, "baseline": "baseline",
        "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
        "model": {"preset": "nanogpt-small"}, "train": {"batch_size": 8, "num_iterations": 4},
        "variants": {"baseline": {}, **{f"lr-{i}": {"train": {"lr": 1.0e-3 * (i + 1)}} for i in range(1, variants)}},
        "stages": {name: {"seeds": seeds, "resources": {"group_runs": group_runs, "runtime": 10}} for name in names},
    }
    for name in names[:-1]:
        study["stages"][name]["gate"] = {"rule": "top_k", "k": 1}
    path = tmp_path / f"study-{group_runs}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _groups(study: Path, *targets: str) -> tuple[list[int], int]:
    """(runs per group job, sorted; ungrouped training jobs) of a dry run of ``targets``."""
    out = subprocess.run(
        [str(SNAKEMAKE), "-n", "--profile", "profiles/slurm-ci", "--configfile", str(study),
         "--config", "mirror=../shared/data", "--", *targets],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sizes, grouped, total = [], 0, 0
    current = None
    for line in (out.stdout + out.stderr).splitlines():
        if re.match(r"\[.*\] Group job ", line):
            current = len(sizes)
            sizes.append(0)
        elif re.match(r"\[.*\] |Job stats", line):  # the next job at the top level
            current = None
        if line.strip() == "rule train:":
            total += 1
            if current is not None:
                sizes[current] += 1
                grouped += 1
    return sorted(sizes), total - grouped


@pytest.mark.parametrize("group_runs", [1, 2, 4, 8])
def test_every_target_gets_groups_of_the_size_asked(tmp_path, group_runs):
    # stage A: 8 variants x 2 seeds = 16 runs; stage B runs after the gate (a checkpoint)
    study = _study(tmp_path, variants=8, seeds=2, group_runs=group_runs)
    expected = ([], 16) if group_runs == 1 else ([group_runs] * (16 // group_runs), 0)
    assert _groups(study) == expected, "default target"
    assert _groups(study, "stage_A") == expected, "-- stage_A"


def test_groups_with_more_stages_than_runs_per_group_and_a_partial_chunk(tmp_path):
    # 3 stages (more than G = 2); stage A: 5 variants x 1 seed = 5 runs -> 2 + 2 + 1
    study = _study(tmp_path, variants=5, seeds=1, group_runs=2, stages=3)
    assert _groups(study, "verdict") == ([1, 2, 2], 0)
    run = tmp_path / "results" / "groups" / "stage_A" / "lr-3" / "seed_1337" / "result.json"
    assert _groups(study, str(run)) == ([1], 0), "a single run's file: a group of its own"
