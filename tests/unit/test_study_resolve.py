"""Study config resolution: merge order, seeds, config errors naming keys, launch and SLURM resources."""

import copy
from pathlib import Path

import pytest
import yaml

from workflow.jobs.launcher import srun_prefix
from workflow.study.checks import check_model_configs, check_study
from workflow.study.resolve import config_hash, run_config, stage_seeds
from workflow.study.resources import launch_command, slurm_resources, stage_resources
from workflow.study.schema import ConfigError, validate_section

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture
def study():
    cfg = yaml.safe_load(TINY.read_text())
    # what Snakemake's validate() fills in
    cfg.setdefault("base_seed", 1337)
    cfg.setdefault("baseline", "baseline")
    cfg.setdefault("seed_stride", 1000)
    return cfg


def test_merge_order_and_seeds(study):
    study["stages"]["B"]["train"]["lr"] = 1.0e-3
    cfg = run_config(study, "B", "lr-6e-3", 2338)
    assert cfg["train"]["num_iterations"] == 12           # from the stage
    assert cfg["train"]["lr"] == 6.0e-3                   # the variant beats the stage
    assert run_config(study, "B", "baseline", 2338)["train"]["lr"] == 1.0e-3  # the stage beats the study
    assert cfg["train"]["beta2"] == 0.99                  # schema default
    assert cfg["run_id"] == 1 and cfg["stage_seed_offset"] == 1000
    assert stage_seeds(study, "C") == [3337, 3338, 3339]   # disjoint from A's and B's (tests/unit/test_study_seeds.py)


def test_config_hash_ignores_seed_but_not_settings(study):
    a = run_config(study, "A", "baseline", 1337)
    b = run_config(study, "A", "baseline", 1338)
    c = run_config(study, "A", "lr-6e-3", 1337)
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_errors_name_the_key(study):
    bad = copy.deepcopy(study)
    bad["variants"]["lr-6e-3"]["train"]["learning_rate"] = 1
    with pytest.raises(ConfigError, match=r"variants\.lr-6e-3\.train.*learning_rate"):
        check_study(bad)
    bad = copy.deepcopy(study)
    bad["baseline"] = "nope"
    with pytest.raises(ConfigError, match="baseline: 'nope'"):
        check_study(bad)
    bad = copy.deepcopy(study)
    del bad["stages"]["A"]["gate"]
    with pytest.raises(ConfigError, match=r"stages\.A\.gate"):
        check_study(bad)
    bad = copy.deepcopy(study)
    bad["variants"]["baseline"] = {"model": {"n_embed": 64}}
    with pytest.raises(ConfigError, match=r"variants\.baseline\.model.*n_embed"):
        check_model_configs(bad)
    with pytest.raises(ConfigError, match=r"train\.lr: -1 is less than or equal to the minimum"):
        validate_section({"lr": -1}, "train", "train")


def test_single_node_launch_and_resources(study):
    study["stages"]["C"]["resources"] = {"gpus": 8, "gpu_model": "h100", "cpus_per_proc": 4}
    res = stage_resources(study, "C")
    assert res["nproc_per_node"] == 8
    assert launch_command(res) == "python -m workflow.launch --nproc-per-node 8"
    assert launch_command(stage_resources(study, "A")) == "python -m workflow.launch --nproc-per-node 1"
    slurm = slurm_resources(res)
    assert (slurm["gpu"], slurm["gpu_model"], slurm["cpus_per_task"], slurm["mpi"]) == (8, "h100", 32, None)
    cpu = slurm_resources(stage_resources(study, "A"))
    assert cpu["gpu"] is None and cpu["gpu_model"] is None and cpu["cpus_per_task"] == 1


def test_multi_node_launch_and_resources(study):
    study["stages"]["C"]["resources"] = {"gpus": 4, "nodes": 2, "cpus_per_proc": 8}
    res = stage_resources(study, "C")
    cmd = launch_command(res)
    assert cmd == "python -m workflow.launch --nproc-per-node 4 --nodes 2 --cpus-per-proc 8 --gpus-per-task"
    assert " ".join(srun_prefix(2, 4, 8, True)).startswith(
        "srun --nodes=2 --ntasks-per-node=4 --gpus-per-task=1 --cpus-per-task=8")
    slurm = slurm_resources(res)
    assert (slurm["gres"], slurm["nodes"], slurm["mpi"], slurm["tasks_per_node"], slurm["cpus_per_task"]) == (
        "gpu:4", 2, "srun", 4, 8)
    assert slurm["gpu"] is None and slurm["slurm_extra"] is None  # GPUs per node (--gres), not --gpus-per-task
    study["stages"]["C"]["resources"] = {"gpus": 1, "nodes": 3, "gpu_model": "a100"}
    one = slurm_resources(stage_resources(study, "C"))
    # tasks_per_gpu=0: no --ntasks-per-gpu (the plugin would derive it from tasks)
    assert (one["tasks"], one["tasks_per_gpu"], one["tasks_per_node"], one["gres"]) == (3, 0, None, "gpu:a100:1")


def test_nproc_must_match_gpus(study):
    study["stages"]["A"]["resources"] = {"gpus": 2, "nproc_per_node": 4}
    with pytest.raises(ConfigError, match=r"stages\.A\.resources\.nproc_per_node"):
        stage_resources(study, "A")


def test_group_runs(study, tmp_path):
    from workflow.jobs.launcher import FINISHED_DIR, restore_finished, restore_invocation_runs, stash_finished
    from workflow.study.resources import group_components, train_group

    assert group_components(study) == {} and train_group(stage_resources(study, "A"), "A") is None
    study["stages"]["A"]["resources"] = {"gpus": 1, "group_runs": 8}
    res = stage_resources(study, "A")
    assert group_components(study) == {"train_A": 8} and train_group(res, "A") == "train_A"
    assert launch_command(res) == "python -m workflow.launch --nproc-per-node 1 --keep-finished"
    assert "group_runs" not in slurm_resources(res)
    study["stages"]["A"]["resources"] = {"nodes": 2, "group_runs": 8}
    with pytest.raises(ConfigError, match=r"stages\.A\.resources\.group_runs: 8 .* nodes: 2"):
        stage_resources(study, "A")
    # A finished run's outputs come back only for the same run config and invocation.
    run_cfg = run_config(study, "A", "baseline", 1337)
    (tmp_path / "result.json").write_text("{}\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    stash_finished(tmp_path, run_cfg, "inv-1")
    for name in ("result.json", "metrics.jsonl"):
        (tmp_path / name).unlink()  # as Snakemake does before it reruns a job
    assert not restore_finished(tmp_path, run_cfg, "inv-2")
    assert not restore_finished(tmp_path, {**run_cfg, "seed": 1338}, "inv-1")
    assert not (tmp_path / "result.json").exists()
    assert restore_invocation_runs([tmp_path], "inv-1") == [tmp_path]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (tmp_path / FINISHED_DIR / "record.json").exists()


def test_run_groups_cut_the_runs_into_chunks_of_the_size_asked():
    from workflow.study.resources import chunk_components, run_groups

    runs = [(v, s) for v in ("baseline", "a", "b") for s in (1, 2)]  # 6 runs
    groups = run_groups("A", runs, 4)
    assert [groups[r] for r in runs] == ["train_A_0"] * 4 + ["train_A_1"] * 2
    assert chunk_components(groups, 4) == {"train_A_0": 4, "train_A_1": 4}
    assert set(run_groups("B", runs, 1).values()) == {f"train_B_{i}" for i in range(6)}
    with pytest.raises(ValueError, match="group_runs: 0"):
        run_groups("A", runs, 0)


def test_grouped_runtime_is_cut_to_the_partition_limit():
    from workflow.study.resources import grouped_runtime

    assert grouped_runtime(10, 8, None) == (10, None)  # unlimited partition: 8 x 10 min
    assert grouped_runtime(10, 8, 80) == (10, None)
    minutes, note = grouped_runtime(60, 8, 240)  # 480 min asked, 240 allowed
    assert minutes == 30 and "limit of 240 min" in note and "240 min (30 min per run" in note
    with pytest.raises(ValueError, match="at most 5"):
        grouped_runtime(10, 8, 5)
