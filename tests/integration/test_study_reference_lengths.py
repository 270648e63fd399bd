"""The seed studies announce the reference code's run lengths in their dry runs."""

import re
from pathlib import Path

import pytest

from test_pipeline import snakemake

STUDIES = Path(__file__).resolve().parents[2] / "config" / "studies"

pytestmark = pytest.mark.timeout(300)


def test_gossip_final_stage_trains_the_references_8844_rounds(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2", configfiles=(STUDIES / "gossip.yaml",))
    out = proc.stdout + proc.stderr
    steps = {m.group(1): int(m.group(2).replace(",", ""))
             for m in re.finditer(r"stage (\w+): .* runs of ([\d,]+) steps", out)}
    assert steps["C"] == steps["B"] == 8844 and steps["A"] < 8844, steps
    for variant in ("complete-ns-paper", "exp-ns-paper", "ring-ns-paper"):
        assert f"stage_A/{variant}/" in out
    assert '"momentum": 0.2' in out and '"schedule": "inv_sqrt"' in out
    assert '"metric": "val_loss"' in out  # the gates' metric (gate.metric), schema default
