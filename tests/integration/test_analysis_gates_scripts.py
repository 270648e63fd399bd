"""Gates and verdicts of script runs (real script runner processes, small scripts written here):
runs of one variant that ran different versions of the script are named and neither advanced nor
crowned; a variant whose seeds give bit-identical losses is not advanced by top_k while another
variant can be; zero-variance per-seed differences get their own reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from workflow.analysis.gates import decide_gate
from workflow.analysis.stats import summarize_runs
from workflow.analysis.verdict import decide_verdict
from workflow.study.schema import validate_section
from workflow.study.trainer_section import resolve_paths

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """import sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
seed = int(args["--seed"]) if args["--uses_seed"] == "1" else 0
for step in range(3):
    loss = 3.0 - 0.1 * step + {shift} + (seed % 97) * 1e-3
    print(f"step {{step}}: train loss {{loss:.6f}}, val loss {{loss:.6f}}")
"""


def run(tmp_path: Path, variant: str, seed: int, shift: float = 0.0, uses_seed: bool = True) -> dict:
    """One run of ``variant`` (its own script, written with ``shift``) through workflow.run_script."""
    folder = tmp_path / variant
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text(SCRIPT.format(shift=shift))
    section = validate_section({"script": "train.py", "args": ["--seed={seed}", f"--uses_seed={int(uses_seed)}"]},
                               "trainer", "trainer")
    cfg = {"study": "t", "stage": "A", "variant": variant, "seed": seed, "run_id": 0, "stage_seed_offset": 0,
           "dataset": "shakespeare_char", "model": {}, "train": validate_section({}, "train", "train"),
           "trainer": resolve_paths(section, folder)}
    out = folder / f"seed_{seed}"
    subprocess.run([sys.executable, "-m", "workflow.run_script", "--run-config", json.dumps(cfg), "--out-dir", str(out),
                    "--meta", str(tmp_path / "meta.json")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                   check=True, capture_output=True, timeout=60)
    return json.loads((out / "result.json").read_text())


def test_a_script_edited_mid_stage_is_named_and_not_advanced(tmp_path):
    runs = {"baseline": [run(tmp_path, "baseline", s) for s in (1, 2, 3)],
            "edited": [run(tmp_path, "edited", s, shift=-0.5) for s in (1, 2)]}
    runs["edited"].append(run(tmp_path, "edited", 3, shift=-0.4))  # the script changed before seed 3
    runs["steady"] = [run(tmp_path, "steady", s, shift=-0.2) for s in (1, 2, 3)]
    summaries = {v: summarize_runs(rs) for v, rs in runs.items()}
    assert summaries["steady"]["mixed_versions"] is None
    gate = decide_gate("A", validate_section({"rule": "top_k", "k": 1}, "gate", "gate"), summaries, "baseline")
    row = next(r for r in gate["ranking"] if r["variant"] == "edited")
    assert gate["advanced"] == ["steady"] and not row["advanced"]
    assert "ran 2 versions of the script or its inputs (train.py changed" in row["reason"], row["reason"]
    verdict = decide_verdict(summaries, "baseline", validate_section({"alpha": 0.5}, "verdict", "v"))
    entry = next(e for e in verdict["results"] if e["variant"] == "edited")
    assert not entry["winner"] and "cannot win: its runs ran 2 versions" in entry["verdict"]


def test_an_ignored_seed_is_not_advanced_and_zero_variance_has_its_reason(tmp_path):
    runs = {"baseline": [run(tmp_path, "baseline", s) for s in (1, 2, 3)],
            "deaf": [run(tmp_path, "deaf", s, shift=-0.5, uses_seed=False) for s in (1, 2, 3)],
            "other": [run(tmp_path, "other", s, shift=-0.1) for s in (1, 2, 3)]}
    summaries = {v: summarize_runs(rs) for v, rs in runs.items()}
    gate = decide_gate("A", validate_section({"rule": "top_k", "k": 1}, "gate", "gate"), summaries, "baseline")
    deaf = next(r for r in gate["ranking"] if r["variant"] == "deaf")
    assert gate["advanced"] == ["other"] and not deaf["advanced"]  # though its mean is the lowest
    assert "not eligible" in deaf["reason"] and "ignores the seed" in deaf["reason"]
    verdict = decide_verdict(summaries, "baseline", validate_section({"alpha": 0.5}, "verdict", "v"))
    by_name = {e["variant"]: e for e in verdict["results"]}
    assert "seed-matched" not in by_name["deaf"]["verdict"] and "ignores the seed" in by_name["deaf"]["verdict"]
    # "other" differs from the baseline by the same amount on every seed: zero variance, said as such
    assert "per-seed differences from baseline are all equal" in by_name["other"]["verdict"], by_name["other"]["verdict"]
