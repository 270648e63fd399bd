"""Warm start (workflow/warm.py) with real processes: a real server that imports torch, real
launcher clients (one process, and torchrun with 2 gloo workers), real signals.

Claims checked: warm and fresh processes give identical losses for every strategy with state
of its own and for real tensor parallelism (a device mesh over 4 gloo workers); a SIGTERM to a warm job checkpoints (exit 75) and the rerun ends exactly where an
uninterrupted fresh run ends; a job killed with SIGKILL leaves no trainer behind; the server
refuses a job whose import-time environment differs, and that job runs fresh with the same
result; the server goes when Snakemake (its parent) is gone. ``test_pipeline.py`` checks that a
Snakemake run starts its trainers warm and stops the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from runs import last_step, rows_without_timings  # tests/runs.py

from workflow.jobs import warm_client as warm
from workflow.jobs.fingerprint import fingerprint, fingerprint_mismatch
from workflow.jobs.launcher import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = {
    "ddp": {"name": "ddp"},
    "diloco": {"name": "diloco", "tau": 7, "outer_lr": 0.7, "outer_momentum": 0.9},
    "gossip": {"name": "gossip", "topology": "ring", "algorithm": "demuon", "msgn": 1},
}
#: real tensor parallelism: 4 gloo workers = 2 data-parallel x tp_size 2, all three block types
TP_REAL = {"n_layer": 4, "block_pattern": ["tp", "spd", "parallel", "spd"], "tp_size": 2, "tp_mode": "real",
           "dropout": 0.0}
CASES = [("ddp", 1), ("diloco", 2), ("gossip", 2), ("tp-real", 4)]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real warm server for this module (not exported: each job gets its variables explicitly)."""
    handle = warm.start_server(tmp_path_factory.mktemp("warm") / "server.log", export=False)
    handle.wait_ready()
    yield handle
    assert handle.stop() == 0, handle.log.read_text()[-3000:]
    assert not Path(handle.socket_dir).exists()


def run_cfg(num_iterations: int, strategy: dict, model: dict | None = None, **train) -> dict:
    return {"study": "w", "stage": "A", "variant": "v", "seed": 1337, "run_id": 0, "dataset": "shakespeare_char",
            "model": {"preset": "nanogpt-small", "n_layer": 2, "dropout": 0.1, **(model or {})},
            "train": {"batch_size": 8, "num_iterations": num_iterations, "optimizer": "muon", "lr": 3e-3,
                      "warmup_iters": 3, "val_loss_every": 10, "log_every": 5, "val_tokens": 512,
                      "device": "cpu", "strategy": strategy, **train}}


def job(cfg: dict, out: Path, meta: Path, nproc: int) -> list[str]:
    """The training job's command, as rules/train.smk runs it."""
    return [sys.executable, "-m", "workflow.launch", "--nproc-per-node", str(nproc), "--log", str(out / "train.log"),
            "--run-config", json.dumps(cfg), "--out-dir", str(out), "--meta", str(meta), "--threads", "1"]


def job_env(server: warm.ServerHandle | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (warm.SOCKET_ENV, warm.PID_ENV)}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(server.environ if server else {}), **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run_job(cfg: dict, out: Path, meta: Path, nproc: int, env: dict) -> str:
    proc = subprocess.run(job(cfg, out, meta, nproc), capture_output=True, text=True, env=env, cwd=out.parent,
                          timeout=240)
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + log[-3000:]
    return log


def warm_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"warm start: trainer is pid (\d+)", log)]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("strategy,nproc", CASES, ids=[f"{s}-{n}proc" for s, n in CASES])
def test_warm_and_fresh_jobs_give_identical_losses(strategy, nproc, server, shakespeare_char_meta, tmp_path):
    cfg = (run_cfg(20, {"name": "ddp"}, TP_REAL, optimizer="adamw", device_batch_size=4) if strategy == "tp-real"
           else run_cfg(20, STRATEGIES[strategy]))
    warm_log = run_job(cfg, tmp_path / "warm", shakespeare_char_meta, nproc, job_env(server))
    fresh_log = run_job(cfg, tmp_path / "fresh", shakespeare_char_meta, nproc, job_env())
    assert len(warm_pids(warm_log)) == nproc, warm_log[-3000:]  # every worker's trainer is a fork
    assert not warm_pids(fresh_log) and "warm start" not in fresh_log
    assert f"world_size {nproc}" in warm_log
    warm_result, fresh_result = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("warm", "fresh"))
    assert warm_result["final_val_loss"] == fresh_result["final_val_loss"]  # exactly
    assert warm_result["final_train_loss"] == fresh_result["final_train_loss"]
    assert rows_without_timings(tmp_path / "warm" / "metrics.jsonl") == \
        rows_without_timings(tmp_path / "fresh" / "metrics.jsonl")
    assert warm_result["communication"] == fresh_result["communication"]


def test_sigterm_to_a_warm_job_checkpoints_and_the_rerun_equals_a_fresh_run(server, shakespeare_char_meta, tmp_path):
    cfg = run_cfg(80, STRATEGIES["diloco"], checkpoint_every=10)  # tau 7: the kill lands mid-round
    run_job(cfg, tmp_path / "fresh", shakespeare_char_meta, 2, job_env())

    out = tmp_path / "warm"
    proc = subprocess.Popen(job(cfg, out, shakespeare_char_meta, 2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=job_env(server), cwd=tmp_path)
    wait_for(lambda: last_step(out / "metrics.partial.jsonl") >= 20 or proc.poll() is not None, 180, "step 20")
    assert proc.poll() is None, "the run ended before it could be preempted"
    proc.send_signal(signal.SIGTERM)  # the job's command; torchrun, then each client, pass it on
    assert proc.wait(timeout=120) == EXIT_PREEMPTED, (out / "train.log").read_text()[-3000:]
    first = (out / "train.log").read_text()
    assert len(warm_pids(first)) == 2 and re.search(r"PREEMPTED by signal at step \d+", first)
    assert not (out / "result.json").exists()

    again = run_job(cfg, out, shakespeare_char_meta, 2, job_env(server))
    assert "resumed from" in again and len(warm_pids(again)) == 2
    warm_result, fresh_result = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("warm", "fresh"))
    assert warm_result["final_val_loss"] == fresh_result["final_val_loss"]
    assert rows_without_timings(out / "metrics.jsonl") == rows_without_timings(tmp_path / "fresh" / "metrics.jsonl")


def test_a_killed_warm_job_leaves_no_trainer_behind(server, shakespeare_char_meta, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(job(run_cfg(100_000, STRATEGIES["ddp"]), out, shakespeare_char_meta, 1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=job_env(server), cwd=tmp_path)
    log = out / "train.log"
    wait_for(lambda: log.exists() and warm_pids(log.read_text()) and last_step(out / "metrics.partial.jsonl") >= 5,
             120, "the warm trainer's first steps")
    trainer = warm_pids(log.read_text())[0]
    assert psutil.Process(trainer).ppid() == server.proc.pid
    proc.kill()  # SIGKILL: the client cannot pass anything on; its closed connection tells the server
    proc.wait()
    wait_for(lambda: not psutil.pid_exists(trainer), 30, f"trainer {trainer} to go")
    assert f"the client of trainer {trainer} is gone" in server.log.read_text()


def test_the_server_refuses_a_job_with_another_import_time_environment(server, shakespeare_char_meta, tmp_path):
    cfg = run_cfg(10, STRATEGIES["ddp"])
    log = run_job(cfg, tmp_path / "other", shakespeare_char_meta, 1,
                  job_env(server, PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
    assert ("server refused (environment variables differ from the server's: PYTORCH_NO_CUDA_MEMORY_CACHING); "
            "starting fresh") in log
    assert not warm_pids(log) and "finished: final val_loss" in log
    same = run_job(cfg, tmp_path / "same", shakespeare_char_meta, 1, job_env(server))
    assert warm_pids(same)
    assert rows_without_timings(tmp_path / "other" / "metrics.jsonl") == \
        rows_without_timings(tmp_path / "same" / "metrics.jsonl")


def test_fingerprint_sees_edited_code_and_import_time_variables_only(tmp_path):
    package = tmp_path / "workflow"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "a.py").write_text("x = 1\n")
    base = fingerprint({"TORCH_LOGS": "", "HOME": "/h"}, package)
    assert fingerprint_mismatch(base, fingerprint({"TORCH_LOGS": "", "HOME": "/other"}, package)) is None
    # torchrun sets TORCH_NCCL_* for its workers; torch reads it when the process group starts
    assert fingerprint_mismatch(base, fingerprint(
        {"TORCH_LOGS": "", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCHELASTIC_RUN_ID": "x"}, package)) is None
    assert fingerprint_mismatch(base, fingerprint({"TORCH_LOGS": "+dynamo"}, package)) == \
        "environment variables differ from the server's: TORCH_LOGS"
    os.utime(package / "sub" / "a.py", ns=(1, 1))
    assert "changed since the server started" in fingerprint_mismatch(
        base, fingerprint({"TORCH_LOGS": ""}, package))
    assert "another checkout" in fingerprint_mismatch(base, fingerprint({"TORCH_LOGS": ""}, REPO / "workflow"))


def test_when_a_snakemake_run_starts_a_server():
    assert warm.why_not_start("auto", local_exec=True, has_training=True, has_gpu=False) is None
    assert warm.why_not_start("on", local_exec=True, has_training=True, has_gpu=True) is None
    assert warm.why_not_start(True, local_exec=True, has_training=True, has_gpu=True) is None  # YAML's `on`
    assert "GPU" in warm.why_not_start("auto", local_exec=True, has_training=True, has_gpu=True)
    assert "cluster" in warm.why_not_start("on", local_exec=False, has_training=True, has_gpu=False)
    assert "no training" in warm.why_not_start("auto", local_exec=True, has_training=False, has_gpu=False)
    assert "off" in warm.why_not_start(False, local_exec=True, has_training=True, has_gpu=False)  # YAML's `off`


def test_no_server_means_the_launcher_runs_the_trainer_itself(tmp_path, monkeypatch):
    monkeypatch.delenv(warm.SOCKET_ENV, raising=False)
    assert warm.run_trainer(["--help"]) is None  # no server
    monkeypatch.setenv(warm.SOCKET_ENV, str(tmp_path / "none.sock"))
    monkeypatch.setenv(warm.PID_ENV, "999999999")
    assert warm.run_trainer(["--help"], wait_s=1) is None  # a server that is not there


def test_a_trainer_stays_in_the_slurm_job_of_its_launcher(server, shakespeare_char_meta, tmp_path):
    """The server runs outside any SLURM job; a launcher inside one is refused and its trainer
    runs in the launcher's own process (inside the job), with the same losses."""
    log = run_job(run_cfg(10, STRATEGIES["ddp"]), tmp_path / "slurm", shakespeare_char_meta, 1,
                  job_env(server, SLURM_JOB_ID="4242"))
    assert "server refused (environment variables differ from the server's: SLURM_JOB_ID); starting fresh" in log
    assert not warm_pids(log) and "finished: final val_loss" in log
    assert "SLURM_JOB_ID" in fingerprint_mismatch(fingerprint({"SLURM_JOB_ID": "1"}),
                                                       fingerprint({"SLURM_JOB_ID": "2"}))


def test_the_server_goes_when_its_parent_is_gone(tmp_path):
    code = ("import sys; from workflow.jobs import warm_client as warm; "
            f"h = warm.start_server({str(tmp_path / 'server.log')!r}, export=False); print(h.proc.pid, h.socket_dir)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60).stdout.split()
    pid, socket_dir = int(out[0]), Path(out[1])
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 60,
             "the orphaned server to stop")
    log = (tmp_path / "server.log").read_text()
    assert "Snakemake is gone: stopping" in log and "stopped" in log
    assert not socket_dir.exists()  # the socket and its private folder are removed


def test_a_malformed_request_is_refused_and_the_server_goes_on(server, shakespeare_char_meta, tmp_path):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(server.socket)
        body = b'{"argv": "not a list"}'
        socket.send_fds(sock, [warm.REQUEST_HEADER.pack(len(body))], [0, 1, 2])
        sock.sendall(body)
        reply = json.loads(sock.makefile("rb").readline())
    assert reply == {"refused": "malformed request (argv, env, cwd, umask)"}
    log = run_job(run_cfg(5, STRATEGIES["ddp"]), tmp_path / "after", shakespeare_char_meta, 1, job_env(server))
    assert warm_pids(log)  # still serving
