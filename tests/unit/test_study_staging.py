"""Checks and run settings of continued stages and sequential looks (workflow.study.staging)."""

import copy
from pathlib import Path

import pytest
import yaml

from workflow.study.checks import check_study
from workflow.study.resolve import config_hash, run_config, stage_seeds, study_with_defaults
from workflow.study.schema import ConfigError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def default_study() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def fixed_cosine_study() -> dict:
    """The default study without sequential looks and continued stages, with its old cosine schedule."""
    cfg = default_study()
    cfg["verdict"].pop("sequential", None)
    cfg["train"]["schedule"] = "cosine"
    for stage in cfg["stages"].values():
        stage.pop("continue_from", None)
        stage.get("train", {}).pop("warmdown_iters", None)
    return cfg


def test_studies_without_the_new_keys_keep_their_run_configs():
    """Run-config hashes and seeds of the cosine default study as the trainer recorded them
    before continued stages existed (results of a `make run`)."""
    cfg = study_with_defaults(fixed_cosine_study())
    expected = {"A": ("5cf67e71130b6198", [1337, 1338]), "B": ("0543639741514505", [2337, 2338, 2339]),
                "C": ("392a8bf07e5d4621", [3337, 3338, 3339, 3340, 3341])}
    for stage, (digest, seeds) in expected.items():
        run = run_config(cfg, stage, "muon", seeds[0])
        assert config_hash(run) == digest and stage_seeds(cfg, stage) == seeds
        assert "branch_at" not in run and "continue_from" not in run and run["run_id"] == 0


def test_continued_stage_shares_the_source_seeds_and_branches_at_its_decay():
    cfg = study_with_defaults(default_study())
    check_study(cfg)
    assert stage_seeds(cfg, "B") == [1337, 1338, 2337]
    a = run_config(cfg, "A", "wide-96", 1337)
    b = run_config(cfg, "B", "wide-96", 1338)
    fresh = run_config(cfg, "B", "wide-96", 2337)
    assert a["branch_at"] == cfg["stages"]["A"]["train"]["num_iterations"] - cfg["stages"]["A"]["train"]["warmdown_iters"]
    assert b["continue_from"] == {"stage": "A", "step": a["branch_at"], "config_hash": config_hash(run_config(cfg, "A", "wide-96", 1338))}
    assert "continue_from" not in fresh and (b["run_id"], fresh["run_id"]) == (1, 2)
    assert stage_seeds(cfg, "C") == list(range(3337, 3342))  # the last stage's seeds stay fresh


def test_a_schedule_that_cannot_branch_is_an_error_naming_the_key():
    cfg = default_study()
    cfg["train"]["schedule"] = "cosine"
    with pytest.raises(ConfigError, match=r"stages\.B\.continue_from: schedule 'cosine'.*cannot branch"):
        check_study(study_with_defaults(cfg))


def test_the_last_stage_never_continues():
    cfg = default_study()
    cfg["stages"]["C"]["continue_from"] = "B"
    with pytest.raises(ConfigError, match=r"stages\.C\.continue_from: the last stage never continues.*fresh"):
        check_study(study_with_defaults(cfg))


def test_other_train_differences_and_late_sources_are_errors():
    cfg = default_study()
    cfg["stages"]["B"]["train"]["batch_size"] = 16
    with pytest.raises(ConfigError, match=r"stages\.B\.continue_from: .*differ in batch_size"):
        check_study(study_with_defaults(cfg))
    cfg = default_study()
    cfg["stages"]["B"]["continue_from"] = "C"
    with pytest.raises(ConfigError, match=r"'C' is not an earlier stage"):
        check_study(study_with_defaults(cfg))


@pytest.mark.parametrize("looks, match", [([3, 4], "must be stages.C.seeds"), ([4, 3, 5], "must increase")])
def test_sequential_looks_are_checked(looks, match):
    cfg = copy.deepcopy(default_study())
    cfg["verdict"]["sequential"]["looks"] = looks
    with pytest.raises(ConfigError, match=match):
        check_study(study_with_defaults(cfg))


def test_a_continued_run_depends_on_its_source_runs_result():
    """The train rule's `source` input: stage B's runs on stage A's seeds name A's result.json
    of the same variant and seed; B's fresh seed, A's and C's runs and a fixed study name none."""
    from workflow.study.resolve import source_run_result

    cfg = study_with_defaults(default_study())
    a_seeds, b_seeds = stage_seeds(cfg, "A"), stage_seeds(cfg, "B")
    shared = [s for s in b_seeds if s in a_seeds]
    assert shared == a_seeds  # B continues both of A's seeds
    for seed in shared:
        assert source_run_result(cfg, "res", "B", "muon", seed) == [f"res/stage_A/muon/seed_{seed}/result.json"]
    fresh = [s for s in b_seeds if s not in a_seeds]
    assert fresh and all(source_run_result(cfg, "res", "B", "muon", s) == [] for s in fresh)
    assert source_run_result(cfg, "res", "A", "muon", a_seeds[0]) == []
    assert source_run_result(cfg, "res", "C", "muon", stage_seeds(cfg, "C")[0]) == []
    fixed = study_with_defaults(fixed_cosine_study())
    assert all(source_run_result(fixed, "res", "B", "muon", s) == [] for s in stage_seeds(fixed, "B"))
