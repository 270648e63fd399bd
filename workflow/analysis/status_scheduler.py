"""The scheduler's side of ``workflow.status``: this machine's processes and SLURM's ``sacct``.

- :func:`scan_processes` (``psutil``): each job's ``python -m workflow.launch ... --out-dir RUN``
  (the launcher lives as long as the trainer, also when the trainer is a warm-server fork; a
  script run's ``python -m workflow.run_script`` as long as the script), and
  the Snakemake processes with the directory they work in;
- :func:`squeue_jobs`: one ``squeue`` call for this user's queued and running jobs as the executor
  submitted them (the job comment ``rule_train_wildcards_<stage>_<variant>_<seed>`` names the run,
  the working folder the controller's), so a run has its job id, node, state, pending reason and
  expected start from the moment it is queued, before its trainer writes a line;
- :func:`sacct_jobs`: one ``sacct -X -n -P -j <ids>`` call for the SLURM jobs the run logs name
  (the trainer writes ``SLURM job <id> on <node>``); None without ``sacct`` or when it fails.

Torch-free.
"""

from __future__ import annotations

import getpass
import itertools
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from workflow.core.steps import LAUNCH_STEP, TRAIN_STEP, SCRIPT_STEP

# sacct states (man sacct, "JOB STATE CODES")
SLURM_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED"}
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
SLURM_PREEMPTED = {"PREEMPTED"}


#: the job steps whose process lives as long as its run (the script runner as long as the script)


@dataclass
class Processes:
    """What runs on this machine: run folder (resolved) -> pid of its job, and Snakemake processes."""

    runs: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # run folder -> its job's start (epoch seconds)
    snakemake: list[dict] = field(default_factory=list)  # {"pid", "directory", "controller"}


def _option(cmd: list[str], *names: str) -> str | None:
    for i, arg in enumerate(cmd):
        for name in names:
            if arg == name and i + 1 < len(cmd):
                return cmd[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _is_snakemake(cmd: list[str]) -> bool:
    if not cmd:
        return False
    if Path(cmd[0]).name.startswith("snakemake"):
        return True
    if len(cmd) > 1 and Path(cmd[1]).name == "snakemake":  # python .../bin/snakemake
        return True
    return any(a == "-m" and b == "snakemake" for a, b in itertools.pairwise(cmd))


def scan_processes() -> Processes:
    """Jobs (``python -m workflow.launch|train ... --out-dir DIR``; DIR resolved against the
    process's working directory) and Snakemake processes (``--directory``, else the working
    directory) of this machine. Processes this user may not inspect are skipped."""
    found = Processes()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = proc.info.get("cmdline") or []
        is_job = "--out-dir" in " ".join(cmd) and any(a in (LAUNCH_STEP, TRAIN_STEP, SCRIPT_STEP) for a in cmd)
        is_snakemake = not is_job and _is_snakemake(cmd)
        if not (is_job or is_snakemake):
            continue
        try:
            cwd = proc.cwd()
        except (psutil.Error, OSError):
            continue
        if is_job:
            out_dir = _option(cmd, "--out-dir")
            if out_dir:
                key = str(Path(cwd, out_dir).resolve())
                if key not in found.runs or proc.info["create_time"] < found.started[key]:  # the launcher
                    found.runs[key], found.started[key] = proc.info["pid"], proc.info["create_time"]
        else:
            directory = _option(cmd, "--directory", "-d") or "."
            # a job's own Snakemake (inside a SLURM or group job) runs with --target-jobs; the controller without
            found.snakemake.append({"pid": proc.info["pid"], "directory": str(Path(cwd, directory).resolve()),
                                    "controller": "--target-jobs" not in cmd})
    return found


def parse_sacct(text: str) -> dict[str, dict]:
    """``sacct -X -n -P --format=JobID,State,NodeList,Elapsed`` lines -> job id -> {state, node, elapsed}
    (``CANCELLED by 1000`` -> ``CANCELLED``)."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_id, state, node, elapsed = parts[:4]
        jobs[job_id] = {"state": (state.split() or ["UNKNOWN"])[0].rstrip("+"), "node": slurm_node(node),
                        "elapsed": elapsed}
    return jobs


def slurm_node(text: str | None) -> str | None:
    """A node list as SLURM prints it, None when no node is assigned (``None assigned``, ``(null)``, blank)."""
    text = (text or "").strip()
    return None if not text or text in ("None assigned", "(null)", "n/a") else text


SQUEUE_FORMAT = "%i|%T|%N|%r|%S|%k|%Z"


def parse_squeue(text: str) -> dict[str, dict]:
    """``squeue -h -o '%i|%T|%N|%r|%S|%k|%Z'`` lines -> comment -> {job, state, node, reason, start,
    directory} (node, reason and start None when SLURM has none; start is SLURM's expected start)."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7 or not parts[0]:
            continue
        job_id, state, node, reason, start, comment, workdir = parts[:7]
        jobs[comment] = {"job": job_id, "state": state, "node": slurm_node(node),
                         "reason": None if reason in ("None", "") else reason,
                         "start": None if start in ("N/A", "Unknown", "") else start, "directory": workdir}
    return jobs


def squeue_jobs(directory: str | Path, timeout_s: float = 15.0) -> dict[str, dict] | None:
    """This user's queued and running SLURM jobs submitted from ``directory`` (the controller's
    working folder), keyed by their comment (:func:`parse_squeue`); None without ``squeue`` or when it fails."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        proc = subprocess.run([squeue, "-h", "-u", getpass.getuser(), "-o", SQUEUE_FORMAT], capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    where = str(Path(directory).resolve())
    return {c: j for c, j in parse_squeue(proc.stdout).items() if str(Path(j["directory"]).resolve()) == where}


def run_comment(stage: str, variant: str, seed: int) -> str:
    """The job comment snakemake-executor-plugin-slurm gives a training run's job (``rule_<rule>_wildcards_<values>``)."""
    return f"rule_train_wildcards_{stage}_{variant}_{seed}"


def slurm_seconds(elapsed: str | None) -> float | None:
    """sacct's ``[D-]HH:MM:SS`` / ``MM:SS`` as seconds; None if unreadable."""
    try:
        days, _, clock = (elapsed or "").rpartition("-")
        parts = [float(p) for p in clock.split(":")]
    except ValueError:
        return None
    if not 1 <= len(parts) <= 3:
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + (int(days) * 86400 if days else 0)


def sacct_jobs(job_ids: Iterable[str], timeout_s: float = 15.0) -> dict[str, dict] | None:
    """State, node and elapsed time of SLURM jobs from one ``sacct`` call; None when there is no
    job to ask about, no ``sacct`` or it fails (then no SLURM column is shown)."""
    ids = sorted(set(job_ids))
    sacct = shutil.which("sacct")
    if not ids or sacct is None:
        return None
    try:
        proc = subprocess.run([sacct, "-X", "-n", "-P", "-j", ",".join(ids), "--format=JobID,State,NodeList,Elapsed"],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_sacct(proc.stdout) if proc.returncode == 0 else None
