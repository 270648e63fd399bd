"""Issue 11 item 9, through the real Snakemake DAG: gate B fails, pivots to stage A's next-best
variant (a checkpoint adds its stage B runs), and gates it against the baseline once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_pipeline import snakemake

REPO = Path(__file__).resolve().parents[1]
PIVOT = REPO / "tests" / "configs" / "tiny_pivot.yaml"

pytestmark = pytest.mark.timeout(900)


def load(path: Path):
    return json.loads(path.read_text())


def test_gate_pivots_to_the_next_best_variant(tmp_path, shared_data_server):
    snakemake(tmp_path, "--cores", "2", configfiles=(PIVOT,), mirror=shared_data_server)
    results = tmp_path / "results" / "tiny-pivot"
    gate_a = load(results / "gates" / "gate_A.json")
    assert gate_a["advanced"] == ["twin"]
    gate_b = load(results / "gates" / "gate_B.json")
    assert gate_b["advanced"] == []
    assert "is not below the baseline's" in next(r for r in gate_b["ranking"] if r["variant"] == "twin")["reason"]
    assert gate_b["pivot"]["variant"] == "slow" and gate_b["pivot"]["run"] is True
    # the pivot variant ran stage B with stage B's seeds, and was gated once
    assert sorted(p.name for p in (results / "stage_B" / "slow").glob("seed_*")) == ["seed_2337", "seed_2338"]
    pivot = load(results / "gates" / "gate_B_pivot.json")
    assert pivot["pivot_of"]["variant"] == "slow" and pivot["advanced"] == []
    assert [r["variant"] for r in pivot["ranking"]] == ["baseline", "slow"]
    table = (results / "stage_B" / "table.md").read_text()
    assert "slow" in table and "Pivot: no variant passed gate B" in table
    # nothing reached stage C: no runs, no winners
    assert not list(results.glob("stage_C/*/seed_*"))
    assert load(results / "verdict.json")["winners"] == []
