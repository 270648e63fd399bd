"""Where and how a run ran: git state, SLURM job, device peak FLOP/s, FLOPs per token."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Peak dense bf16 tensor-core FLOP/s per GPU by device-name substring (first match wins, so
# more specific names come first). Vendor datasheets: NVIDIA H100 / H200 / A100 / L40S / L40 / L4 / A10.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5 (HBM3)
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of one GPU named ``device_name`` (torch.cuda.get_device_name),
    or None for CPUs and GPUs not in :data:`PEAK_BF16_FLOPS`."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def flops_per_token(cfg, seq_len: int, n_params_matmul: int) -> float:
    """Training FLOPs per token (forward + backward) of a GPT: ``6 N + 12 L H Q T``.

    N = parameters that take part in matmuls (blocks + lm_head; embeddings are lookups),
    L = n_layer, H = n_head, Q = head dim, T = ``seq_len`` (tokens). The second term is the
    attention score / value matmuls (full, not causal-halved, as in the source).
    Source: PaLM (Chowdhery et al. 2022) appendix B; nanoGPT model.py ``estimate_mfu``.
    """
    return 6.0 * n_params_matmul + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


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
