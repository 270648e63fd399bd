"""One run's state and progress, from its folder (and the scheduler's answers): ``workflow.status``.

A run folder ``stage_<S>/<variant>/seed_<n>/`` (docs/architecture.md, "Results layout") holds
``result.json`` once the run ended, ``metrics.partial.jsonl`` while it trains (renamed to
``metrics.jsonl`` at the end), one ``train.attempt-N.log`` per attempt (workflow.jobs.launcher) and
``checkpoint/{a,b}/manifest.json`` while unfinished. :func:`run_status` decides the state (the
rules are in workflow/analysis/status.py's docstring and docs/slurm.md) and reads only the
files' tails, so a refresh stays cheap for long runs.

Torch-free.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.analysis.status_scheduler import SLURM_PREEMPTED, SLURM_QUEUED, SLURM_RUNNING, Processes, slurm_seconds
from workflow.core.io import read_json

#: Run states, in the order the tables show them.
STATES = ("done", "running", "pending", "failed", "preempted")
#: A run without result.json, process or SLURM job whose folder was written this recently is running.
STALE_AFTER_S = 300.0

_ATTEMPT = re.compile(r"\.attempt-(\d+)\.log$")
_SLURM_LINE = re.compile(r"^SLURM job (\S+) on (\S+)", re.MULTILINE)
_NUM_ITERATIONS = re.compile(r"num_iterations (\d+)")
_RESUMED = re.compile(r"^resumed from \S+ at step (\d+)", re.MULTILINE)
_STEP_LINE = re.compile(r"^step (\d+)/(\d+)", re.MULTILINE)
_PREEMPTED = re.compile(r"PREEMPTED|job exit status 75\b")
# the trainer's (or the script runner's) last line, written with result.json
_ENDED = re.compile(r"^(?:script_runner: )?(finished: |FAILED \()", re.MULTILINE)
_FAILED = re.compile(r"^Traceback \(most recent call last\)|^error: |^\S*Error: |job exit status (?!75\b|0\b)-?\d+",
                     re.MULTILINE)


def read_json_or_none(path: Path) -> Any:
    """A JSON file's content, None when it is missing or unreadable (being replaced, corrupt)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


@dataclass
class RunStatus:
    """One run's state and progress (``None``: not known)."""

    stage: str
    variant: str
    seed: int
    state: str = "pending"
    detail: str | None = None  # why failed / preempted / running without a process
    step: int | None = None
    total: int | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    attempts: int = 0
    checkpoint_step: int | None = None
    last_write_s: float | None = None  # seconds since the folder's newest log/metrics write
    pid: int | None = None
    slurm_job: str | None = None
    node: str | None = None
    slurm_state: str | None = None
    path: str = ""

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.variant}/seed_{self.seed}"


def attempt_logs(run_dir: Path) -> list[Path]:
    """``train.attempt-N.log`` of a run folder, oldest first."""
    logs = [(int(m.group(1)), p) for p in run_dir.glob("train.attempt-*.log") if (m := _ATTEMPT.search(p.name))]
    return [p for _, p in sorted(logs)]


def read_edges(path: Path, nbytes: int = 32768) -> tuple[str, str, bool]:
    """(head, tail, whole) of a text file: its first and last ``nbytes`` (a long log is never read
    whole), and whether they are the whole file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(nbytes)
            size = handle.seek(0, os.SEEK_END)
            if size <= nbytes:
                tail = head
            else:
                handle.seek(max(0, size - nbytes))
                tail = handle.read()
    except OSError:
        return "", "", True
    return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace"), size <= nbytes


def log_slurm_job(log: Path) -> str | None:
    """The SLURM job id a run's attempt log names (the trainer's ``SLURM job <id> on <node>``), or None."""
    m = _SLURM_LINE.search(read_edges(log)[0])
    return m.group(1) if m else None


def _rows(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line being appended right now, or cut by the tail
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def metrics_rows(run_dir: Path, tail_bytes: int = 65536) -> list[dict]:
    """The latest metrics rows of a run: ``metrics.partial.jsonl`` while it trains, else
    ``metrics.jsonl``; only the file's last ``tail_bytes`` unless no row there has a val_loss
    (a long run's file is not read whole on every refresh)."""
    for name in ("metrics.partial.jsonl", "metrics.jsonl"):
        path = run_dir / name
        if not path.is_file():
            continue
        _, tail, whole = read_edges(path, tail_bytes)
        rows = _rows(tail)
        if not whole and not any(r.get("val_loss") is not None for r in rows):
            try:
                rows = _rows(path.read_text(encoding="utf-8"))
            except OSError:
                pass
        return rows
    return []


def checkpoint_step(run_dir: Path) -> int | None:
    """The newest complete checkpoint's step (``checkpoint/{a,b}/manifest.json``), None without one."""
    steps = [m.get("step") for slot in ("a", "b")
             if isinstance(m := read_json_or_none(run_dir / "checkpoint" / slot / "manifest.json"), dict)]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def _last_line(text: str, pattern: re.Pattern) -> str:
    matches = [line.strip() for line in text.splitlines() if pattern.search(line)]
    return matches[-1][:200] if matches else ""


def _age(seconds: float) -> str:
    return format_duration(seconds) + " ago"


def run_status(run_dir: Path, stage: str, variant: str, seed: int, *, planned_total: int | None = None,
               processes: Processes | None = None, slurm: dict[str, dict] | None = None,
               now: float | None = None, stale_after_s: float = STALE_AFTER_S,
               queued: dict | None = None) -> RunStatus:
    """The state and progress of one run from its folder (the rules: workflow/analysis/status.py's docstring).

    Args:
        run_dir: ``stage_<S>/<variant>/seed_<n>``.
        planned_total: the steps the study gives the run (used until its log names the resolved count).
        processes: :func:`scan_processes` (None: not known, e.g. another machine).
        slurm: :func:`sacct_jobs` for the jobs the logs name (None: not known).
        now: the time (``time.time()``).
        stale_after_s: rule 6.
        queued: the run's job in ``squeue`` (:func:`workflow.analysis.status_scheduler.squeue_jobs`),
            found by the comment the executor gave it: its id, node, state from the moment it is queued.
    """
    now = time.time() if now is None else now
    rs = RunStatus(stage, variant, seed, total=planned_total, path=str(run_dir))
    result = read_json_or_none(run_dir / "result.json")
    if isinstance(result, dict):
        rs.state = "done" if result.get("success") else "failed"
        rs.detail = result.get("reason") if not result.get("success") else result.get("stopped_early")
        rs.step, rs.total = result.get("final_step"), result.get("num_iterations") or planned_total
        rs.val_loss, rs.train_loss = result.get("final_val_loss"), result.get("final_train_loss")
        rs.tokens_per_s = result.get("tokens_per_s")
        rs.slurm_job, rs.node = result.get("slurm_job_id"), result.get("hostname")
        rs.attempts = len(attempt_logs(run_dir))
        return rs
    if (run_dir / "result.json").exists():
        rs.state, rs.detail = "failed", "result.json unreadable"
        return rs
    resolved = str(run_dir.resolve())
    rs.pid = (processes.runs.get(resolved) if processes else None)
    logs = attempt_logs(run_dir)
    rs.attempts = len(logs)
    log = logs[-1] if logs else (run_dir / "train.log")
    if queued:
        rs.slurm_job, rs.node, rs.slurm_state = queued["job"], queued["node"], queued["state"]
    if not log.exists():
        rs.state = "running" if rs.pid or (queued and queued["state"] in SLURM_RUNNING) else "pending"
        if queued and queued["state"] not in SLURM_RUNNING:
            rs.detail = _queued_text(queued)
        elif rs.pid or queued:
            rs.detail = "starting"
        return rs

    head, tail, _ = read_edges(log)
    if not queued and (m := _SLURM_LINE.search(head)):
        rs.slurm_job, rs.node = m.group(1), m.group(2)
    steps = _STEP_LINE.findall(tail)
    if steps:
        rs.total = int(steps[-1][1])
    elif m := _NUM_ITERATIONS.search(head):
        rs.total = int(m.group(1))
    rows = metrics_rows(run_dir)
    if rows:
        last = rows[-1]
        rs.step, rs.tokens_per_s = last.get("step"), last.get("tokens_per_s")
        rs.train_loss = next((r["train_loss"] for r in reversed(rows) if r.get("train_loss") is not None), None)
        rs.val_loss = next((r["val_loss"] for r in reversed(rows) if r.get("val_loss") is not None), None)
    rs.checkpoint_step = checkpoint_step(run_dir)
    mtimes = []
    for path in (log, run_dir / "metrics.partial.jsonl"):
        try:
            mtimes.append(path.stat().st_mtime)
        except OSError:
            pass
    rs.last_write_s = max(0.0, now - max(mtimes)) if mtimes else None
    job = queued or ((slurm or {}).get(rs.slurm_job) if rs.slurm_job else None)
    if job and not queued:
        rs.slurm_state, rs.node = job["state"], job["node"] or rs.node
    if rows and rs.total and rs.step is not None:
        # ETA: the wall time per step of this attempt so far (its process's age, or the SLURM job's
        # elapsed time; evaluations included), else the mean training step time of the metrics
        first = int(m.group(1)) if (m := _RESUMED.search(head)) else 0
        started = processes.started.get(resolved) if (processes and rs.pid) else None
        elapsed = (now - started) if started else (slurm_seconds(job.get("elapsed")) if job else None)
        if elapsed and rs.step > first:
            rs.eta_s = max(0, rs.total - rs.step) * elapsed / (rs.step - first)
        elif rows[-1].get("step_avg_ms"):
            rs.eta_s = max(0, rs.total - rs.step) * rows[-1]["step_avg_ms"] / 1000.0

    # rule 3: a live process or a running SLURM job
    if rs.pid or (job and job["state"] in SLURM_RUNNING):
        rs.state = "running"
        return rs
    # rule 4: how the latest attempt ended, by its log
    if _ENDED.search(tail):  # it wrote result.json, which Snakemake removed to run it again
        rs.state = "pending"
        rs.detail = f"to run again (attempt {rs.attempts or 1} ended; Snakemake removed its result.json)"
        return rs
    preempted = [m.start() for m in _PREEMPTED.finditer(tail)]
    failed = [m.start() for m in _FAILED.finditer(tail)]
    if preempted and (not failed or preempted[-1] > failed[-1]):
        rs.state = "preempted"
        if rs.checkpoint_step is not None:  # the step it resumes from, in the step column and the reason alike
            rs.step = rs.checkpoint_step
        at = f" at step {rs.checkpoint_step}" if rs.checkpoint_step is not None else ""
        if queued:  # SLURM requeued the job: it holds it pending, then the same job resumes
            rs.slurm_state = "requeued"
            rs.detail = f"attempt {rs.attempts or 1} preempted{at}; requeued: {_queued_text(queued)}"
            if queued.get("reason") == "BeginTime":
                rs.detail += f"; to start it now: scontrol update jobid={queued['job']} StartTime=now"
        else:
            rs.detail = (f"attempt {rs.attempts or 1} preempted{at}; resumes from its checkpoint when its job "
                         "runs again (SLURM's requeue, or the next snakemake)")
        return rs
    if failed:
        rs.state, rs.detail = "failed", _last_line(tail, _FAILED) or "failed"
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        if lines and rs.detail.startswith("Traceback"):
            rs.detail = lines[-1][:200]
        if queued:  # the executor's retry of the run is queued already
            rs.state, rs.detail = "pending", f"attempt {rs.attempts or 1} failed ({rs.detail}); retry {_queued_text(queued)}"
        return rs
    # rule 5: the SLURM job's end
    if job:
        if job["state"] in SLURM_PREEMPTED:
            rs.state, rs.detail = "preempted", f"SLURM job {rs.slurm_job} {job['state']}"
            return rs
        if job["state"] in SLURM_QUEUED:
            rs.state = "pending"
            rs.detail = _queued_text(queued) if queued else f"SLURM job {rs.slurm_job} {job['state']}"
            return rs
        rs.state, rs.detail = "failed", f"SLURM job {rs.slurm_job} ended {job['state']} without a result"
        return rs
    # rule 6: by the newest write
    if rs.last_write_s is not None and rs.last_write_s <= stale_after_s:
        rs.state = "running"
        rs.detail = f"no process seen on this machine; last write {_age(rs.last_write_s)}"
        return rs
    rs.state = "failed"
    rs.detail = (f"stopped without result.json (no process, last write "
                 f"{_age(rs.last_write_s) if rs.last_write_s is not None else 'unknown'}): killed or crashed")
    return rs


def _queued_text(job: dict) -> str:
    """``SLURM job 14 PENDING (BeginTime), expected start 2026-12-07T18:17:42``."""
    reason = f" ({job['reason']})" if job.get("reason") else ""
    start = f", expected start {job['start']}" if job.get("start") else ""
    return f"SLURM job {job['job']} {job['state']}{reason}{start}"


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; empty for None."""
    if seconds is None:
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


