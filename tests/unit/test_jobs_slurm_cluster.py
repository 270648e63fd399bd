"""workflow.jobs.slurm_cluster: SLURM time limits, and the profile's account and partitions
checked against what the cluster has (the values here are sinfo's and sacctmgr's own formats;
the live check runs on the CI cluster in tests/integration/test_slurm.py)."""

from __future__ import annotations

import pytest

from workflow.jobs.slurm_cluster import cluster_problems, slurm_minutes, train_partition

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, minutes", [
    ("infinite", None), ("UNLIMITED", None), ("1-00:00:00", 1440), ("2:00:00", 120), ("30:00", 30), ("5", 5),
    ("2-12", 3600), ("1-02:30", 1590), ("n/a", None),
])
def test_slurm_minutes(text, minutes):
    assert slurm_minutes(text) == minutes


def test_cluster_problems_name_the_value_where_it_is_set_and_what_the_cluster_has():
    limits, accounts = {"cpu": None, "gpu": 240}, {"stagerun"}
    assert cluster_problems("stagerun", {"cpu": "x", "gpu": "y"}, user="u", limits=limits, accounts=accounts) == []
    problems = cluster_problems("myaccount", {"gpu": "y", "a100": "stages.A.resources.slurm_partition"},
                                user="u", limits=limits, accounts=accounts)
    assert len(problems) == 2
    assert "'myaccount'" in problems[0] and "['stagerun']" in problems[0] and "'u'" in problems[0]
    assert "'a100' (stages.A.resources.slurm_partition)" in problems[1] and "['cpu', 'gpu']" in problems[1]


def test_train_partition_follows_snakemake_precedence():
    defaults = {"slurm_partition": "cpu"}
    assert train_partition("A", "big", (defaults, {"train": {"slurm_partition": "gpu"}}))[0] == "gpu"
    assert train_partition("A", "big", (defaults, {})) == ("big", "stages.A.resources.slurm_partition")
    assert train_partition("A", None, (defaults, {}))[0] == "cpu"
