"""The tiny study on a real SLURM cluster through ``snakemake --profile profiles/slurm-ci``.

Needs the two-node cluster of ``.ci/slurm/setup.sh`` (nodes n1, n2 in their own network
namespaces; partitions ``cpu`` and ``gpu``, fake GPUs, slurmdbd so ``sacct`` works); CI starts
it before the tests. Without it every test here is skipped with the reason. Each run uses its
own folder (results, data, .snakemake, SLURM logs) and downloads tiny-Shakespeare from a server
of the shared data on the controller's address (:func:`cluster_data_server`: the nodes' own
loopback is not this machine's).

What is checked, with ``sacct`` (the accounting database), not with Snakemake's word alone:
- every training job went through sbatch into the ``gpu`` partition with ``gres/gpu``, the
  data jobs into ``cpu``, all COMPLETED, and Snakemake reported each of them finished;
- a training job that fails is reported failed, retried once (profile ``retries: 1``), and
  both attempts are FAILED in SLURM;
- ``scontrol requeue`` of a running training job (preemption): the trainer checkpoints on
  SIGTERM, SLURM requeues the job, the second run resumes from the checkpoint and Snakemake
  finishes with success.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm-ci"


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None when the CI cluster is up."""
    for tool in ("sinfo", "sbatch", "sacct", "scontrol"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found: no SLURM here (CI starts one with .ci/slurm/setup.sh)"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-p", "gpu", "-o", "%T"], capture_output=True, text=True, timeout=20)
        acct = subprocess.run(["sacct", "-n", "-X", "--starttime", "now-1hours"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired as exc:
        return f"SLURM does not answer ({exc.cmd[0]} timed out): cluster not up (.ci/slurm/setup.sh)"
    if nodes.returncode != 0:
        return f"sinfo fails ({nodes.stderr.strip()}): cluster not up (.ci/slurm/setup.sh)"
    if not set(nodes.stdout.split()) & {"idle", "mixed", "allocated"}:
        return f"no usable node in partition 'gpu' (states: {nodes.stdout.split()}); run .ci/slurm/setup.sh"
    if acct.returncode != 0:
        return f"sacct fails ({acct.stderr.strip()}): slurmdbd not running (.ci/slurm/setup.sh)"
    return None


_PROBLEM = _cluster_problem() if SNAKEMAKE.exists() else "snakemake not installed next to this python"
if _PROBLEM and os.environ.get("STAGERUN_REQUIRE_SLURM") == "1":
    # CI started the cluster (.ci/run): a cluster that is not usable is a failure, not a skip.
    raise RuntimeError(f"STAGERUN_REQUIRE_SLURM=1 but the SLURM cluster is not usable: {_PROBLEM}")
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


def _study(tmp_path: Path, mirror: str, *, train_overrides: dict | None = None, variants: dict | None = None) -> Path:
    """tests/configs/tiny.yaml with one fake GPU per training job, folders in tmp_path."""
    study = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    # Two variants and two seeds per stage keep the SLURM run short (each job starts Snakemake
    # and torch inside the allocation); the gates still decide on real results.
    study["variants"] = {name: study["variants"][name] for name in ("baseline", "lr-6e-3")}
    study["stages"]["C"]["seeds"] = 2
    study.update(results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data"), mirror=mirror)
    for stage in study["stages"].values():
        stage["resources"] = {**stage.get("resources", {}), "gpus": 1, "mem_mb": 1500, "runtime": 20}
        if train_overrides:
            stage["train"] = {**stage.get("train", {}), **train_overrides}
    if variants:
        study["variants"] = {**study["variants"], **copy.deepcopy(variants)}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _snakemake(tmp_path: Path, study: Path, *targets: str) -> subprocess.Popen:
    """Start Snakemake with the CI profile in tmp_path (its own .snakemake and SLURM logs)."""
    # Jobs get this environment (sbatch --export=ALL): the venv's bin (torchrun) on PATH.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(SNAKEMAKE.parent), os.environ.get("PATH", "")])}
    env.pop("SLURM_JOB_ID", None)
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(PROFILE), "--configfile", str(study), "--slurm-logdir", str(tmp_path / "slurm_logs"),
           *targets]
    log = open(tmp_path / "snakemake.out", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)


def _finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 1500) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=60)
        raise AssertionError(f"snakemake did not finish in {timeout} s; output: {tmp_path / 'snakemake.out'}")
    return (tmp_path / "snakemake.out").read_text()


def _run_id(output: str) -> str:
    found = re.findall(r"SLURM run ID: (\S+)", output)
    assert found, f"the SLURM executor did not start (no 'SLURM run ID' in the output):\n{output[-3000:]}"
    return found[0]


def _sacct(run_id: str) -> list[dict]:
    """Every SLURM job of one Snakemake run (the plugin names them by the run ID), requeues included."""
    fields = ["JobIDRaw", "Partition", "State", "AllocTRES", "Comment", "ExitCode"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--duplicates", "--starttime", "now-1days", "--name", run_id,
         "-o", ",".join(fields)], capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def _rule(job: dict) -> str:
    """Rule name from the job comment ``rule_<rule>[_wildcards_<...>]`` written by the plugin."""
    return re.sub(r"_wildcards_.*$", "", job["Comment"]).removeprefix("rule_")


def _status_captures(proc: subprocess.Popen, study: Path, directory: Path, every_s: float = 4.0) -> list[dict]:
    """``workflow.status`` (library: the same dict ``--json`` prints) every ``every_s`` seconds while
    Snakemake runs."""
    from workflow.analysis.status import load_study, study_status

    config = load_study([study], {}, directory)
    captures = []
    while proc.poll() is None:
        captures.append(study_status(config, directory))
        time.sleep(every_s)
    return captures


def test_tiny_study_runs_through_slurm(cluster_data_server, tmp_path):
    study = _study(tmp_path, cluster_data_server)
    started = time.monotonic()
    proc = _snakemake(tmp_path, study)
    captures = _status_captures(proc, study, tmp_path)
    output = _finish(proc, tmp_path)
    elapsed = time.monotonic() - started
    assert "Nothing to be done" not in output
    jobs = _sacct(_run_id(output))
    tail = output[-4000:]
    assert proc.returncode == 0, f"snakemake failed:\n{tail}"

    train = [j for j in jobs if _rule(j) == "train"]
    finished_train = re.findall(r"Finished jobid: \d+ \(Rule: train\)", output)
    assert train, f"no training job reached SLURM; sacct: {jobs}\n{tail}"
    assert len(train) == len(finished_train), (
        f"{len(train)} training jobs in sacct, Snakemake reported {len(finished_train)} finished")
    for job in train:
        assert job["Partition"] == "gpu", f"training job not in the gpu partition: {job}"
        assert "gres/gpu=1" in job["AllocTRES"], f"training job without a GPU: {job}"
        assert job["State"] == "COMPLETED", f"training job did not complete: {job}"
    data = [j for j in jobs if _rule(j) in ("download_checked", "tokenize")]
    assert data, f"the data rules did not go through SLURM: {jobs}"
    assert all(j["Partition"] == "cpu" and "gres/gpu" not in j["AllocTRES"] for j in data), data
    assert all(j["State"] == "COMPLETED" for j in jobs), [j for j in jobs if j["State"] != "COMPLETED"]
    results = sorted((tmp_path / "results").glob("*/stage_*/*/seed_*/result.json"))
    assert len(results) == len(train), f"{len(results)} result.json files for {len(train)} training jobs"
    # From a run's results folder to its SLURM job and log.
    train_ids = {j["JobIDRaw"] for j in train}
    for path in results:
        result = json.loads(path.read_text())
        assert result["slurm_job_id"] in train_ids, (path, result["slurm_job_id"], train_ids)
        slurm_log = (tmp_path / "slurm_logs" / "rule_train" / f"{result['stage']}_{result['variant']}_{result['seed']}"
                     / f"{result['slurm_job_id']}.log")
        assert slurm_log.exists(), f"no SLURM log {slurm_log} for {path}"
    assert list((tmp_path / "results").glob("*/verdict.json")), "no verdict.json"
    # A cluster executor starts no warm server: each trainer runs inside its own SLURM job.
    assert not list((tmp_path / "results").glob("*/logs/warm_server.log"))
    for log in (tmp_path / "results").glob("*/stage_*/*/seed_*/train.log"):
        assert "warm start" not in log.read_text(), log
    print(f"tiny study through SLURM: {len(jobs)} jobs ({len(train)} training) in {elapsed:.0f} s")

    # Status from submission: every queued or running run has its SLURM job (from squeue, by the
    # job comment) in every capture, also before its trainer wrote a line; a node only when assigned.
    live = [r for c in captures for r in c["runs"] if r["state"] == "running" or (r["state"] == "pending" and r["slurm_job"])]
    assert live, f"no capture saw a queued or running run ({len(captures)} captures)"
    missing = [(r["name"], r["state"], r["detail"]) for r in live if not r["slurm_job"]]
    assert not missing, f"queued/running runs without a job id: {missing}"
    assert all(r["slurm_job"] in train_ids for r in live), [r["slurm_job"] for r in live]
    assert all(r["node"] in ("n1", "n2") for r in live if r["slurm_state"] == "RUNNING"), live
    assert all(r["node"] is None for r in live if r["slurm_state"] == "PENDING"), live
    assert any(r["attempts"] == 0 for r in live), "no capture saw a job before its run's log existed"
    from workflow.analysis.status_view import plain_text, render

    shown = next(c for c in captures if any(r["slurm_job"] for r in c["runs"] if r["state"] in ("running", "pending")))
    print(plain_text(render(shown)))


def test_failing_training_job_is_reported_and_retried(cluster_data_server, tmp_path):
    # device_batch_size 3 does not divide batch_size 8: the trainer raises at start (a real failure).
    study = _study(tmp_path, cluster_data_server, variants={"broken": {"train": {"device_batch_size": 3}}})
    target = str(tmp_path / "results" / "tiny" / "stage_A" / "broken" / "seed_1337" / "result.json")
    proc = _snakemake(tmp_path, study, target)
    output = _finish(proc, tmp_path)
    assert proc.returncode != 0, f"snakemake succeeded with a failing training job:\n{output[-3000:]}"
    assert "Error in rule train" in output and "Trying to restart job" in output, output[-4000:]
    train = [j for j in _sacct(_run_id(output)) if _rule(j) == "train"]
    assert [j["State"] for j in train] == ["FAILED", "FAILED"], f"expected 2 failed attempts (retries: 1): {train}"
    assert all(j["Partition"] == "gpu" and "broken" in j["Comment"] for j in train), train
    assert not Path(target).exists(), "a failed job left its output"


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_requeued_training_job_resumes_from_checkpoint(cluster_data_server, tmp_path):
    # Long enough to be requeued while training; checkpoints come from the SIGTERM handler.
    study = _study(tmp_path, cluster_data_server, train_overrides={"num_iterations": 3000, "val_loss_every": 0})
    run_dir = tmp_path / "results" / "tiny" / "stage_A" / "baseline" / "seed_1337"
    proc = _snakemake(tmp_path, study, str(run_dir / "result.json"))
    try:
        def running_train_job():
            out = (tmp_path / "snakemake.out").read_text()
            assert proc.poll() is None, f"snakemake ended before the requeue:\n{out[-3000:]}"
            ids = re.findall(r"SLURM run ID: (\S+)", out)
            for job in _sacct(ids[0]) if ids else []:
                # The job comment reaches sacct only when the job ends: while it runs, the
                # training job is the one in the gpu partition (data jobs go to cpu).
                if job["Partition"] == "gpu" and job["State"] == "RUNNING":
                    return job["JobIDRaw"]
            return None

        jobid = _wait(running_train_job, 300, "the training job to run")
        log = run_dir / "train.log"
        # Requeue once the trainer is past its first steps (its log names them).
        _wait(lambda: log.exists() and re.search(r"step\s*[:=]?\s*[1-9]", log.read_text()), 300,
              f"training steps in {log}")
        subprocess.run(["scontrol", "requeue", jobid], check=True, timeout=30)
        # SLURM holds a requeued job for a while (BeginTime); let it start again now.
        _wait(lambda: subprocess.run(["scontrol", "update", f"jobid={jobid}", "StartTime=now"],
                                     capture_output=True, timeout=30).returncode == 0, 60, "scontrol update")
        output = _finish(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
    assert proc.returncode == 0, f"snakemake failed after the requeue:\n{output[-4000:]}"
    states = [j["State"] for j in _sacct(_run_id(output)) if j["JobIDRaw"] == jobid]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", f"job {jobid}: {states}"
    text = log.read_text()
    resumed = re.search(r"resumed from .*checkpoint at step (\d+)", text)
    assert resumed and int(resumed.group(1)) > 0, f"the requeued run did not resume from a checkpoint:\n{text[-2000:]}"
    assert (run_dir / "result.json").exists()


# --------------------------------------------------------------------------- job groups
# stages.<S>.resources.group_runs: N runs per cluster job (Snakemake job groups), measured by
# bench/bench_slurm_groups.py, whose functions these tests run.

def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    import bench_slurm_groups

    return bench_slurm_groups


def test_grouped_screen_submits_fewer_jobs_with_identical_results(cluster_data_server, tmp_path):
    bench = _bench()
    # bench/bench_slurm_groups.py runs 40 (5 vs 40 submissions, docs/slurm.md); 16 keeps CI short.
    numbers = bench.screen(tmp_path, cluster_data_server, runs=16, group_runs=8)
    print(f"16-run screen through SLURM: {json.dumps(numbers)}")
    ungrouped, grouped = numbers["ungrouped"], numbers["grouped"]
    assert ungrouped["runs_done"] == grouped["runs_done"] == 16, numbers
    assert ungrouped["sbatch"] == 16, f"one sbatch per run expected without grouping: {numbers}"
    assert grouped["sbatch"] == 2, f"16 runs in groups of 8 should be 2 sbatch submissions: {numbers}"
    assert ungrouped["states"] == grouped["states"] == ["COMPLETED"], numbers
    assert numbers["identical_results"], "grouped and ungrouped runs differ in their losses"


def _stash_invocation(run_dir: Path) -> str | None:
    record = run_dir / ".finished" / "record.json"
    return json.loads(record.read_text())["invocation"] if record.exists() else None


@pytest.mark.parametrize("how", ["requeue", "crash"])
def test_interrupted_group_job_loses_only_its_unfinished_runs(cluster_data_server, tmp_path, how):
    """One group job of 2 runs, interrupted once one run has finished and the other trains.
    requeue (preemption): the same job runs the group again; the finished run's outputs are
    restored, not trained again, the interrupted run resumes from its checkpoint. crash (the
    training run is SIGKILLed, the group job fails; ``--retries 0``: Snakemake gives up and
    deletes the outputs of the whole group): ``onerror`` gives the finished run its outputs back,
    and the next invocation plans only the unfinished run."""
    bench = _bench()
    study_path = bench.screen_study(tmp_path / "study.yaml", runs=2, group_runs=3, results_dir=tmp_path / "results",
                                    data_dir=tmp_path / "data", mirror=cluster_data_server,
                                    extra_variants={"lr-x": {"train": {"lr": 3.0e-3}}})
    study = yaml.safe_load(study_path.read_text())
    study["stages"]["A"]["seeds"] = 1  # 2 runs (baseline, lr-x): one group job
    study["train"].update(num_iterations=1500, val_loss_every=0, log_every=50)
    study_path.write_text(yaml.safe_dump(study, sort_keys=False))
    targets = bench.run_results(tmp_path / "results", study_path)
    proc = _snakemake(tmp_path, study_path, *map(str, targets), *(["--retries", "0"] if how == "crash" else []))
    try:
        def a_run_finished_and_another_trains():
            assert proc.poll() is None, (tmp_path / "snakemake.out").read_text()[-3000:]
            done = [t.parent for t in targets if _stash_invocation(t.parent)]
            busy = [t.parent for t in targets if t.parent not in done
                    and re.search(r"step\s*[:=]?\s*[1-9]", _text(t.parent / "train.log"))]
            return (done[0], busy[0]) if done and busy else None

        done, busy = _wait(a_run_finished_and_another_trains, 600, "one finished run and one training", 0.3)
        out = (tmp_path / "snakemake.out").read_text()
        jobid = next(j["JobIDRaw"] for j in _sacct(_run_id(out)) if j["State"] == "RUNNING")
        if how == "requeue":
            subprocess.run(["scontrol", "requeue", jobid], check=True, timeout=30)
            sys.path.insert(0, str(Path(__file__).parent))
            from test_slurm_multinode import release_requeued

            release_requeued(jobid)
        else:  # the training process of the busy run dies (as if OOM-killed): the group job fails
            killed = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_launcher_of(pid, busy)]
            assert killed, f"no launcher process of {busy}"
            for pid in killed:
                os.kill(int(pid), signal.SIGKILL)
        output = _finish(proc, tmp_path, timeout=900)
    finally:
        if proc.poll() is None:
            proc.terminate()
    jobs = _sacct(_run_id(output))
    train = [j for j in jobs if "train" in j["Comment"] or j["JobIDRaw"] == jobid]
    if how == "requeue":
        assert proc.returncode == 0, f"snakemake failed after the requeue:\n{output[-4000:]}"
        assert [j["State"] for j in train] == ["REQUEUED", "COMPLETED"] and {j["JobIDRaw"] for j in train} == {jobid}, jobs
        assert all(t.exists() for t in targets)
        assert "not trained again" in (done / "train.log").read_text(), (done / "train.log").read_text()[-2000:]
        assert sum("finished:" in p.read_text() for p in done.glob("train.attempt-*.log")) == 1
        resumed = re.search(r"resumed from .*checkpoint at step (\d+)", (busy / "train.log").read_text())
        assert resumed and int(resumed.group(1)) > 0, (busy / "train.log").read_text()[-2000:]
        return
    assert proc.returncode != 0, output[-3000:]
    assert [j["State"] for j in train] == ["FAILED"], jobs
    assert "keep their outputs" in output, output[-3000:]
    assert (done / "result.json").exists() and (done / "metrics.jsonl").exists()
    assert not (busy / "result.json").exists()
    dry = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), *map(str, targets), "--directory", str(tmp_path),
                          "-n", "--cores", "1", "--configfile", str(study_path)],
                         capture_output=True, text=True, env=bench.snakemake_env(), cwd=tmp_path, timeout=300)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    planned = set(re.findall(r"log: (\S+)/train\.log", dry.stdout + dry.stderr))
    assert planned == {str(t.parent) for t in targets if t.parent != done}, (planned, done)


def _is_launcher_of(pid: str, run_dir: Path) -> bool:
    """Process ``pid`` is ``python -m workflow.launch`` of the run in ``run_dir`` (started by this test)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"workflow.launch" in argv and str(run_dir).encode() in argv


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------- resource shapes
# Every nodes x GPUs-per-node shape, with CPUs and memory, as the executor plugin writes its sbatch
# line (its own get_submit_command / set_gres_string on the resources workflow.study.resources
# gives), checked by SLURM itself with `sbatch --test-only` in the `shapes` partition (the CI nodes
# declare 8 CPUs and 4 fake GPUs each there).
class _Resources(dict):
    __getattr__ = dict.__getitem__


def _sbatch_line(resources: dict, threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = type("Job", (), {})()
    job.resources = _Resources({k: v for k, v in resources.items() if v is not None})
    job.threads = threads
    params = {"run_uuid": "stagerun-shapes", "slurm_logfile": "/dev/null", "comment_str": "rule_train",
              "account": "-A stagerun", "partition": "-p shapes", "workdir": str(REPO)}
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
def test_every_resource_shape_submits(nodes, gpus):
    import shlex

    from workflow.study.resources import slurm_resources, stage_resources

    study = {"stages": {"A": {"resources": {"nodes": nodes, "gpus": gpus, "cpus_per_proc": 2, "mem_mb": 1500,
                                            "runtime": 30, "slurm_partition": "shapes"}}}}
    res = stage_resources(study, "A")
    line = _sbatch_line(slurm_resources(res), threads=res["nproc_per_node"] * res["cpus_per_proc"])
    args = shlex.split(line.replace("--parsable", "--test-only")) + ["--wrap", "true"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "to start at" in out.stderr, f"{line}\n{out.stderr}"
    assert f"--nodes={nodes}" in line and "--mem 1500" in line
    if gpus:
        assert (f"--gres=gpu:{gpus}" if nodes > 1 else f"--gpus={gpus}") in line, line
    assert "--ntasks-per-gpu" not in line and "--gpus-per-task" not in line, line


# --------------------------------------------------------------------------- before any submission
def test_profile_account_and_partition_are_checked_before_any_submission(cluster_data_server, tmp_path):
    """A profile with an account the user does not have and a partition the cluster lacks stops
    in seconds with both named (rules/common.smk's onstart; workflow.jobs.slurm_cluster), and
    nothing reaches sbatch."""
    profile = tmp_path / "profile"
    profile.mkdir()
    settings = yaml.safe_load((PROFILE / "config.yaml").read_text())
    settings["default-resources"]["slurm_account"] = "myaccount"
    settings["set-resources"]["train"]["slurm_partition"] = "nosuch"
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    study = _study(tmp_path, cluster_data_server)
    started = time.monotonic()
    out = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--profile", str(profile),
         "--configfile", str(study), "--slurm-logdir", str(tmp_path / "slurm_logs")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    seconds = time.monotonic() - started
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "the SLURM profile does not fit this cluster (nothing was submitted)" in text, text[-3000:]
    assert "slurm_account 'myaccount' (the profile's default-resources) is not an account of user" in text
    assert "'stagerun'" in text.split("this user's accounts:")[1].splitlines()[0]
    assert "slurm_partition 'nosuch' (the profile's set-resources: train: slurm_partition)" in text
    assert "has been submitted with SLURM jobid" not in text
    assert seconds < 60, f"the check took {seconds:.0f} s"


def test_group_job_time_is_cut_to_the_partition_limit(tmp_path):
    """4 runs x 60 min in the `shapes` partition (MaxTime 2 hours): each run asks for 30 min, and
    the plan says so (a dry run: sinfo is asked, nothing is submitted)."""
    study = {"study": "cut", "dataset": "shakespeare_char", "base_seed": 1337, "baseline": "baseline",
             "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
             "model": {"preset": "nanogpt-small"}, "variants": {"baseline": {}, "lr": {"train": {"lr": 1.0e-3}}},
             "stages": {"A": {"seeds": 2, "resources": {"group_runs": 4, "runtime": 60, "slurm_partition": "shapes"}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = subprocess.run(
        [str(SNAKEMAKE), "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--profile",
         str(PROFILE), "--configfile", str(path), "--set-resources", "train:slurm_partition='shapes'",
         "--config", "mirror=../shared/data", "--", "stage_A"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert ("stagerun plan: stage A, partition shapes: 4 runs x 60 min = 240 min is past the partition's limit "
            "of 120 min: each group job asks for 120 min (30 min per run") in text, text[-3000:]
    assert text.count("runtime=30, nproc_per_node=1") == 4, "each of the 4 grouped runs asks for 30 min"
