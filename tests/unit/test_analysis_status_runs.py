"""workflow.analysis.status_runs: a run's state from its folder and its queued SLURM job (the
squeue line as SLURM 22.05 prints it for a requeued job; the live screen is in
tests/integration/test_slurm.py)."""

from __future__ import annotations

import json

import pytest

from workflow.analysis.status_runs import run_status
from workflow.analysis.status_scheduler import parse_squeue, run_comment

pytestmark = pytest.mark.unit


def _preempted_run(run_dir, *, logged_step: int, checkpoint: int):
    run_dir.mkdir(parents=True)
    rows = [{"step": s, "train_loss": 3.0} for s in range(0, logged_step + 1, 20)]
    (run_dir / "metrics.partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "checkpoint" / "a").mkdir(parents=True)
    (run_dir / "checkpoint" / "a" / "manifest.json").write_text(json.dumps({"step": checkpoint}))
    (run_dir / "train.attempt-1.log").write_text(
        "run tiny/A/baseline seed 1337: 1 parameters, num_iterations 400\nSLURM job 14 on n1\n"
        f"PREEMPTED by signal at step {checkpoint}: checkpoint saved\n"
        "launch: srun exited 75; worker exit codes {0: 75, 1: 75}; job exit status 75\n")


def test_requeued_job_shows_requeued_with_reason_start_and_the_scontrol_line(tmp_path):
    run_dir = tmp_path / "stage_A" / "baseline" / "seed_1337"
    _preempted_run(run_dir, logged_step=380, checkpoint=388)
    queued = parse_squeue("14|PENDING||BeginTime|2026-12-07T18:17:42|rule_train_wildcards_A_baseline_1337|/w\n")
    rs = run_status(run_dir, "A", "baseline", 1337, queued=queued[run_comment("A", "baseline", 1337)])
    assert (rs.state, rs.slurm_state, rs.slurm_job, rs.node) == ("preempted", "requeued", "14", None)
    assert rs.step == 388 and "preempted at step 388" in rs.detail  # the step column and the reason agree
    assert "SLURM job 14 PENDING (BeginTime), expected start 2026-12-07T18:17:42" in rs.detail
    assert rs.detail.endswith("to start it now: scontrol update jobid=14 StartTime=now")


def test_queued_job_before_any_log_has_its_id_and_no_node(tmp_path):
    run_dir = tmp_path / "stage_A" / "lr" / "seed_1338"
    queued = parse_squeue("31|PENDING||Priority|N/A|rule_train_wildcards_A_lr_1338|/w\n")["rule_train_wildcards_A_lr_1338"]
    rs = run_status(run_dir, "A", "lr", 1338, queued=queued)
    assert (rs.state, rs.slurm_job, rs.node, rs.detail) == ("pending", "31", None, "SLURM job 31 PENDING (Priority)")
    running = {**queued, "state": "RUNNING", "node": "n2"}
    rs = run_status(run_dir, "A", "lr", 1338, queued=running)
    assert (rs.state, rs.slurm_job, rs.node, rs.slurm_state) == ("running", "31", "n2", "RUNNING")


def test_preempted_without_a_queued_job_waits_for_a_rerun(tmp_path):
    run_dir = tmp_path / "stage_A" / "baseline" / "seed_1337"
    _preempted_run(run_dir, logged_step=380, checkpoint=388)
    rs = run_status(run_dir, "A", "baseline", 1337, now=0)
    assert rs.state == "preempted" and rs.slurm_state != "requeued" and rs.step == 388
