"""workflow.analysis.status_scheduler: sacct's answers as SLURM prints them (the real sacct is in
tests/integration/test_analysis_status.py)."""

from __future__ import annotations

from workflow.analysis.status_scheduler import parse_sacct, slurm_seconds


def test_parse_sacct_lines():
    """``sacct -X -n -P --format=JobID,State,NodeList,Elapsed`` as SLURM prints it."""
    text = "101|RUNNING|n1|00:01:02\n102|CANCELLED by 1000|n2|00:00:05\n103_4|PENDING|None assigned|00:00:00\n"
    assert parse_sacct(text) == {
        "101": {"state": "RUNNING", "node": "n1", "elapsed": "00:01:02"},
        "102": {"state": "CANCELLED", "node": "n2", "elapsed": "00:00:05"},
        "103_4": {"state": "PENDING", "node": None, "elapsed": "00:00:00"},
    }


def test_slurm_seconds():
    """sacct's Elapsed: ``[D-]HH:MM:SS`` or ``MM:SS``."""
    assert slurm_seconds("00:01:02") == 62
    assert slurm_seconds("1-02:00:00") == 93600
    assert slurm_seconds("05:30") == 330
    assert slurm_seconds("") is None and slurm_seconds("x") is None and slurm_seconds(None) is None


def test_parse_squeue_lines_and_the_run_comment():
    """``squeue -h -o '%i|%T|%N|%r|%S|%k|%Z'`` as SLURM 22.05 prints a queued, a requeued and a running job."""
    from workflow.analysis.status_scheduler import parse_squeue, run_comment

    text = ("31|PENDING||Priority|N/A|rule_train_wildcards_A_lr-1_1337|/w\n"
            "14|PENDING||BeginTime|2026-12-07T18:17:42|rule_train_wildcards_A_baseline_1337|/w\n"
            "15|RUNNING|n2|None|2026-12-07T18:10:00|rule_gate_wildcards_A|/w\n")
    jobs = parse_squeue(text)
    assert jobs[run_comment("A", "lr-1", 1337)] == {"job": "31", "state": "PENDING", "node": None,
                                                   "reason": "Priority", "start": None, "directory": "/w"}
    assert jobs["rule_train_wildcards_A_baseline_1337"]["start"] == "2026-12-07T18:17:42"
    assert jobs["rule_gate_wildcards_A"]["node"] == "n2" and jobs["rule_gate_wildcards_A"]["reason"] is None
