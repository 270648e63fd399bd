"""Benchmarks that run: every script in bench/ in its ``--quick`` mode (seconds, tiny sizes), as a
user starts it, in a real subprocess. Checks only that it finishes and prints its ratios: never a
timing (the numbers of a quick run on a shared CI machine mean nothing).

Not here: ``bench/gpu_check.py`` and ``bench_train.py gpu`` (tests/integration/test_bench_gpu_check.py
runs ``bench/gpu_check.sh --dry`` and the gpu mode's code path on the CPU). ``bench_slurm_groups.py``
needs a SLURM cluster: without one its quick mode must say so and exit 0 (checked here); with one
(CI) its screen runs in tests/integration/test_slurm.py, beside the suite, so that this test does not
queue jobs on the cluster the SLURM tests are timing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

#: (script, arguments, a pattern its output must hold: the ratios it prints)
CASES = {
    "dag": ("bench_dag.py", [], r"dry_run .* ratio \d+\.\d+ \(CPU \d+\.\d+\)[\s\S]*noop_rerun .* ratio \d+\.\d+"),
    "comm": ("bench_comm.py", [], r"24comm\s+24\s+24\s+24/24\s+\d+\s+1\.000[\s\S]*6comm-final\s+.*\d+\.\d{3}"),
    "script_capture": ("bench_script_capture.py", [], r"capture overhead with \d+ us of work per step: \d+\.\d+x"),
    "tokenize": ("bench_tokenize.py", [], r"threads speed-up \d+\.\d+x[\s\S]*byte-tokenizer .* \d+\.\d+x copy"),
    "train_cpu": ("bench_train.py", ["cpu"], r'"ratio": \d+\.\d+'),
    "train_fast": ("bench_train.py", ["fast"], r'"ratio(_upper_bound)?": \d+\.\d+'),
    "train_muon": ("bench_train.py", ["muon"], r'"muon_adamw_step_ratio": \d+\.\d+[\s\S]*"muon_vs_per_matrix_reference"'),
    "job_overhead": ("bench_job_overhead.py", [], r"warm / fresh overhead per job: \d+\.\d+"),
}
#: bench/ files the quick runs above do not start, and where they are tested instead
ELSEWHERE = {"gpu_check.py": "tests/integration/test_bench_gpu_check.py (gpu_check.sh --dry)",
             "gpu_check.sh": "tests/integration/test_bench_gpu_check.py",
             "bench_slurm_groups.py": "test_slurm_groups_quick_mode_without_a_cluster below; tests/integration/test_slurm.py"}
NEEDS_SHARED_DATA = {"tokenize", "train_cpu", "train_fast", "train_muon", "job_overhead"}


def _run(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args, "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def _env(shared: Path | None) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if shared is not None:
        env["STAGERUN_SHARED_DATA"] = str(shared)
    return env


def test_every_bench_script_has_a_quick_run():
    """A new benchmark gets a case here (or a line in ELSEWHERE), so that it cannot rot unseen."""
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    covered = {script for script, _, _ in CASES.values()} | set(ELSEWHERE)
    assert scripts == covered, f"bench/ scripts without a quick run: {sorted(scripts - covered)}; " \
                               f"cases for missing scripts: {sorted(covered - scripts)}"
    for script in {script for script, _, _ in CASES.values()} | {"bench_slurm_groups.py"}:
        assert "--quick" in (BENCH / script).read_text(), f"bench/{script} has no --quick mode"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bench_quick_mode_finishes_and_prints_its_ratios(case, request):
    script, args, pattern = CASES[case]
    shared = request.getfixturevalue("shared_data") if case in NEEDS_SHARED_DATA else None
    proc = _run(script, args, _env(shared))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bench/{script} {' '.join(args)} --quick failed ({proc.returncode}):\n{out[-4000:]}"
    assert re.search(pattern, proc.stdout), f"bench/{script} printed no ratios ({pattern}):\n{proc.stdout[-3000:]}"
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if case != "tokenize":  # bench_tokenize writes its JSON only to --json
        assert json_lines, proc.stdout[-2000:]
        json.loads(json_lines[-1])


def test_slurm_groups_quick_mode_without_a_cluster():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_slurm_groups
    finally:
        sys.path.remove(str(BENCH))
    if bench_slurm_groups.cluster_problem() is None:
        pytest.skip("a SLURM cluster answers: its screen runs in tests/integration/test_slurm.py")
    proc = _run("bench_slurm_groups.py", [], _env(None))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bench_slurm_groups: skipped, no SLURM cluster here:" in proc.stdout, proc.stdout
