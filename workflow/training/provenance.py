"""Where and how a run ran: git state, SLURM job (FLOPs: workflow.model.flops)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

def slurm_job_id() -> str | None:
    """The SLURM job id when running under SLURM (``SLURM_JOB_ID``), else None.

    Recorded in result.json and train.log so a run's SLURM log
    (``.snakemake/slurm_logs/rule_train/<stage>_<variant>_<seed>/<jobid>.log``) can be found
    from its results folder."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")


def git_state(repo: Path = REPO_ROOT) -> dict:
    """Commit of ``repo`` and, when the tree is dirty, the diff against HEAD.

    Returns ``{"commit": str | None, "dirty": bool | None, "diff": str}`` (None when
    ``repo`` is not a git checkout or git is missing).
    """
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return {"commit": commit, "dirty": dirty, "diff": git("diff", "HEAD") if dirty else ""}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff": ""}
