"""The scheduler's side of ``workflow.status``: this machine's processes and SLURM's ``sacct``.

- :func:`scan_processes` (``psutil``): each job's ``python -m workflow.launch ... --out-dir RUN``
  (the launcher lives as long as the trainer, also when the trainer is a warm-server fork; a
  script run's ``python -m workflow.run_script`` as long as the script), and
  the Snakemake processes with the directory they work in;
- :func:`sacct_jobs`: one ``sacct -X -n -P -j <ids>`` call for the SLURM jobs the run logs name
  (the trainer writes ``SLURM job <id> on <node>``); None without ``sacct`` or when it fails.

Torch-free.
"""

from __future__ import annotations

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
    snakemake: list[dict] = field(default_factory=list)  # {"pid", "directory"}


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
            found.snakemake.append({"pid": proc.info["pid"], "directory": str(Path(cwd, directory).resolve())})
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
        jobs[job_id] = {"state": (state.split() or ["UNKNOWN"])[0].rstrip("+"), "node": node, "elapsed": elapsed}
    return jobs


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
