"""bench/gpu_check.sh --dry on the CPU (what CI can run of the GPU check) and the GPU benchmark's
own code path on the CPU (bench/bench_train.py gpu --device cpu).

The dry run is the real script: its CPU parts run (environment, every run config validated and
both study commands dry-run by Snakemake, a 4-step CPU run through the short runs' runner) and
every CUDA part must be reported skipped, with its reason, in both summaries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from gpu_check import CUDA_PARTS, PARTS  # noqa: E402  (bench/gpu_check.py)

pytestmark = pytest.mark.timeout(300)


def gpu_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), *args, str(out)], capture_output=True,
                          text=True, timeout=240, cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), **env})


def test_dry_run_reports_every_cuda_part_skipped_with_its_reason(tmp_path, shared_data):
    out = tmp_path / "gpu_check"
    proc = gpu_check(out, "--dry", STAGERUN_MIRROR=str(shared_data))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry"] is True and summary["ok"] is True
    assert list(summary["parts"]) == list(PARTS)
    for name, part in summary["parts"].items():
        if name in CUDA_PARTS:
            assert part["status"] == "skipped" and part["cuda"] is True, part
            assert part["reason"].startswith("--dry (CPU dry run): needs CUDA ("), part
        else:
            assert part["status"] == "ok", part
    assert summary["parts"]["plan"]["results"]["snakemake_dry_run"].keys() == {"warm_on", "warm_off", "study"}
    assert len(summary["parts"]["plan"]["results"]["configs"]) == 9  # 5 block runs + 4 strategy runs
    smoke = summary["parts"]["cpu_smoke"]["results"]["cpu_smoke"]
    assert smoke["final_val_loss"] < smoke["first_val_loss"]
    markdown = (out / "gpu_check.md").read_text()
    for name in CUDA_PARTS:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        assert "| yes | skipped |" in row and "--dry (CPU dry run): needs CUDA" in row, row
    assert "| cpu_smoke | ok | 1 |" in markdown


def test_budget_too_small_skips_parts_with_the_reason(tmp_path):
    """A part that no longer fits the budget is skipped and says so (the slice is never overrun)."""
    out = tmp_path / "gpu_check"
    proc = gpu_check(out, "--dry", GPU_CHECK_BUDGET_S="30")
    summary = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert {p["status"] for p in summary["parts"].values()} == {"skipped"}
    assert all("no time left in the 30 s budget" in p["reason"] for p in summary["parts"].values())


def test_bench_train_gpu_mode_code_path_on_cpu(tmp_path, shakespeare_char_meta):
    """bench_train.py gpu's run and numbers on a tiny model on the CPU (no measurement: it checks
    that the mode the GPU check runs works end to end and reports what docs/performance.md says)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_train.py"), "gpu", "--device", "cpu", "--preset", "nanogpt-small",
         "--steps", "12", "--batch-size", "8", "--device-batch-size", "4", "--compile", "off", "--val-tokens", "256",
         "--data", str(shakespeare_char_meta), "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    eager = result["runs"]["eager"]
    assert result["tokens_per_s_eager"] == eager["tokens_per_s"] > 0
    assert eager["tokens_per_step"] == 8 * 32 and eager["step_ms"] > 0
    assert eager["mfu"] is None and result["peak_flops"] is None  # CPU: no peak FLOP/s
    assert eager["final_train_loss"] < 4.17  # ln 65: it learned a little in 12 steps
