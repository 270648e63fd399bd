"""What a warm-start fork must share with a fresh process: interpreter, checkout, code, import-time environment.

The server takes its fingerprint before it imports torch; a job whose fingerprint differs is
refused and starts fresh (docs/performance.md, warm start). Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

IMPORT_TIME_ENV_PREFIXES = ("TORCH_", "TORCHDYNAMO_", "TORCHINDUCTOR_", "PYTORCH_", "KMP_")
RUN_TIME_ENV_PREFIXES = ("TORCH_NCCL_", "TORCH_DISTRIBUTED_", "TORCHELASTIC_")  # read when the process group starts
IMPORT_TIME_ENV = ("CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHASHSEED",
                   "SLURM_JOB_ID")  # the last: the trainer must stay in the launcher's SLURM job


# --------------------------------------------------------------------------- fingerprint

def fingerprint(environ: dict | None = None, package_dir: str | os.PathLike | None = None) -> dict:
    """What must be equal for a fork of the server to run a job as a fresh process would.

    Args:
        environ: the job's environment (default ``os.environ``).
        package_dir: the ``workflow`` package folder (default: this module's).
    Returns:
        ``{"python": realpath of sys.executable, "package": the package folder, "code": SHA-256
        of (relative path, size, st_mtime_ns) of every .py file under it, "env": the
        import-time environment variables}`` (module docstring); JSON-serializable.
    """
    environ = os.environ if environ is None else environ
    package_dir = Path(package_dir or Path(__file__).resolve().parents[1]).resolve()  # workflow/
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            digest.update(f"{path.relative_to(package_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    env = {key: value for key, value in sorted(environ.items())
           if (key in IMPORT_TIME_ENV or key.startswith(IMPORT_TIME_ENV_PREFIXES))
           and not key.startswith(RUN_TIME_ENV_PREFIXES)}
    return {"python": os.path.realpath(sys.executable), "package": str(package_dir), "code": digest.hexdigest(),
            "env": env}


def fingerprint_mismatch(server: dict, job: dict) -> str | None:
    """What differs between the server's and a job's :func:`fingerprint` (None: nothing)."""
    if job.get("python") != server["python"]:
        return f"another interpreter ({job.get('python')}, the server's is {server['python']})"
    if job.get("package") != server["package"]:
        return f"another checkout ({job.get('package')}, the server's is {server['package']})"
    if job.get("code") != server["code"]:
        return f"a .py file under {server['package']} changed since the server started"
    env = job.get("env") or {}
    names = sorted(k for k in set(env) | set(server["env"]) if env.get(k) != server["env"].get(k))
    if names:
        return f"environment variables differ from the server's: {', '.join(names)}"
    return None
