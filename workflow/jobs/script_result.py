"""The record of a finished script run (torch-free): its result.json, the reason it
failed, and its provenance (sha256 of the script and its inputs, git state of the script's
repository, the config hash). Used by workflow.jobs.script_runner.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

from workflow.core.io import sha256_file
from workflow.jobs.capture import MetricsCapture, describe_metrics

#: what result.json says instead of an environment variable's value (it may be a secret)
NOT_RECORDED = "(not recorded)"

#: run-config keys left out of the hash: workflow.study.resolve._IDENTITY_KEYS (not imported: it
#: loads jsonschema, 90 ms of every script job's start-up; tests check that both hashes agree)
_IDENTITY_KEYS = ("seed", "run_id", "stage", "variant", "study", "out_dir", "stage_seed_offset")


def config_hash(run_cfg: dict) -> str:
    """workflow.study.resolve.config_hash: sha256 (16 hex digits) of the run config without its identity keys."""
    defining = {k: v for k, v in run_cfg.items() if k not in _IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def git_record(folder: Path) -> dict:
    """Commit of the git repository ``folder`` is in, whether it is dirty, and the diff of
    ``folder`` against HEAD (``{"commit": None, ...}`` outside a repository or without git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD", "--", ".")
        return {"commit": commit, "dirty": bool(diff.strip()), "diff": diff}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff": ""}


def file_hashes(trainer: dict, tracked: list[str] | None = None) -> tuple[str | None, dict[str, str]]:
    """(sha256 of the script or None, {path: sha256} of every other file the run reads:
    ``tracked`` (workflow.study.script_files.tracked_files), else ``trainer.inputs``)."""
    script = trainer.get("script")
    others = [p for p in (trainer.get("inputs") or [] if tracked is None else tracked) if p != script]
    return (sha256_file(script) if script else None), {p: sha256_file(p) for p in others}



def failure_reason(status: int, capture: MetricsCapture, metrics, tail: collections.deque,
                   time_limit_min: float | None = None) -> str | None:
    """Why the run failed, or None: its time limit (``time_limit_min``, when it ended the script),
    non-zero exit (status or signal + the log's last lines), a NaN/inf loss, or no val_loss
    captured (the preset or patterns + the log's last lines). The tail's lines are cut already
    (workflow.jobs.script_runner.cut_line): a reason stays under ~9,000 characters."""
    last_lines = " | ".join(line.rstrip() for line in list(tail)[-8:] if line.strip()) or "(no output)"
    if time_limit_min is not None:
        return (f"time limit of {time_limit_min:g} min reached (trainer.time_limit): the script was stopped; "
                f"last lines of its log: {last_lines}")
    if status != 0:
        how = (f"script was killed by signal {signal.Signals(-status).name}" if status < 0
               else f"script exited with status {status}")
        return f"{how}; last lines of its log: {last_lines}"
    if capture.nonfinite is not None:
        key, value, step = capture.nonfinite
        return f"diverged: {key} is {value} at step {step} (captured from the script's output)"
    if capture.final("val_loss") is None:
        return (f"no validation loss captured (metrics: {describe_metrics(metrics)}); "
                f"last lines of its log: {last_lines}")
    return None


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def loss_fingerprint(rows: list[dict]) -> str:
    """sha256 of the run's captured (step, val_loss, train_loss) sequence: equal for two seeds
    only when every captured loss is bit-identical (workflow.analysis.stats: the script ignores the seed)."""
    seq = [(r["step"], repr(r.get("val_loss")), repr(r.get("train_loss"))) for r in rows]
    return hashlib.sha256(json.dumps(seq).encode()).hexdigest()


def script_communication(rows: list[dict], tokens: float | None) -> dict | None:
    """What the script reports of its communication: the last captured ``comm_bytes`` /
    ``comm_calls`` (cumulative totals of the run, in its JSON-lines rows) and ``bytes_per_token``
    (bytes / tokens_seen, when both are known): result.json ``communication``, which the comm table
    and ``bytes_per_token_vs_loss.png`` read. None when no row has ``comm_bytes``."""
    last = {key: next((r[key] for r in reversed(rows) if isinstance(r.get(key), (int, float))), None)
            for key in ("comm_bytes", "comm_calls")}
    if last["comm_bytes"] is None:
        return None
    return {"bytes": float(last["comm_bytes"]), "calls": last["comm_calls"],
            "bytes_per_token": float(last["comm_bytes"]) / float(tokens) if tokens else None,
            "source": "the script's comm_bytes / comm_calls rows"}


def build_result(run_cfg: dict, res: dict, status: int, reason: str | None, rows: list[dict], capture: MetricsCapture,
                 seconds: float, attempts: int, cmd: list[str], env_keys: list[str], hashes, git: dict,
                 out_dir: Path) -> dict:
    """result.json of a finished script run (the built-in trainer's keys where they apply)."""
    trainer = run_cfg["trainer"]
    final_val = capture.final("val_loss")
    success = reason is None
    tokens = next((r["tokens_seen"] for r in reversed(rows) if r.get("tokens_seen") is not None), None)
    flops = next((r["flops"] for r in reversed(rows) if r.get("flops") is not None), None)
    if flops is None and tokens is not None and trainer.get("flops_per_token"):
        flops = float(tokens) * trainer["flops_per_token"]
    world = res["nproc_per_node"] * res["nodes"]
    script_sha, input_shas = hashes
    comm = script_communication(rows, tokens)
    return {
        "study": run_cfg.get("study"), "stage": run_cfg.get("stage"), "variant": run_cfg.get("variant"),
        "seed": run_cfg.get("seed"), "run_id": run_cfg.get("run_id"),
        "stage_seed_offset": run_cfg.get("stage_seed_offset"), "dataset": run_cfg.get("dataset"),
        "success": success, "reason": reason, "stopped_early": None,
        "final_step": max((r["step"] for r in rows), default=None),
        "num_iterations": run_cfg["train"].get("num_iterations"),
        "final_val_loss": _finite(final_val) if success else None,
        "final_train_loss": _finite(capture.final("train_loss")),
        "time_seconds": round(seconds, 3),
        "train_time_ms": round(seconds * 1000.0, 3),  # wall time: the script's own split is unknown
        "tokens_seen": tokens,
        "flops": flops,
        "flops_known": flops is not None,
        "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds > 0 else None,
        "world_size": world,
        "device": "cuda" if res["gpus"] else "cpu",
        "device_name": None,
        "gpus_per_node": res["gpus"],
        "exit_status": status,
        "attempts": attempts,
        "loss_fingerprint": loss_fingerprint(rows),
        "captured_rows": len(rows),
        "trainer": {
            "launcher": trainer.get("launcher"), "workdir": trainer.get("workdir"), "script": trainer.get("script"),
            "script_sha256": script_sha, "inputs_sha256": input_shas, "command": cmd, "env_keys": env_keys,
            "metrics": trainer.get("metrics"), "git_commit": git["commit"], "git_dirty": git["dirty"],
            "git_diff_file": "script_git_diff.patch" if git["diff"] else None,
        },
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hostname": platform.node(), "python_version": platform.python_version(),
        "config_hash": config_hash(run_cfg),
        "config": {"train": run_cfg["train"],  # no model: the script's own, not the built-in one
                   "trainer": {**trainer, "env": {key: NOT_RECORDED for key in trainer.get("env") or {}}}},
        "model_file": None,
        **({"communication": comm} if comm else {}),
        "end_time": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def no_space(*paths: Path | None) -> str:
    """``"<folder>: N MiB free"`` for each folder of ``paths`` (the disk that ran full)."""
    parts = []
    for path in dict.fromkeys(Path(p).resolve().parent if p.suffix else Path(p).resolve() for p in paths if p):
        try:
            parts.append(f"{path}: {shutil.disk_usage(path).free / 2**20:.1f} MiB free")
        except OSError:
            parts.append(f"{path}: free space unknown")
    return "; ".join(parts) + " (free some space, then run snakemake again: the run starts afresh)"


def say_on_full_disk(text: str, fd: int = 2) -> None:
    """Write ``text`` as the last line of the log on ``fd`` although its disk is full: when the
    write fails, the log's last bytes (a line cut mid-way anyway) make room for it."""
    data = ("\n" + text + "\n").encode()
    try:
        os.write(fd, data)
    except OSError:
        try:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - len(data)))
            os.write(fd, data)
        except OSError:
            pass
