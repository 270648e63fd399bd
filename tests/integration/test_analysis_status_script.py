"""``workflow.status`` for a script run (a real script runner process and a small script written
here): the running run is recognised by its ``workflow.run_script`` process, with the step and
val loss captured so far, and a quiet live script is never shown failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from workflow.analysis.status_runs import run_status
from workflow.analysis.status_scheduler import scan_processes
from workflow.study.schema import validate_section
from workflow.study.trainer_section import resolve_paths

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """import time
for step in range(0, 40, 10):
    print(f"step {step}: train loss {3 - step / 100:.4f}, val loss {3 - step / 100:.4f}", flush=True)
time.sleep(120)  # quiet for long: still training
"""


def test_a_running_quiet_script_is_running_with_its_step(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    trainer = resolve_paths(validate_section({"script": "train.py"}, "trainer", "trainer"), tmp_path)
    cfg = {"study": "t", "stage": "A", "variant": "v", "seed": 1, "run_id": 0, "stage_seed_offset": 0,
           "dataset": "shakespeare_char", "model": {}, "train": validate_section({}, "train", "train"),
           "trainer": trainer}
    run_dir = tmp_path / "stage_A" / "v" / "seed_1"
    job = subprocess.Popen([sys.executable, "-m", "workflow.run_script", "--log", str(run_dir / "train.log"),
                            "--run-config", json.dumps(cfg), "--out-dir", str(run_dir), "--meta",
                            str(tmp_path / "meta.json")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            time.sleep(1.0)
            status = run_status(run_dir, "A", "v", 1, planned_total=100, processes=scan_processes(),
                                stale_after_s=0.0)  # every write is "old": only the process says it lives
            if status.step == 20:  # rows are written once a later step starts: 30 is still open
                break
        assert status is not None and status.state == "running" and status.pid == job.pid, status
        assert status.step == 20 and status.val_loss == 2.8 and status.total == 100
        assert status.eta_s is not None and status.eta_s > 0
    finally:
        job.terminate()
        job.wait(timeout=30)
