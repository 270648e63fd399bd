"""The communication study's DAG: dry runs of the shipped comm studies list their jobs with
GPU resources, and a tiny comm study run by ``snakemake`` builds comm.csv / comm.md and the
three figures whose numbers agree with the runs (scipy on the runs' values)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from scipy import stats as sps
from test_pipeline import snakemake

from workflow.analysis.comm_report import pattern_text, fit_trend, plot_bytes_per_token
from workflow.model.block_spec import expand_block_pattern
from workflow.parallel.tp_spec import analytic_tp_syncs

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "config" / "studies"
COMM_TINY = REPO / "tests" / "configs" / "comm_tiny.yaml"
TINY = REPO / "tests" / "configs" / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.timeout(900)


def dry_run(tmp_path: Path, configfile: Path, *targets: str) -> str:
    proc = snakemake(tmp_path, "-n", "--cores", "2", *targets, configfiles=(configfile,))
    return proc.stdout + proc.stderr


def train_jobs(out: str) -> list[str]:
    """The resources line of every `rule train:` job in a dry run's output."""
    blocks = re.split(r"\n\s*\n", out)
    return [re.search(r"resources: (.*)", b).group(1) for b in blocks if re.search(r"^rule train:", b, re.M)]


def test_gpu_comm_study_dry_run_lists_gpt2_jobs_with_gpus(tmp_path):
    out = dry_run(tmp_path, STUDIES / "comm_study.yaml")
    jobs = train_jobs(out)
    assert len(jobs) == 9 * 3, out[-3000:]  # eight configurations + the clustered control, 3 seeds
    assert all("gpu=8" in j and "nproc_per_node=8" in j and "gpu_model=h100" in j for j in jobs), jobs[:2]
    for rule in ("comm_table", "comm_vs_loss_plot", "tokens_per_s_vs_comm_plot", "bytes_per_token_plot"):
        assert re.search(rf"^{rule}\s+1\b", out, re.M), rule
    assert '"preset": "gpt2-124m"' in out and '"num_iterations": 20000' in out
    assert not (tmp_path / "results").exists()


def test_cpu_comm_study_dry_run_lists_cpu_jobs_and_the_comm_target(tmp_path):
    out = dry_run(tmp_path, STUDIES / "comm_study_cpu.yaml")
    jobs = train_jobs(out)
    assert len(jobs) == 13 * 3  # 9 patterns + the 4 with parallel blocks under the reference merge
    assert out.count('"parallel_merge": "reference"') >= 4 * 3
    assert all("gpu=" not in j and "nproc_per_node=1" in j for j in jobs), jobs[:2]
    target = dry_run(tmp_path, STUDIES / "comm_study_cpu.yaml", "comm_study")
    assert re.search(r"^train\s+39\b", target, re.M) and re.search(r"^comm_study\s+1\b", target, re.M)
    assert "sample_text" not in target  # only what the comm assets need


def test_study_without_sync_counts_has_no_comm_rules(tmp_path):
    out = dry_run(tmp_path, TINY)
    assert "comm_table" not in out and "comm_vs_loss_plot" not in out
    proc = snakemake(tmp_path, "-n", "--cores", "2", "comm_study", configfiles=(TINY,), check=False)
    assert proc.returncode != 0 and "comm_study" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def comm_tiny(tmp_path_factory, shared_data_server):
    workdir = tmp_path_factory.mktemp("comm_tiny")
    snakemake(workdir, "--cores", "2", "comm_study", "results/comm-tiny/plots/bytes_per_token_vs_loss.png",
              configfiles=(COMM_TINY,), mirror=shared_data_server)
    return workdir / "results" / "comm-tiny"


def test_tiny_comm_study_builds_table_and_figures(comm_tiny):
    results = comm_tiny
    rows = {r["variant"]: r for r in csv.DictReader(open(results / "comm" / "comm.csv"))}
    assert list(rows) == ["all-tp", "spd-par-par"]  # most syncs first
    patterns = {"all-tp": ["tp"], "spd-par-par": ["spd", "parallel", "parallel"]}
    base_losses = None
    for variant in ("all-tp", "spd-par-par"):
        row = rows[variant]
        runs = [json.loads((results / "stage_A" / variant / f"seed_{s}" / "result.json").read_text()) for s in (1337, 1338)]
        layers = expand_block_pattern(patterns[variant], 3)
        analytic = analytic_tp_syncs(layers, 2)
        assert float(row["syncs_measured"]) == float(row["syncs_analytic"]) == analytic["forward"]
        assert float(row["syncs_measured_backward"]) == analytic["backward"]
        assert all(r["tensor_parallel"]["syncs_measured"] == analytic["forward"] for r in runs)
        losses = [r["final_val_loss"] for r in runs]
        assert float(row["val_loss_mean"]) == pytest.approx(sum(losses) / 2, rel=1e-9)
        assert float(row["tokens_per_s"]) == pytest.approx(sum(r["tokens_per_s"] for r in runs) / 2, rel=1e-9)
        assert int(row["num_parameters"]) == runs[0]["num_parameters"]
        if variant == "all-tp":
            base_losses = losses
            assert row["p_vs_baseline"] == ""
        else:
            p = sps.ttest_rel(losses, base_losses).pvalue  # seed by seed: same weights and batches
            assert float(row["p_vs_baseline"]) == pytest.approx(p, rel=1e-9) and row["test_vs_baseline"] == "paired"
            assert float(row["delta_vs_baseline"]) == pytest.approx((losses[0] - base_losses[0] + losses[1] - base_losses[1]) / 2)
        # the runs' communication record carries the tensor-parallel kinds, bytes_per_token in the summary
        assert runs[0]["communication"]["calls_by_kind"]["tp_forward"] == analytic["forward"] * 6
        summary = json.loads((results / "stage_A" / variant / "summary.json").read_text())
        assert summary["bytes_per_token"] == pytest.approx(
            sum(r["communication"]["bytes_per_token"] for r in runs) / 2, rel=1e-9)
    assert (rows["all-tp"]["syncs_nominal"], rows["spd-par-par"]["syncs_nominal"]) == ("6", "3")
    assert "linear: val_loss =" in (results / "comm" / "comm.md").read_text()
    for name in ("comm_vs_loss", "tokens_per_s_vs_comm", "bytes_per_token_vs_loss"):
        assert (results / "plots" / f"{name}.png").read_bytes()[:8] == PNG


def test_fit_trend_and_pattern_text_agree_with_scipy():
    def summ(variant, syncs, losses):
        return {"variant": variant, "tensor_parallel": {"syncs_measured": syncs},
                "runs": [{"success": True, "final_val_loss": v} for v in losses]}

    summaries = [summ("a", 24, [3.30, 3.31]), summ("b", 12, [3.36, 3.34]), summ("c", 5, [3.52, 3.50]),
                 summ("no-tp", None, [3.0, 3.1])]
    fit = fit_trend(summaries)
    xs, ys = [24, 24, 12, 12, 5, 5], [3.30, 3.31, 3.36, 3.34, 3.52, 3.50]
    import numpy as np

    lin, log = sps.linregress(xs, ys), sps.linregress(np.log(xs), ys)
    assert fit["linear"]["slope"] == pytest.approx(lin.slope) and fit["linear"]["r2"] == pytest.approx(lin.rvalue ** 2)
    assert fit["log"]["slope"] == pytest.approx(log.slope) and fit["points"] == 6
    assert fit["best"] == ("log" if log.rvalue ** 2 > lin.rvalue ** 2 else "linear")
    assert fit_trend(summaries[:1]) is None
    assert pattern_text(["tp", "spd"] * 6) == "[tp, spd] x 6"
    assert pattern_text(["spd"] * 6 + ["tp"] * 6) == ", ".join(["spd"] * 6 + ["tp"] * 6)


def test_bytes_per_token_figure_places_every_stage_variant(tmp_path):
    """A variant the gate stopped after stage A keeps its point (hollow marker), beside the final
    stage's variants; a summary without the communication record gets none."""
    def summ(stage, variant, bpt, mean):
        return {"stage": stage, "variant": variant, "bytes_per_token": bpt,
                "val_loss": {"mean": mean, "ci_95": [mean - 0.01, mean + 0.01]}}

    summaries = [summ("A", "ddp", 1638.0, 2.40), summ("A", "diloco-tau10", 164.0, 2.45),
                 summ("A", "diloco-seed-lr", 164.0, 2.90), summ("A", "no-record", None, 2.5),
                 summ("C", "ddp", 1638.0, 2.23), summ("C", "diloco-tau10", 164.0, 2.28)]
    out = tmp_path / "bpt.png"
    points = plot_bytes_per_token(summaries, str(out), ["ddp", "diloco-tau10", "diloco-seed-lr", "no-record"])
    assert [(p["stage"], p["variant"]) for p in points] == [
        ("A", "ddp"), ("A", "diloco-tau10"), ("A", "diloco-seed-lr"), ("C", "ddp"), ("C", "diloco-tau10")]
    assert points[2]["bytes_per_token"] == 164.0 and points[2]["val_loss"] == 2.90
    assert out.read_bytes()[:8] == PNG


def test_real_tp_study_with_too_few_processes_stops_before_any_job(tmp_path):
    study = (STUDIES / "comm_study_cpu.yaml").read_text().replace("tp_mode: simulated", "tp_mode: real")
    (tmp_path / "real.yaml").write_text(study)
    proc = snakemake(tmp_path, "-n", "--cores", "2", configfiles=(tmp_path / "real.yaml",), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "variants.24comm.model: tp_mode real with tp_size 2 needs a multiple of 2 processes" in out, out[-2000:]
    assert "stages.A.resources give 1" in out


def test_real_tp_comm_study_dry_run_lists_4dp_x_2tp_jobs(tmp_path):
    """comm_study_real.yaml: every pattern as real tensor parallelism on 8 GPUs (4 dp x 2 tp),
    both merge rules for the seed's corrected patterns, and the throughput figure."""
    out = dry_run(tmp_path, STUDIES / "comm_study_real.yaml")
    jobs = train_jobs(out)
    assert len(jobs) == 11 * 2, out[-3000:]
    assert all("gpu=8" in j and "nproc_per_node=8" in j for j in jobs), jobs[:2]
    assert out.count('"tp_mode": "real"') >= 22 and '"parallel_merge": "reference"' in out
    assert re.search(r"^tokens_per_s_vs_comm_plot\s+1\b", out, re.M) and re.search(r"^comm_table\s+1\b", out, re.M)
    assert '"num_iterations": 500' in out and '"compile": false' in out
