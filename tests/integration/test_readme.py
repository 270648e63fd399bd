"""A study written from the README alone: the YAML and the commands of README.md's "Running
studies" section, run as written (``snakemake`` -> this interpreter's Snakemake with the
repository's Snakefile, in a fresh folder; the data comes from the loopback mirror of the
shared test data, added to the study as ``mirror:``).

Checks what each command promises: the stage-A line runs only stage A; the whole-study line
reuses stage A and finishes with a verdict; ``why_rerun`` names the changed key for exactly
the stage-B runs; the ``set=`` line reruns stage B (and what follows) with the new length and
leaves stage A alone; the ``--report`` line writes results/<study>/report.html, which carries
the summary and the answer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- tests/integration/test_readme.py"

pytestmark = pytest.mark.timeout(1500)


def readme_study() -> tuple[str, str, list[str]]:
    """(file name, YAML text, command lines) of the README block pair after the marker."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, "README.md lost its tested study (the marker comment)"
    after = text[text.index(MARKER):]
    blocks = re.findall(r"```(\w+)\n(.*?)```", after, flags=re.S)
    (lang_y, study), (lang_c, commands) = blocks[0], blocks[1]
    assert (lang_y, lang_c) == ("yaml", "bash")
    name = re.match(r"#\s*(\S+\.yaml)", study).group(1)
    return name, study, [line for line in commands.splitlines() if line.strip()]


def run(line: str, workdir: Path) -> str:
    """One README command line, as written but for the Snakemake executable and the Snakefile."""
    args = shlex.split(line, comments=True)
    assert args[0] == "snakemake", line
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args[1:]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def test_readme_study_runs_reruns_after_a_change_and_gets_its_report(tmp_path, shared_data_server):
    name, study_text, lines = readme_study()
    study = yaml.safe_load(study_text)
    (tmp_path / name).write_text(study_text + f"mirror: {shared_data_server}\n")
    results = tmp_path / "results" / study["study"]
    stage_a_line, whole_line, why_line, change_line, report_line = lines
    assert "-- stage_A" in stage_a_line and "why_rerun" in why_line and "--report" in report_line

    run(stage_a_line, tmp_path)
    assert len(list(results.glob("stage_A/*/seed_*/result.json"))) == len(study["variants"]) * study["stages"]["A"]["seeds"]
    assert not (results / "stage_B").exists() and not (results / "verdict.json").exists()

    out = run(whole_line, tmp_path)
    assert not re.search(r"rule train:.*?wildcards: stage=A", out, flags=re.S)  # stage A reused
    verdict = json.loads((results / "verdict.json").read_text())
    stage_b = sorted(results.glob("stage_B/*/seed_*/result.json"))
    assert stage_b and all(json.loads(p.read_text())["final_step"] == study["stages"]["B"]["train"]["num_iterations"]
                           for p in stage_b)
    stage_a_times = {p: p.stat().st_mtime_ns for p in results.glob("stage_A/*/seed_*/result.json")}

    key, value = re.search(r"set='([\w.]+)=(\d+)'", change_line).groups()
    assert key == "stages.B.train.num_iterations", change_line
    why = run(why_line, tmp_path)
    old = study["stages"]["B"]["train"]["num_iterations"]
    assert f"{len(stage_b)} run(s) changed" in why and f"train.num_iterations: {old} -> {value}" in why, why
    assert "B/" in why and "A/" not in why.split("changed", 1)[1]

    run(change_line, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in stage_a_times} == stage_a_times  # stage A untouched
    assert all(json.loads(p.read_text())["final_step"] == int(value) for p in stage_b)

    run(report_line, tmp_path)
    report = tmp_path / shlex.split(report_line)[2]
    assert report == results / "report.html"
    html = report.read_text()
    assert "summary.html" in html and "1 Summary" in html
    verdict = json.loads((results / "verdict.json").read_text())
    answer = "Winner" if verdict["winners"] else "No winner"
    assert answer in html
