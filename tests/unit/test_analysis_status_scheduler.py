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
        "103_4": {"state": "PENDING", "node": "None assigned", "elapsed": "00:00:00"},
    }


def test_slurm_seconds():
    """sacct's Elapsed: ``[D-]HH:MM:SS`` or ``MM:SS``."""
    assert slurm_seconds("00:01:02") == 62
    assert slurm_seconds("1-02:00:00") == 93600
    assert slurm_seconds("05:30") == 330
    assert slurm_seconds("") is None and slurm_seconds("x") is None and slurm_seconds(None) is None
