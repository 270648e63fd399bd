"""What the script runner captures from a script's output and its metrics file, on real
processes with small scripts written here: a metrics file that is truncated or replaced is read
again from its start, a step counter that goes back starts a new segment (the result is the last
row printed), long lines are cut in failure reasons, ``\\r``-separated output counts as lines,
and a local time limit ends a script (and its children) that would never end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow.study.schema import validate_section
from workflow.study.trainer_section import resolve_paths

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"num_iterations": 5, "lr": 0.001, "batch_size": 4}


def run_script(tmp_path: Path, source: str, metrics="nanogpt", timeout: int = 120, **trainer) -> tuple[int, dict, str]:
    """Write ``source`` as train.py in ``tmp_path``, run it through ``python -m workflow.run_script``
    as a job would: (exit status, result.json, the attempt log)."""
    (tmp_path / "train.py").write_text(source)
    section = validate_section({"script": "train.py", "metrics": metrics, **trainer}, "trainer", "trainer")
    cfg = {"study": "t", "stage": "A", "variant": "v", "seed": 1337, "run_id": 0, "stage_seed_offset": 0,
           "dataset": "shakespeare_char", "model": {}, "train": validate_section(TRAIN, "train", "train"),
           "trainer": resolve_paths(section, tmp_path)}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "workflow.run_script", "--log", str(out / "train.log"), "--run-config",
           json.dumps(cfg), "--out-dir", str(out), "--meta", str(tmp_path / "no-data" / "meta.json")]
    out.mkdir(exist_ok=True)
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout)
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None
    log = (out / "train.log").read_text(errors="replace") if (out / "train.log").exists() else ""
    return proc.returncode, result, proc.stdout + proc.stderr + log[-20_000:]


def test_a_metrics_file_reopened_for_writing_is_read_again(tmp_path):
    source = (
        "import json, os, time\n"
        "path = os.environ['STAGERUN_METRICS']\n"
        "with open(path, 'a') as f:\n"
        "    for step in range(3):\n"
        "        f.write(json.dumps({'step': step, 'val_loss': 3.0 - step * 0.1}) + '\\n'); f.flush(); time.sleep(0.3)\n"
        "time.sleep(0.8)  # the runner has read rows 0-2\n"
        "with open(path, 'w') as f:  # reopened with 'w': the file starts again, shorter\n"
        "    for step in range(3, 6):\n"
        "        f.write(json.dumps({'step': step, 'val_loss': 3.0 - step * 0.1}) + '\\n')\n"
    )
    status, result, log = run_script(tmp_path, source, metrics="jsonl")
    assert status == 0 and result["success"], log
    assert result["final_step"] == 5 and abs(result["final_val_loss"] - 2.5) < 1e-12, log
    assert "truncated or replaced" in log


def test_a_step_counter_that_goes_back_starts_a_new_segment(tmp_path):
    source = (
        "losses = [(0, 3.0), (10, 2.8), (20, 2.6), (0, 2.5), (10, 2.4)]  # per-epoch step counters\n"
        "for step, loss in losses:\n"
        "    print(f'step {step}: train loss {loss:.4f}, val loss {loss:.4f}')\n"
    )
    status, result, log = run_script(tmp_path, source)
    assert status == 0 and result["success"], log
    assert result["final_val_loss"] == 2.4  # the last val loss printed, not step 20's
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in rows] == [3.0, 2.8, 2.6, 2.5, 2.4]  # in the order printed
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)


def test_huge_lines_are_cut_and_carriage_returns_split_lines(tmp_path):
    source = (
        "import sys\n"
        "for i in range(10):\n"
        "    sys.stdout.write('#' * 2_000_000 + '\\n')  # a progress bar's 2 MB line\n"
        "sys.stdout.write('10%\\r50%\\rstep 3: train loss 2.0000, val loss 2.1000\\r100%\\n')\n"
        "sys.stdout.flush()\n"
        "sys.exit(3)\n"
    )
    status, result, log = run_script(tmp_path, source)
    assert status == 0 and not result["success"]
    reason = result["reason"]
    assert len(reason) < 16_000 and "more characters cut]" in reason, reason[:300]
    assert reason.startswith("script exited with status 3") and "| 100%" in reason  # \r ended lines
    assert result["final_step"] == 3  # the val loss between two \r was captured
    assert (tmp_path / "run" / "result.json").stat().st_size < 32_000


def test_a_script_past_its_time_limit_is_stopped_with_its_children(tmp_path):
    source = (
        "import subprocess, sys, time\n"
        "print('step 0: train loss 3.0000, val loss 3.0000', flush=True)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])  # holds stdout\n"
        "time.sleep(600)\n"
    )
    start = time.monotonic()
    status, result, log = run_script(tmp_path, source, time_limit=0.05)  # minutes: 3 s
    assert status == 0 and not result["success"], log
    assert "time limit of 0.05 min reached" in result["reason"]
    assert time.monotonic() - start < 40, log


def test_a_run_started_afresh_removes_earlier_attempt_logs(tmp_path):
    source = "print('step 0: train loss 3.0000, val loss 3.0000')\n"
    run_script(tmp_path, source)
    (tmp_path / "run" / "train.attempt-2.log").write_text("an abandoned attempt of an earlier run\n")
    status, result, _ = run_script(tmp_path, source)  # no script_state.json: a fresh run
    assert status == 0 and result["attempts"] == 1
    assert sorted(p.name for p in (tmp_path / "run").glob("train.attempt-*.log")) == ["train.attempt-1.log"]


def test_communication_a_script_reports_reaches_result_json(tmp_path):
    source = (
        "import json, os\n"
        "with open(os.environ['STAGERUN_METRICS'], 'a') as f:\n"
        "    for step in (1, 2):\n"
        "        f.write(json.dumps({'step': step, 'val_loss': 3.0 - step / 10, 'tokens_seen': 1000 * step,\n"
        "                            'comm_bytes': 4000 * step, 'comm_calls': 2 * step}) + '\\n')\n"
    )
    status, result, log = run_script(tmp_path, source, metrics="jsonl")
    assert status == 0 and result["success"], log
    assert result["communication"]["bytes"] == 8000 and result["communication"]["calls"] == 4
    assert result["communication"]["bytes_per_token"] == 4.0  # what bytes_per_token_vs_loss.png plots


def test_a_full_disk_names_the_folder_and_its_free_space(full_disk_folder):
    small = full_disk_folder
    source = "for i in range(20000):\n    print(f'step {i}: train loss 3.0000, val loss 3.0000 ' + 'x' * 80)\n"
    status, result, log = run_script(small, source)
    assert status == 1 and result is None, log[-2000:]
    assert re.search(rf"script_runner: no space left on device while the script ran: {re.escape(str(small))}\S*: "
                     r"[\d.]+ MiB free", log), log[-2000:]
