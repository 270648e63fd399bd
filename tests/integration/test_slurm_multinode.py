"""Runs that span both nodes of the CI cluster, through ``snakemake --profile profiles/slurm-ci``.

Needs the two-node cluster of ``.ci/slurm/setup.sh`` (slurmd n1 and n2, each in its own network
namespace with its own address); skipped like tests/integration/test_slurm.py without it. Every run is a real
``srun`` across the two nodes (workflow.launch: one task per process), gloo over the nodes'
bridge, rendezvous at the first node (MASTER_ADDR n1, GLOO_SOCKET_IFNAME the interface towards
it: workflow.parallel.process_groups.interface_towards). What is checked:

- DDP on 2 nodes x 1 process with one (fake) GPU each, preempted (``scontrol requeue``) while it trains: both workers
  checkpoint and exit 75 (the launcher's log), SLURM requeues the job, the second attempt resumes
  from the checkpoint on both nodes, and its losses equal those of the same world size on one
  node (2 processes under torchrun, run locally) at every logged step;
- DiLoCo on 2 nodes x 2 processes (world size 4, two ranks per node);
- real tensor parallelism (``model.tp_mode: real``, tp_size 2) on 2 nodes x 1 process: the one
  tp group is ranks 0 and 1, one on each node.

``sacct`` shows that each job held both nodes (NNodes 2, NodeList n[1-2]); every rank's host
name is in result.json (``hostnames``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from runs import last_step
from test_slurm import (
    REPO,
    SNAKEMAKE,
    _finish,
    _run_id,
    _snakemake,
    _wait,
    pytestmark,  # noqa: F401 (the same skip when no cluster is reachable)
)

SACCT_FIELDS = ["JobIDRaw", "State", "NNodes", "NodeList", "ExitCode", "Partition"]
LOSS_KEYS = ("train_loss", "val_loss")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the module: the first run downloads and tokenizes, the others reuse it."""
    return tmp_path_factory.mktemp("multinode-data")


def _study(tmp_path: Path, mirror: str, data_dir: Path, stages: dict, variants: dict, train: dict | None = None,
           results: str = "results") -> Path:
    """A tiny CPU study (gloo) with the given stages and variants, folders in tmp_path."""
    study = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    study["train"] = {**study["train"], "device": "cpu", **(train or {})}
    study.update(results_dir=str(tmp_path / results), data_dir=str(data_dir), mirror=mirror, variants=variants,
                 stages=stages)
    path = tmp_path / f"{results}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _sacct_jobs(run_id: str) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--duplicates", "--starttime", "now-1days", "--name", run_id,
         "-o", ",".join(SACCT_FIELDS)], capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(SACCT_FIELDS, line.split("|"))) for line in out.splitlines() if line.strip()]


def _held_both_nodes(job: dict) -> bool:
    return job["NNodes"] == "2" and job["NodeList"] == "n[1-2]"


def release_requeued(jobid: str, timeout: float = 120) -> None:
    """After ``scontrol requeue``: SLURM holds the requeued job (Reason BeginTime) for a while;
    let it start now. An update sent while the job still runs has no effect, so this waits until
    the job was restarted (``Restarts`` >= 1) and is held, then releases it."""
    def released() -> bool:
        out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True,
                             timeout=30).stdout
        fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
        if int(fields.get("Restarts", "0")) < 1:
            return False
        if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"jobid={jobid}", "StartTime=now"], capture_output=True, timeout=30)
            return False
        return True

    _wait(released, timeout, f"requeued job {jobid} to be released", interval=0.5)


def _losses(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in ("step", *LOSS_KEYS) if k in row} for row in rows]


def test_ddp_two_nodes_requeued_resumes_and_equals_one_node(cluster_data_server, data_dir, tmp_path):
    variants = {"baseline": {}}
    train = {"num_iterations": 400, "val_loss_every": 200, "log_every": 20, "checkpoint_every": 0}
    res = {"mem_mb": 1500, "runtime": 20}
    two_nodes = _study(tmp_path, cluster_data_server, data_dir, train=train, variants=variants,
                       # one (fake) GPU per node: the {nodes: 2, gpus: 1} shape (--gres=gpu:1 --ntasks=2);
                       # no CUDA here, so the trainer runs on the CPU as the one-node reference does
                       stages={"A": {"seeds": 1, "resources": {**res, "nodes": 2, "gpus": 1}}})
    run_dir = tmp_path / "results" / "tiny" / "stage_A" / "baseline" / "seed_1337"
    proc = _snakemake(tmp_path, two_nodes, str(run_dir / "result.json"))
    try:
        def running_job():
            out = (tmp_path / "snakemake.out").read_text()
            assert proc.poll() is None, f"snakemake ended before the requeue:\n{out[-3000:]}"
            ids = re.findall(r"SLURM run ID: (\S+)", out)
            for job in _sacct_jobs(ids[0]) if ids else []:
                if job["State"] == "RUNNING" and job["NNodes"] == "2":
                    return job["JobIDRaw"]
            return None

        jobid = _wait(running_job, 300, "the two-node training job to run")
        partial = run_dir / "metrics.partial.jsonl"
        _wait(lambda: last_step(partial) >= 40, 300, f"step 40 in {partial}", interval=0.2)
        subprocess.run(["scontrol", "requeue", jobid], check=True, timeout=30)
        release_requeued(jobid)
        output = _finish(proc, tmp_path, timeout=900)
    finally:
        if proc.poll() is None:
            proc.terminate()
    assert proc.returncode == 0, f"snakemake failed after the requeue:\n{output[-4000:]}"
    records = [j for j in _sacct_jobs(_run_id(output)) if j["JobIDRaw"] == jobid]
    assert [j["State"] for j in records] == ["REQUEUED", "COMPLETED"], records
    assert all(_held_both_nodes(j) for j in records), f"the job did not hold both nodes: {records}"
    # The preempted attempt: both workers (one per node) checkpointed and exited 75, and so did the job.
    first = (run_dir / "train.attempt-1.log").read_text()
    assert "worker exit codes {0: 75, 1: 75}; job exit status 75" in first, first[-3000:]
    second = (run_dir / "train.log").read_text()
    resumed = re.search(r"resumed from .*checkpoint at step (\d+)", second)
    assert resumed and int(resumed.group(1)) >= 40, second[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["hostnames"] == ["n1", "n2"], result["hostnames"]
    assert result["slurm_job_id"] == jobid

    # The same world size on one node (torchrun, 2 processes), locally: the same losses.
    one_node = _study(tmp_path, cluster_data_server, data_dir, train=train, variants=variants, results="one_node",
                      stages={"A": {"seeds": 1, "resources": {**res, "nproc_per_node": 2}}})
    ref_dir = tmp_path / "one_node" / "tiny" / "stage_A" / "baseline" / "seed_1337"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLURM_JOB_ID", None)
    local = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), str(ref_dir / "result.json"), "--directory", str(tmp_path),
         "--cores", "2", "--configfile", str(one_node)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert json.loads((ref_dir / "result.json").read_text())["world_size"] == 2
    two, one = _losses(run_dir), _losses(ref_dir)
    assert len(two) >= 20 and any("val_loss" in row for row in two), two
    assert two == one, "losses differ between 2 nodes x 1 process and 1 node x 2 processes:\n" + "\n".join(
        f"{a} | {b}" for a, b in zip(two, one) if a != b)


def test_diloco_and_tensor_parallel_span_both_nodes(cluster_data_server, data_dir, tmp_path):
    res = {"mem_mb": 1500, "runtime": 20, "nodes": 2}
    tp_model = {"block_type": "tp", "tp_size": 2, "tp_mode": "real", "n_embd": 32, "n_head": 4}
    variants = {
        "baseline": {},
        "tp-real": {"model": tp_model},
        "diloco": {"train": {"strategy": {"name": "diloco", "tau": 5, "outer_lr": 0.7, "outer_momentum": 0.9,
                                          "nesterov": True}}},
    }
    stages = {
        "A": {"seeds": 1, "gate": {"rule": "top_k", "k": 1}, "resources": {**res, "nproc_per_node": 1}},
        "B": {"seeds": 1, "resources": {**res, "nproc_per_node": 2}},
    }
    study = _study(tmp_path, cluster_data_server, data_dir, variants=variants, stages=stages,
                   train={"num_iterations": 20, "val_loss_every": 10, "log_every": 5})
    tp_dir = tmp_path / "results" / "tiny" / "stage_A" / "tp-real" / "seed_1337"
    diloco_dir = tmp_path / "results" / "tiny" / "stage_B" / "diloco" / "seed_1337"
    started = time.monotonic()
    proc = _snakemake(tmp_path, study, str(tp_dir / "result.json"), str(diloco_dir / "result.json"))
    output = _finish(proc, tmp_path, timeout=900)
    assert proc.returncode == 0, f"snakemake failed:\n{output[-4000:]}"
    jobs = [j for j in _sacct_jobs(_run_id(output)) if j["NNodes"] == "2"]
    assert len(jobs) == 2 and all(j["State"] == "COMPLETED" and _held_both_nodes(j) for j in jobs), jobs

    tp = json.loads((tp_dir / "result.json").read_text())
    assert tp["tensor_parallel"]["tp_mode"] == "real" and tp["tensor_parallel"]["tp_size"] == 2, tp["tensor_parallel"]
    # world size 2 = one tp group of ranks 0 and 1: one on each node.
    assert tp["world_size"] == 2 and tp["hostnames"] == ["n1", "n2"], tp["hostnames"]
    assert tp["final_val_loss"] is not None
    diloco = json.loads((diloco_dir / "result.json").read_text())
    assert diloco["strategy"] == "diloco" and diloco["world_size"] == 4, (diloco["strategy"], diloco["world_size"])
    assert diloco["hostnames"] == ["n1", "n1", "n2", "n2"], diloco["hostnames"]
    assert diloco["final_val_loss"] is not None
    assert {tp["slurm_job_id"], diloco["slurm_job_id"]} == {j["JobIDRaw"] for j in jobs}
    print(f"tp-real (2 nodes x 1) and diloco (2 nodes x 2) through SLURM in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
