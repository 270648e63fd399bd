"""Where a study stands: a table read at a glance (``python -m workflow.status``), like Ray Tune's
progress table.

It reads only what the study leaves on disk and what the scheduler says, never Snakemake's own
state, so it works from another shell while Snakemake runs, after a crash (Snakemake gone, its
jobs gone or orphaned) and on a study not yet started:

- the study's stages, variants and seeds, resolved as the Snakefile resolves them
  (:func:`load_study`: the study file(s), ``--config`` values, :func:`workflow.sweep.prepare_study`,
  the schema's defaults; stage order and seeds from :mod:`workflow.config`);
- per run folder ``{results_dir}/{study}/stage_<S>/<variant>/seed_<n>/`` (docs/architecture.md,
  "Results layout"): ``result.json`` (a finished run: ``success`` true = done, false = failed
  with its ``reason``), ``metrics.partial.jsonl`` (the rows of a run still training; renamed to
  ``metrics.jsonl`` when it ends), the latest ``train.attempt-N.log`` (workflow.launch: one per
  attempt; it holds ``PREEMPTED`` after exit 75, a traceback or ``error:`` after a failure, and
  ``SLURM job <id> on <node>`` under SLURM) and ``checkpoint/{a,b}/manifest.json`` (the step a
  preempted run resumes from);
- ``gates/gate_<S>.json`` (+ ``gate_<S>_pivot.json``) and ``verdict.json``;
- the scheduler: live processes on this machine (``psutil``: a job's ``python -m workflow.launch
  ... --out-dir RUN``, and Snakemake processes working in the study's directory) and, when the
  logs name SLURM jobs and ``sacct`` exists, one ``sacct`` call for their state and node.

A run's state (:data:`STATES`), first match wins:

1. ``result.json``: ``done`` (success) or ``failed`` (its reason);
2. no attempt log: ``pending`` (``running`` if a process already works in the folder);
3. a live process for the folder, or its SLURM job RUNNING: ``running``;
4. the latest attempt log ends in a preemption (``PREEMPTED``, job exit status 75): ``preempted``;
   in a failure (traceback, ``error:``, another exit status): ``failed``; in the trainer's last
   line (``finished:``), although result.json is gone: ``pending`` (Snakemake removed the outputs
   to run it again);
5. its SLURM job ended (sacct FAILED, TIMEOUT, CANCELLED, ...): ``failed`` (``PREEMPTED``:
   ``preempted``); queued again (PENDING, REQUEUED): ``pending``;
6. otherwise the folder's newest write decides: within ``stale_after_s`` (default 300 s) the run
   is ``running`` (on a host whose processes are not visible here), later ``failed`` (stopped
   without a result: killed, or the machine went away).

Stages after a gate list the variants it advanced once the gate ran (the baseline first, then the
advanced ones, plus the gate's pivot variant: exactly ``rules/common.smk``'s ``stage_variants``);
before, they wait ("after gate A") with the most runs they can hold.

Torch-free; the only third-party imports are yaml, psutil (processes) and rich (rendering).
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.console import Group
from rich.table import Table
from rich.text import Text

from workflow.config import deep_merge, stage_order, stage_seeds, study_with_defaults
from workflow.io import read_json
from workflow.sweep import parse_value, prepare_study

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = "config/config.yaml"
#: Run states, in the order the tables show them.
STATES = ("done", "running", "pending", "failed", "preempted")
#: Default seconds between refreshes of ``--watch`` (each refresh: the run folders + one sacct call).
POLL_INTERVAL_S = 5.0
#: A run without result.json, process or SLURM job whose folder was written this recently is running.
STALE_AFTER_S = 300.0

# sacct states (``sacct --helpformat``/man sacct "JOB STATE CODES")
SLURM_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED"}
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
SLURM_PREEMPTED = {"PREEMPTED"}

_ATTEMPT = re.compile(r"\.attempt-(\d+)\.log$")
_SLURM_LINE = re.compile(r"^SLURM job (\S+) on (\S+)", re.MULTILINE)
_NUM_ITERATIONS = re.compile(r"num_iterations (\d+)")
_RESUMED = re.compile(r"^resumed from \S+ at step (\d+)", re.MULTILINE)
_STEP_LINE = re.compile(r"^step (\d+)/(\d+)", re.MULTILINE)
_EXIT_STATUS = re.compile(r"job exit status (-?\d+)")
_PREEMPTED = re.compile(r"PREEMPTED|job exit status 75\b")
_ENDED = re.compile(r"^(finished: |FAILED \()", re.MULTILINE)  # the trainer's last line, written with result.json
_FAILED = re.compile(r"^Traceback \(most recent call last\)|^error: |^\S*Error: |job exit status (?!75\b|0\b)-?\d+",
                     re.MULTILINE)


# --------------------------------------------------------------------------- the study

def parse_config_args(items: Iterable[str]) -> dict:
    """Snakemake's ``--config KEY=VALUE ...``: top-level keys, values parsed as YAML.

    Raises:
        ValueError: an item without ``=``.
    """
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--config {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_value(text)
    return out


def load_study(configfiles: Iterable[str | os.PathLike] = (), overrides: dict | None = None,
               directory: str | os.PathLike = ".") -> dict:
    """The study as the Snakefile resolves it: the study file(s) (``--configfile``; none: the
    default ``config/config.yaml`` of ``directory``, else of the repository) merged in order,
    ``--config`` values on top (Snakemake merges both recursively), then ``set`` overrides and the
    sweep (:func:`workflow.sweep.prepare_study`), the schema checks and its defaults.

    Raises:
        workflow.config.ConfigError: the study is invalid (naming the key).
        OSError: a study file cannot be read.
    """
    files = [Path(f) for f in configfiles]
    if not files:
        default = Path(directory) / DEFAULT_STUDY
        files = [default if default.is_file() else REPO_ROOT / DEFAULT_STUDY]
    config: dict = {}
    for path in files:
        with open(path, encoding="utf-8") as handle:
            config = deep_merge(config, yaml.safe_load(handle) or {})
    config = deep_merge(config, overrides or {})
    prepare_study(config)
    return study_with_defaults(config)


def results_folder(config: dict, directory: str | os.PathLike = ".") -> Path:
    """``{results_dir}/{study}`` (a relative results_dir is relative to Snakemake's ``--directory``)."""
    return Path(directory) / config["results_dir"] / config["study"]


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def gate_decision(results: Path, stage: str) -> dict | None:
    """The final decision of ``stage``'s gate (the pivot gate's when the gate pivoted), None until
    it is known (rules/common.smk ``gate_decision``)."""
    decision = _read_json_or_none(results / "gates" / f"gate_{stage}.json")
    if decision is not None and (decision.get("pivot") or {}).get("run"):
        decision = _read_json_or_none(results / "gates" / f"gate_{stage}_pivot.json")
    return decision


def stage_pivot(config: dict, results: Path, stage: str) -> str | None:
    """The variant that runs ``stage`` as its gate's pivot, or None (rules/common.smk ``stage_pivot``)."""
    gate = config["stages"][stage].get("gate")
    if not gate or not gate.get("pivot"):
        return None
    pivot = (_read_json_or_none(results / "gates" / f"gate_{stage}.json") or {}).get("pivot") or {}
    return pivot.get("variant") if pivot.get("run") else None


def stage_variants(config: dict, results: Path, stage: str) -> tuple[list[str] | None, str | None]:
    """(variants that run ``stage``, None) once known, else (None, "gate <previous stage>").

    All variants in the first stage; afterwards the baseline plus those the previous gate
    advanced (none advanced: no runs), plus the stage's pivot variant (rules/common.smk
    ``stage_variants``)."""
    stages = stage_order(config)
    index = stages.index(stage)
    if index == 0:
        variants = list(config["variants"])
    else:
        previous = stages[index - 1]
        decision = gate_decision(results, previous)
        if decision is None:
            return None, f"gate {previous}"
        if not decision.get("advanced"):
            return [], None
        baseline = config["baseline"]
        variants = [baseline] + [v for v in decision["advanced"] if v != baseline]
    pivot = stage_pivot(config, results, stage)
    return variants + ([pivot] if pivot and pivot not in variants else []), None


def most_variants(config: dict, stage: str) -> int:
    """The most variants ``stage`` can run (workflow.sweep.stage_plan's count, without resolving runs)."""
    stages = stage_order(config)
    most = len(config["variants"])
    for previous, current in itertools.pairwise(stages):
        gate = config["stages"][previous]["gate"]
        if gate["rule"] == "top_k":
            most = min(most, gate.get("k", 2) + 1)
        if current == stage:
            break
    return most


# --------------------------------------------------------------------------- the scheduler

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
        is_job = "--out-dir" in " ".join(cmd) and any(a in ("workflow.launch", "workflow.train") for a in cmd)
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


# --------------------------------------------------------------------------- one run

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


def _read_edges(path: Path, nbytes: int = 32768) -> tuple[str, str, bool]:
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
        _, tail, whole = _read_edges(path, tail_bytes)
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
             if isinstance(m := _read_json_or_none(run_dir / "checkpoint" / slot / "manifest.json"), dict)]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def _last_line(text: str, pattern: re.Pattern) -> str:
    matches = [line.strip() for line in text.splitlines() if pattern.search(line)]
    return matches[-1][:200] if matches else ""


def _age(seconds: float) -> str:
    return format_duration(seconds) + " ago"


def run_status(run_dir: Path, stage: str, variant: str, seed: int, *, planned_total: int | None = None,
               processes: Processes | None = None, slurm: dict[str, dict] | None = None,
               now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> RunStatus:
    """The state and progress of one run from its folder (see the module docstring for the rules).

    Args:
        run_dir: ``stage_<S>/<variant>/seed_<n>``.
        planned_total: the steps the study gives the run (used until its log names the resolved count).
        processes: :func:`scan_processes` (None: not known, e.g. another machine).
        slurm: :func:`sacct_jobs` for the jobs the logs name (None: not known).
        now: the time (``time.time()``).
        stale_after_s: see rule 6.
    """
    now = time.time() if now is None else now
    rs = RunStatus(stage, variant, seed, total=planned_total, path=str(run_dir))
    result = _read_json_or_none(run_dir / "result.json")
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
    if not log.exists():
        rs.state = "running" if rs.pid else "pending"
        if rs.pid:
            rs.detail = "starting"
        return rs

    head, tail, _ = _read_edges(log)
    if m := _SLURM_LINE.search(head):
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
    job = (slurm or {}).get(rs.slurm_job) if rs.slurm_job else None
    if job:
        rs.slurm_state, rs.node = job["state"], job["node"] or rs.node
    if rows and rs.total and rs.step is not None:
        # ETA: the wall time per step of this attempt so far (its process's age, or the SLURM job's
        # elapsed time; evaluations included), else the mean training step time of the metrics
        first = int(m.group(1)) if (m := _RESUMED.search(head)) else 0
        started = processes.started.get(resolved) if (processes and rs.pid) else None
        elapsed = (now - started) if started else (slurm_seconds(job["elapsed"]) if job else None)
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
        at = f" at step {rs.checkpoint_step}" if rs.checkpoint_step is not None else ""
        rs.detail = f"attempt {rs.attempts or 1} preempted{at}; resumes from its checkpoint when Snakemake reruns it"
        return rs
    if failed:
        rs.state, rs.detail = "failed", _last_line(tail, _FAILED) or "failed"
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        if lines and rs.detail.startswith("Traceback"):
            rs.detail = lines[-1][:200]
        return rs
    # rule 5: the SLURM job's end
    if job:
        if job["state"] in SLURM_PREEMPTED:
            rs.state, rs.detail = "preempted", f"SLURM job {rs.slurm_job} {job['state']}"
            return rs
        if job["state"] in SLURM_QUEUED:
            rs.state, rs.detail = "pending", f"SLURM job {rs.slurm_job} {job['state']}"
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


# --------------------------------------------------------------------------- the study's status

def _planned_total(config: dict, stage: str, variant: str) -> int | None:
    """Steps the study gives a run (``num_iterations``; a token or epoch length is resolved by the
    trainer, whose log names it)."""
    train = deep_merge(deep_merge(config.get("train") or {}, config["stages"][stage].get("train") or {}),
                       (config["variants"].get(variant) or {}).get("train"))
    if train.get("num_tokens") is not None or train.get("num_epochs") is not None:
        return None
    value = train.get("num_iterations")
    return int(value) if isinstance(value, int) else None


def _gate_entry(results: Path, stage: str) -> dict | None:
    first = _read_json_or_none(results / "gates" / f"gate_{stage}.json")
    if not isinstance(first, dict):
        return None
    entries = [first]
    pivot = first.get("pivot") or {}
    if pivot.get("run"):
        second = _read_json_or_none(results / "gates" / f"gate_{stage}_pivot.json")
        if isinstance(second, dict):
            entries.append(second)
    out = []
    for i, decision in enumerate(entries):
        params = decision.get("params") or {}
        rule = decision.get("rule", "?")
        if rule == "top_k" and "k" in params:
            rule += f" k={params['k']}"
        out.append({
            "stage": stage,
            "kind": "pivot" if i else "gate",
            "rule": rule,
            "advanced": list(decision.get("advanced") or []),
            "rows": [{"variant": r.get("variant"), "advanced": bool(r.get("advanced")),
                      "baseline": r.get("variant") == decision.get("baseline"), "mean": r.get("mean"),
                      "reason": r.get("reason", "")} for r in decision.get("ranking") or []],
            "pivot": (pivot.get("variant"), pivot.get("reason")) if i == 0 and pivot else None,
        })
    return {"stage": stage, "decisions": out}


def _verdict_entry(results: Path) -> dict | None:
    verdict = _read_json_or_none(results / "verdict.json")
    if not isinstance(verdict, dict):
        return None
    return {
        "winners": list(verdict.get("winners") or []),
        "explanation": verdict.get("explanation", ""),
        "rows": [{"variant": e.get("variant"), "mean": e.get("mean"), "winner": bool(e.get("winner")),
                  "verdict": e.get("verdict", "")} for e in verdict.get("results") or []],
    }


def study_status(config: dict, directory: str | os.PathLike = ".", *, scheduler: bool = True,
                 stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> dict:
    """Where the study stands, as a JSON-able dict (what ``--json`` prints and :func:`render` draws).

    Returns:
        ``{"study", "results", "time", "snakemake": [{"pid", "directory"}] | None, "slurm":
        {"sacct": bool, "jobs": n} | None, "totals": {state: n}, "stages": [{"stage", "variants"
        (None: after a gate), "waiting_for", "seeds", "runs", "most_runs", "counts": {state: n},
        "gate"}], "runs": [RunStatus as dicts, every run of the known stages], "gates": [...],
        "verdict": {...} | None}``.
    Args:
        scheduler: also ask the scheduler (processes of this machine, sacct); False: files only.
    """
    now = time.time() if now is None else now
    directory = Path(directory)
    results = results_folder(config, directory)
    stages = stage_order(config)
    processes = scan_processes() if scheduler else None

    plan = []
    for stage in stages:
        variants, waiting = stage_variants(config, results, stage)
        plan.append((stage, variants, waiting))
    # SLURM job ids the logs name (one sacct call for all of them)
    job_ids = []
    if scheduler and shutil.which("sacct"):
        for stage, variants, _ in plan:
            for variant in variants or []:
                for seed in stage_seeds(config, stage):
                    run_dir = results / f"stage_{stage}" / variant / f"seed_{seed}"
                    if (run_dir / "result.json").exists():
                        continue
                    logs = attempt_logs(run_dir)
                    if logs and (m := _SLURM_LINE.search(_read_edges(logs[-1])[0])):
                        job_ids.append(m.group(1))
    slurm = sacct_jobs(job_ids) if job_ids else None

    runs: list[RunStatus] = []
    stage_rows = []
    for stage, variants, waiting in plan:
        seeds = stage_seeds(config, stage)
        counts = dict.fromkeys(STATES, 0)
        for variant in variants or []:
            total = _planned_total(config, stage, variant)
            for seed in seeds:
                rs = run_status(results / f"stage_{stage}" / variant / f"seed_{seed}", stage, variant, seed,
                                planned_total=total, processes=processes, slurm=slurm, now=now,
                                stale_after_s=stale_after_s)
                counts[rs.state] += 1
                runs.append(rs)
        stage_rows.append({
            "stage": stage,
            "variants": variants,
            "waiting_for": waiting,
            "seeds": len(seeds),
            "runs": None if variants is None else len(variants) * len(seeds),
            "most_runs": most_variants(config, stage) * len(seeds),
            "counts": counts if variants is not None else None,
            "gate": (config["stages"][stage].get("gate") or {}).get("rule"),
        })
    totals = dict.fromkeys(STATES, 0)
    for rs in runs:
        totals[rs.state] += 1
    mine = None
    if processes is not None:
        where = str(directory.resolve())
        mine = [p for p in processes.snakemake if p["directory"] == where]
    return {
        "study": config["study"],
        "results": str(results),
        "time": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
        "snakemake": mine,
        "slurm": None if not job_ids else {"sacct": slurm is not None, "jobs": len(set(job_ids))},
        "totals": totals,
        "stages": stage_rows,
        "runs": [asdict(rs) | {"name": rs.name} for rs in runs],
        "gates": [g for stage in stages[:-1] if (g := _gate_entry(results, stage))],
        "verdict": _verdict_entry(results),
    }


# --------------------------------------------------------------------------- rendering

def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; empty for None."""
    if seconds is None:
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "" if value is None else fmt.format(value)


_STYLE = {"done": "green", "running": "cyan", "pending": "dim", "failed": "red", "preempted": "yellow"}


def render(status: dict, interval_s: float | None = None, max_rows: int = 8) -> Group:
    """The status as rich tables: stages, running runs, failed/preempted runs (the first
    ``2 * max_rows``), gates (baseline, advanced and the first ``max_rows`` others), verdict."""
    parts: list = []
    head = Text.assemble(("study ", "bold"), (status["study"], "bold cyan"), f"  {status['results']}  {status['time']}")
    if status["snakemake"] is not None:
        pids = [str(p["pid"]) for p in status["snakemake"]]
        head.append("  snakemake: " + (f"running (pid {', '.join(pids)})" if pids else "not running"),
                    style="green" if pids else "yellow")
    if interval_s:
        head.append(f"  (every {interval_s:g} s; Ctrl-C stops)", style="dim")
    parts.append(head)
    totals = status["totals"]
    parts.append(Text("  ".join(f"{totals[s]} {s}" for s in STATES)))

    stages = Table(title="stages", title_justify="left", expand=False)
    for col in ("stage", "variants", "seeds", "runs", *STATES):
        stages.add_column(col, justify="left" if col in ("stage", "variants") else "right")
    for row in status["stages"]:
        if row["variants"] is None:
            stages.add_row(row["stage"], Text(f"after {row['waiting_for']}", style="dim"), str(row["seeds"]),
                           f"<= {row['most_runs']}", "", "", Text("all", style="dim"), "", "")
            continue
        variants = ", ".join(row["variants"]) if len(row["variants"]) <= 4 else f"{len(row['variants'])} variants"
        counts = row["counts"]
        stages.add_row(row["stage"], variants or Text("none advanced", style="dim"), str(row["seeds"]),
                       str(row["runs"]), *[Text(str(counts[s]), style=_STYLE[s] if counts[s] else "dim") for s in STATES])
    parts.append(stages)

    running = [r for r in status["runs"] if r["state"] == "running"]
    if running:
        slurm = any(r["slurm_job"] for r in running)
        table = Table(title="running", title_justify="left")
        columns = ("run", "step", "val_loss", "train_loss", "tokens/s", "ETA", *(("job", "node", "sacct") if slurm else ()))
        for col in columns:
            table.add_column(col, justify="left" if col in ("run", "node", "sacct") else "right")
        for r in running:
            step = f"{r['step'] if r['step'] is not None else '-'}/{r['total'] or '?'}"
            row = [r["name"], step, _num(r["val_loss"]), _num(r["train_loss"]), _num(r["tokens_per_s"], "{:,.0f}"),
                   format_duration(r["eta_s"])]
            if slurm:
                row += [r["slurm_job"] or "", r["node"] or "", r["slurm_state"] or ""]
            table.add_row(*row)
        parts.append(table)
        notes = [f"{r['name']}: {r['detail']}" for r in running if r["detail"]]
        if notes:
            parts.append(Text("\n".join(notes), style="dim"))

    trouble = [r for r in status["runs"] if r["state"] in ("failed", "preempted")]
    if trouble:
        slurm = any(r["slurm_job"] for r in trouble)
        table = Table(title="failed / preempted", title_justify="left")
        for col in ("run", "state", "step", *(("job", "node") if slurm else ()), "why"):
            table.add_column(col)
        for r in trouble[:2 * max_rows]:
            step = f"{r['step'] if r['step'] is not None else '-'}/{r['total'] or '?'}"
            job = [r["slurm_job"] or "", r["node"] or ""] if slurm else []
            table.add_row(r["name"], Text(r["state"], style=_STYLE[r["state"]]), step, *job, r["detail"] or "")
        if len(trouble) > 2 * max_rows:
            more = Text(f"... {len(trouble) - 2 * max_rows} more (--json lists every run)", style="dim")
            table.add_row(more, *[""] * (len(table.columns) - 1))
        parts.append(table)

    if status["slurm"] and not status["slurm"]["sacct"]:
        parts.append(Text(f"SLURM: the logs name {status['slurm']['jobs']} job(s), but sacct gave no answer",
                          style="yellow"))

    for gate in status["gates"]:
        for d in gate["decisions"]:
            title = f"{'pivot gate' if d['kind'] == 'pivot' else 'gate'} {d['stage']} ({d['rule']}): " + (
                f"advanced {', '.join(d['advanced'])}" if d["advanced"] else "nothing advanced")
            table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1))
            table.add_column("mark")
            table.add_column("variant")
            table.add_column("mean", justify="right")
            table.add_column("reason")
            shown = [r for r in d["rows"] if r["baseline"] or r["advanced"]]
            others = [r for r in d["rows"] if not (r["baseline"] or r["advanced"])]
            shown += others[:max_rows]
            for r in sorted(shown, key=d["rows"].index):
                mark = Text("=", style="dim") if r["baseline"] else (
                    Text("+", style="green") if r["advanced"] else Text("-", style="red"))
                table.add_row(mark, r["variant"], _num(r["mean"]), r["reason"])
            if len(others) > max_rows:
                table.add_row("", Text(f"... {len(others) - max_rows} more not advanced "
                                       f"(gates/gate_{d['stage']}.json)", style="dim"), "", "")
            parts.append(table)
            if d["pivot"]:
                parts.append(Text(f"  pivot: {d['pivot'][0] or 'none'}: {d['pivot'][1] or ''}", style="dim"))

    verdict = status["verdict"]
    if verdict is not None:
        winners = ", ".join(verdict["winners"]) or "none"
        table = Table(title=f"verdict: winners: {winners}", title_justify="left", show_header=False, box=None,
                      padding=(0, 1))
        table.add_column("mark")
        table.add_column("variant")
        table.add_column("mean", justify="right")
        table.add_column("verdict")
        for r in verdict["rows"]:
            mark = Text("*", style="bold green") if r["winner"] else ""
            table.add_row(mark, r["variant"], _num(r["mean"]), r["verdict"])
        parts.append(table)
        if len(verdict["rows"]) < 2:  # nothing tested: say why
            parts.append(Text(f"  {verdict['explanation']}", style="dim"))
    return Group(*parts)
