"""Per-job overhead (issue 12): what a training job does besides training. The trainer's
process set-up must not import torch's compiler stack for an eager run (torch 2.13's
``use_deterministic_algorithms`` imports inductor, dynamo and sympy: ~2 s per job), and the
numerics stay deterministic. bench/bench_job_overhead.py measures the whole overhead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, torch
from workflow.distributed import DistContext
from workflow.train import configure_backends
configure_backends(DistContext(), compile=sys.argv[1] == "compile")
print(json.dumps({"deterministic": torch.are_deterministic_algorithms_enabled(),
                  "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                  "fill": torch.utils.deterministic.fill_uninitialized_memory,
                  "inductor": "torch._inductor" in sys.modules,
                  "inductor_deterministic": sys.modules["torch._inductor.config"].deterministic
                  if "torch._inductor.config" in sys.modules else None}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=REPO,
                         check=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eager_cpu_set_up_is_deterministic_without_importing_the_compiler():
    eager = probe("eager")
    assert eager == {"deterministic": True, "warn_only": True, "fill": False, "inductor": False,
                     "inductor_deterministic": None}
    compiled = probe("compile")  # torch.compile runs: its inductor gets the flag too
    assert compiled["deterministic"] and compiled["inductor"] and compiled["inductor_deterministic"] is True
