"""``python -m workflow.status`` on real studies, as real processes: a new study (all pending, also
through ``make status`` and ``--watch``), a finished one (its gate reasons and verdict) and one
a real ``snakemake`` is running (the running runs with step / total and val_loss), then the same
study after Snakemake is killed (its orphaned runs still running) and its runs are preempted
(SIGTERM: checkpoint, exit 75).

About a minute on a 2-core machine: the finished study is 8 runs of 4 steps; the live study's
runs are long and are stopped once status has seen them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow.analysis.status_scheduler import SLURM_QUEUED, SLURM_RUNNING, parse_sacct

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.timeout(300)

# Two variants, stages A (top_k 1) -> B, two seeds: the smallest study with a gate and a verdict.
MINI = {
    "study": "mini",
    "dataset": "shakespeare_char",
    "base_seed": 1337,
    "baseline": "baseline",
    "model": {"preset": "nanogpt-small"},
    "train": {"batch_size": 4, "lr": 2.0e-3, "warmup_iters": 1, "val_loss_every": 2, "log_every": 1, "val_tokens": 512},
    "variants": {"baseline": {}, "lr-6e-3": {"train": {"lr": 6.0e-3}}},
    "stages": {
        "A": {"seeds": 2, "train": {"num_iterations": 4}, "gate": {"rule": "top_k", "k": 1}},
        "B": {"seeds": 2, "train": {"num_iterations": 4}},
    },
}


def write_study(path: Path, name: str, steps: int) -> Path:
    study = json.loads(json.dumps(MINI))
    study["study"] = name
    for stage in study["stages"].values():
        stage["train"]["num_iterations"] = steps
    path.write_text(yaml.safe_dump(study))
    return path


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def status(workdir: Path, study: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "workflow.status", "--configfile", str(study), "--directory", str(workdir),
                           *args], check=False, capture_output=True, text=True, cwd=REPO, env=env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def status_json(workdir: Path, study: Path) -> dict:
    return json.loads(status(workdir, study, "--json").stdout)


def snakemake_cmd(workdir: Path, study: Path, data_dir: Path, mirror: str, *targets: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(study), "--config", f"mirror={mirror}", f"data_dir={data_dir}", "--cores", "2", *targets]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the module's studies (tiny Shakespeare is downloaded and tokenized once)."""
    return tmp_path_factory.mktemp("status_data")


def test_new_study_is_all_pending(tmp_path):
    proc = status(tmp_path, TINY)
    out = proc.stdout
    assert "study tiny" in out and "snakemake: not running" in out
    assert "0 done  0 running  8 pending  0 failed  0 preempted" in out
    assert "after gate A" in out and "after gate B" in out
    data = status_json(tmp_path, TINY)
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["A"]["counts"] == {"done": 0, "running": 0, "pending": 8, "failed": 0, "preempted": 0}
    assert stages["A"]["variants"] == ["baseline", "lr-6e-3", "lr-1e-4", "diverge"]
    assert stages["B"]["variants"] is None and stages["B"]["waiting_for"] == "gate A"
    assert stages["B"]["most_runs"] == 2 * 2  # baseline + top 1, two seeds
    assert stages["C"]["waiting_for"] == "gate B" and stages["C"]["most_runs"] == 2 * 3
    assert data["gates"] == [] and data["verdict"] is None and data["slurm"] is None
    assert data["snakemake"] == []
    assert {r["state"] for r in data["runs"]} == {"pending"} and len(data["runs"]) == 8

    # --config values as snakemake takes them (set= overrides apply as in the Snakefile)
    data = json.loads(status(tmp_path, TINY, "--json", "--config", "set=stages.A.seeds=3", "results_dir=elsewhere").stdout)
    assert data["results"] == str(tmp_path / "elsewhere" / "tiny")
    assert data["stages"][0]["runs"] == 4 * 3

    # make status STUDY=... (the venv is this interpreter's; -o: never reinstall it)
    venv = Path(sys.prefix)
    if (venv / ".installed").exists():
        make = subprocess.run(["make", "-s", "status", f"VENV={venv}", "-o", f"{venv}/.installed", f"STUDY={TINY}",
                               f"ARGS=--directory {tmp_path}"], check=False, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert make.returncode == 0, make.stderr
        assert "8 pending" in make.stdout and "after gate A" in make.stdout

    # --watch refreshes until Ctrl-C, then exits 0
    watch = subprocess.Popen([sys.executable, "-m", "workflow.status", "--configfile", str(TINY), "--directory",
                              str(tmp_path), "--watch", "--interval", "0.2"], cwd=REPO, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "8 pending" in out


def test_finished_study_shows_gates_and_verdict(tmp_path, shared_data_server, data_dir):
    study = write_study(tmp_path / "mini.yaml", "mini", steps=4)
    workdir = tmp_path / "w"
    proc = subprocess.run(snakemake_cmd(workdir, study, data_dir, shared_data_server, "verdict"),
                          check=False, capture_output=True, text=True, env=env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = workdir / "results" / "mini"
    data = status_json(workdir, study)
    assert data["totals"] == {"done": 8, "running": 0, "pending": 0, "failed": 0, "preempted": 0}
    gate = json.loads((results / "gates" / "gate_A.json").read_text())
    assert [s["variants"] for s in data["stages"]] == [["baseline", "lr-6e-3"], ["baseline", *gate["advanced"]]]
    [entry] = data["gates"]
    rows = entry["decisions"][0]["rows"]
    assert [(r["variant"], r["reason"]) for r in rows] == [(r["variant"], r["reason"]) for r in gate["ranking"]]
    verdict = json.loads((results / "verdict.json").read_text())
    assert data["verdict"]["winners"] == verdict["winners"]
    # the verdict's "(winners: <rule>)" reads "(winners rule: <rule>)", as the verdict line says it
    rule = verdict["winners_rule"]
    assert [r["verdict"] for r in data["verdict"]["rows"]] == [
        e["verdict"].replace(f"(winners: {rule})", f"(winners rule: {rule})") for e in verdict["results"]]
    done = [r for r in data["runs"] if r["stage"] == "B"]
    for run in done:
        result = json.loads((Path(run["path"]) / "result.json").read_text())
        assert (run["step"], run["total"], run["val_loss"]) == (4, 4, result["final_val_loss"])

    out = status(workdir, study).stdout
    assert "8 done  0 running  0 pending  0 failed  0 preempted" in out
    assert f"gate A (top_k k=1): advanced {', '.join(gate['advanced'])}" in out
    assert gate["ranking"][1]["reason"] in out
    assert f"verdict: winners: {', '.join(verdict['winners']) or 'none'} (winners rule: {rule})" in out
    assert f"(winners: {rule})" not in out and all(line == line.rstrip() for line in out.splitlines())  # piped: no padding
    assert verdict["results"][1]["verdict"][:60] in out


def _first_val_row(results: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for path in results.glob("stage_A/*/seed_*/metrics.partial.jsonl"):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
            if any(r["step"] > 0 and r.get("val_loss") is not None for r in rows):
                return
        time.sleep(0.5)
    raise AssertionError(f"no metrics row with a val_loss under {results} within {timeout_s} s")


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes {alive} still alive after {timeout_s} s")


def test_status_while_snakemake_runs_then_after_a_crash(tmp_path, shared_data_server, data_dir):
    study = write_study(tmp_path / "live.yaml", "live", steps=100000)  # never finishes in the test
    workdir = tmp_path / "w"
    results = workdir / "results" / "live"
    log = tmp_path / "snakemake.log"
    with open(log, "w") as handle:  # the child keeps its own descriptor
        smk = subprocess.Popen(snakemake_cmd(workdir, study, data_dir, shared_data_server, "verdict"),
                               stdout=handle, stderr=subprocess.STDOUT, env=env())
    pids: list[int] = []
    try:
        try:
            _first_val_row(results, timeout_s=180)
        except AssertionError as err:
            raise AssertionError(f"{err}; snakemake's log:\n{log.read_text()[-4000:]}") from None
        data = status_json(workdir, study)
        assert [p["pid"] for p in data["snakemake"]] and smk.pid in [p["pid"] for p in data["snakemake"]]
        running = [r for r in data["runs"] if r["state"] == "running"]
        assert 1 <= len(running) <= 2 and data["totals"]["pending"] == 4 - len(running)
        assert data["stages"][1]["variants"] is None  # stage B: after gate A
        seen = [r for r in running if r["step"]]
        assert seen
        for run in seen:
            assert run["total"] == 100000 and run["pid"]
            assert isinstance(run["val_loss"], float) and run["tokens_per_s"] > 0 and run["eta_s"] > 0
            rows = [json.loads(line) for line in (Path(run["path"]) / "metrics.partial.jsonl").read_text().splitlines()
                    if line.strip()]
            assert run["step"] <= rows[-1]["step"]
        out = status(workdir, study).stdout
        assert f"snakemake: running (pid {smk.pid})" in out
        assert f"{seen[0]['name']} " in out and "/100000" in out

        # A crash: Snakemake killed; its jobs live on (orphans) and still count as running.
        smk.kill()
        smk.wait(timeout=30)
        data = status_json(workdir, study)
        assert data["snakemake"] == []
        running = [r for r in data["runs"] if r["state"] == "running"]
        assert running and all(r["pid"] for r in running)
        pids = [r["pid"] for r in running]
        # ... then preempted: SIGTERM to each job (what SLURM sends), which checkpoints and exits 75.
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        _wait_gone(pids, timeout_s=120)
        data = status_json(workdir, study)
        preempted = [r for r in data["runs"] if r["state"] == "preempted"]
        assert sorted(r["name"] for r in preempted) == sorted(r["name"] for r in running)
        assert data["totals"]["running"] == 0
        for run in preempted:
            if run["checkpoint_step"] is not None:
                assert f"preempted at step {run['checkpoint_step']}" in run["detail"]
        out = status(workdir, study).stdout
        assert "snakemake: not running" in out and "failed / preempted" in out
    finally:
        if smk.poll() is None:
            smk.kill()
            smk.wait(timeout=30)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sacct_gives_a_runs_job_state_and_node(tmp_path):
    """A run whose log names a SLURM job (the trainer's ``SLURM job <id> on <node>`` line) gets that
    job's state and node from the real ``sacct`` of this machine's cluster (any recent job of it)."""
    if shutil.which("sacct") is None:
        pytest.skip("no sacct: no SLURM here")
    def recent_jobs():
        listing = subprocess.run(["sacct", "-X", "-n", "-P", "--format=JobID,State,NodeList,Elapsed", "-S", "now-7days"],
                                 check=False, capture_output=True, text=True, timeout=30)
        jobs = {k: v for k, v in parse_sacct(listing.stdout).items() if v["node"] and "None" not in v["node"]}
        return listing, jobs

    listing, jobs = recent_jobs()
    if listing.returncode == 0 and not jobs and shutil.which("sbatch"):
        # a fresh cluster (CI's): submit one short job of our own, and wait until sacct knows its node
        submitted = subprocess.run(["sbatch", "--parsable", "--job-name", "stagerun-status-test", "--wrap", "sleep 2"],
                                   check=False, capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 120
        while submitted.returncode == 0 and not jobs and time.monotonic() < deadline:
            time.sleep(2)
            listing, jobs = recent_jobs()
    if listing.returncode != 0 or not jobs:
        if os.environ.get("STAGERUN_REQUIRE_SLURM"):
            pytest.fail(f"sacct lists no job with a node ({listing.stderr.strip()[:200]})")
        pytest.skip(f"sacct lists no job with a node ({listing.stderr.strip()[:200]})")
    job_id, job = list(jobs.items())[-1]
    run_dir = tmp_path / "results" / "tiny" / "stage_A" / "baseline" / "seed_1337"
    run_dir.mkdir(parents=True)
    log = run_dir / "train.attempt-1.log"
    log.write_text(f"launch: this attempt's log is {log}\n"
                   "run tiny/A/baseline seed 1337: 104,832 parameters, num_iterations 8\n"
                   f"SLURM job {job_id} on {job['node']}\nstep 0/8 val_loss 4.1857\n")
    hour_ago = time.time() - 3600
    os.utime(log, (hour_ago, hour_ago))
    data = status_json(tmp_path, TINY)
    assert data["slurm"] == {"sacct": True, "jobs": 1}
    [run] = [r for r in data["runs"] if r["attempts"]]
    assert (run["slurm_job"], run["node"], run["total"]) == (job_id, job["node"], 8)
    again = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "--format=JobID,State,NodeList,Elapsed"],
                           check=False, capture_output=True, text=True, timeout=30)
    state = parse_sacct(again.stdout)[job_id]["state"]
    assert run["slurm_state"] == state
    if state in SLURM_RUNNING:
        assert run["state"] == "running"
        assert job_id in status(tmp_path, TINY).stdout
    elif state in SLURM_QUEUED:
        assert run["state"] == "pending"
    else:
        assert run["state"] in ("failed", "preempted") and f"SLURM job {job_id}" in run["detail"]
        assert f"SLURM job {job_id}" in status(tmp_path, TINY).stdout
