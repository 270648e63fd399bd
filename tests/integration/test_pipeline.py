"""The real pipeline, end to end: `snakemake` as a subprocess on the tiny study
(tests/configs/tiny.yaml), tiny Shakespeare downloaded from a loopback HTTP server.

Checks content, not just existence: gate decisions agree with the summaries, later stages
have jobs only for advanced variants, the verdict's p-values agree with scipy on the runs'
values, the report embeds the plots, a re-run does nothing and a stage C change reruns
only stage C.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as sps

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
PIVOT = REPO / "tests" / "configs" / "tiny_pivot.yaml"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

pytestmark = pytest.mark.timeout(900)


def snakemake(workdir: Path, *args: str, configfiles=(TINY,), mirror: str | None = None, check=True):
    """Run the repository's workflow in ``workdir`` (its own .snakemake, data/ and results/)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    if mirror:
        cmd += ["--config", f"mirror={mirror}"]
    cmd += list(args)
    # Jobs call `python` / `torchrun`: those of this interpreter's environment.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def load(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def study(tiny_study_run):
    """The tiny study, run once per session (conftest ``tiny_study_run``; its report is built there too)."""
    workdir, results, mirror, _ = tiny_study_run
    return workdir, results, mirror


def test_dry_run_lists_jobs_without_running(tmp_path, shared_data_server):
    proc = snakemake(tmp_path, "-n", "--cores", "2", mirror=shared_data_server)
    out = proc.stdout + proc.stderr
    assert re.search(r"train\s+8\b", out), out[-3000:]  # stage A: 4 variants x 2 seeds; later stages after the gates
    assert "download_checked" in out and "gate" in out
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    # named targets per stage
    stage_a = snakemake(tmp_path, "-n", "--cores", "2", "stage_A", mirror=shared_data_server)
    out = stage_a.stdout + stage_a.stderr
    assert re.search(r"train\s+8\b", out) and "verdict" not in out, out[-3000:]


def test_workflow_passes_snakemake_lint(tmp_path, shared_data_server):
    """`snakemake --lint` (make lint) finds nothing: rules by stage, functions in the rule-free files,
    no absolute paths, a log for every rule. Its exit status does not tell, so read its output."""
    proc = snakemake(tmp_path, "--lint", mirror=shared_data_server)
    out = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in out and "Lints for" not in out, out[-3000:]


def test_training_jobs_start_warm_and_the_server_stops_with_snakemake(study):
    """warm_start: auto on this machine (local executor, no GPU): every trainer of the study was
    forked by the warm server (workflow/warm.py), which stopped when Snakemake ended."""
    _, results, _ = study
    logs = sorted(results.glob("stage_*/*/seed_*/train.log"))
    assert len(logs) >= 8
    for log in logs:
        assert re.search(r"warm start: trainer is pid \d+, forked by the server", log.read_text()), log
    server_log = (results / "logs" / "warm_server.log").read_text()
    assert "ready in" in server_log and server_log.rstrip().endswith("stopped"), server_log[-2000:]
    pid = int(re.search(r"warm server (\d+):", server_log).group(1))
    forked = re.findall(r"forked trainer (\d+)", server_log)
    assert len(forked) == len(logs) and len(re.findall(r"trainer \d+ exited 0", server_log)) == len(logs)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_data_downloaded_verified_and_tokenized(study):
    workdir, _, _ = study
    raw = workdir / "data" / "raw" / "tinyshakespeare" / "input.txt"
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    meta = load(workdir / "data" / "tokens" / "shakespeare_char" / "meta.json")
    assert meta["vocab_size"] == 65
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == 1115394


def test_runs_record_metrics_and_results(study):
    _, results, _ = study
    run = results / "stage_A" / "baseline" / "seed_1337"
    result = load(run / "result.json")
    assert result["success"] is True and result["seed"] == 1337 and result["final_step"] == 8
    assert result["num_parameters"] == 104832
    for key in ("final_val_loss", "final_train_loss", "time_seconds", "config_hash", "git_commit", "torch_version", "device"):
        assert key in result
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "train_loss", "val_loss", "lr", "tokens_seen", "train_time_ms", "step_avg_ms", "tokens_per_s"} <= set(rows[-1])
    assert rows[-1]["step"] == 8 and rows[-1]["val_loss"] == result["final_val_loss"]
    assert rows[-1]["tokens_seen"] == 8 * 8 * 32
    # seed = base_seed + stage_seed_offset + run_id (stage A: offset 0)
    second = load(results / "stage_A" / "baseline" / "seed_1338" / "result.json")
    assert second["run_id"] == 1 and second["stage_seed_offset"] == 0
    assert "run tiny/A/baseline seed 1337" in (run / "train.log").read_text()


def test_diverged_runs_fail_cleanly_and_the_dag_goes_on(study):
    _, results, _ = study
    for seed in (1337, 1338):
        result = load(results / "stage_A" / "diverge" / f"seed_{seed}" / "result.json")
        assert result["success"] is False
        assert result["reason"].startswith("diverged:")
        assert result["final_val_loss"] is None
    gate = load(results / "gates" / "gate_A.json")
    assert "diverge" in gate["failed_runs"]
    row = next(r for r in gate["ranking"] if r["variant"] == "diverge")
    assert row["eligible"] is False and row["advanced"] is False
    assert (results / "verdict.json").exists()


def test_gate_a_agrees_with_summaries_and_stage_b_runs_only_advanced(study):
    _, results, _ = study
    gate = load(results / "gates" / "gate_A.json")
    means = {}
    for variant in ("lr-6e-3", "lr-1e-4", "diverge"):
        summ = load(results / "stage_A" / variant / "summary.json")
        if summ["successful_runs"] >= 2:
            means[variant] = summ["val_loss"]["mean"]
    assert gate["advanced"] == [min(means, key=means.get)]  # k = 1
    stage_b = sorted(p.name for p in (results / "stage_B").iterdir() if p.is_dir())
    assert stage_b == sorted(["baseline", *gate["advanced"]])
    for variant in stage_b:
        # stage B's own seeds, disjoint from stage A's
        assert sorted(p.name for p in (results / "stage_B" / variant).glob("seed_*")) == ["seed_2337", "seed_2338"]
        assert load(results / "stage_B" / variant / "seed_2338" / "result.json")["stage_seed_offset"] == 1000


def test_gate_b_and_stage_c_and_verdict(study):
    _, results, _ = study
    gate_b = load(results / "gates" / "gate_B.json")
    base = load(results / "stage_B" / "baseline" / "summary.json")["val_loss"]["mean"]
    for row in gate_b["ranking"]:
        if row["variant"] != "baseline":
            assert row["advanced"] == (row["mean"] < base)
    verdict = load(results / "verdict.json")
    if gate_b["advanced"]:
        stage_c = sorted(p.name for p in (results / "stage_C").iterdir() if p.is_dir())
        assert stage_c == sorted(["baseline", *gate_b["advanced"]])
        variant = gate_b["advanced"][0]
        losses = lambda v: [load(results / "stage_C" / v / f"seed_{s}" / "result.json")["final_val_loss"] for s in (3337, 3338, 3339)]  # noqa: E731
        entry = next(e for e in verdict["results"] if e["variant"] == variant)
        # default test: paired on the seed-matched runs; Holm over the variants tested
        ref = sps.ttest_rel(losses(variant), losses("baseline"), alternative="less")
        assert entry["vs_baseline"]["p_value"] == pytest.approx(ref.pvalue)
        tested = [e for e in verdict["results"] if e["vs_baseline"]]
        assert entry["vs_baseline"]["p_value_adjusted"] >= entry["vs_baseline"]["p_value"]
        if len(tested) == 1:
            assert entry["vs_baseline"]["p_value_adjusted"] == pytest.approx(ref.pvalue)
        ref1 = sps.ttest_1samp(losses(variant), 4.0, alternative="less")
        assert entry["vs_target"]["p_value"] == pytest.approx(ref1.pvalue)
        assert entry["beats_baseline"] == (entry["vs_baseline"]["p_value_adjusted"] < 0.01)
        assert "adjusted p vs baseline" in (results / "verdict.md").read_text()
    else:
        assert not (results / "stage_C").exists() or not any((results / "stage_C").glob("*/seed_*"))
        assert verdict["winners"] == []


def test_tables_plots_and_compute(study):
    _, results, _ = study
    table = (results / "stage_A" / "table.csv").read_text().splitlines()
    assert table[0].startswith("stage,variant,runs,successful_runs,failed_runs,excluded_runs,val_loss_mean,val_loss_std,ci95_low,ci95_high")
    assert "p_vs_baseline (paired)" in table[0] and "tokens_per_run" in table[0] and "flops_per_run" in table[0]
    assert len(table) == 1 + 4
    for stage in "ABC":
        png = results / "plots" / f"curves_stage_{stage}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compute = (results / "compute.csv").read_text()
    assert "staged total" in compute and "naive" in compute and "saving" in compute
    assert compute.splitlines()[0].startswith("stage,variants,runs,tokens,flops,gpu_hours,process_hours,usd")
    summary = load(results / "stage_A" / "baseline" / "summary.json")
    assert summary["statistics"]["val_loss"]["mean"] == summary["val_loss"]["mean"]    # seed 001's jq path
    assert summary["flops_total"] > 0 and summary["experiment_name"] == "tiny_baseline_stage_A"
    assert "Compute plan: tiny" in (results / "plan.md").read_text()


def test_report_embeds_plots_and_tables(tiny_study_run):
    _, results, _, report = tiny_study_run
    assert report == results / "report.html"  # each study has its own report
    html = report.read_text()
    for name in ("curves_stage_A.png", "val_loss_by_stage.png", "table.csv", "compute.csv", "verdict.md", "summary.html"):
        assert name in html, name
    assert html.count("iVBORw0KGgo") >= 4  # the PNGs are embedded (base64), readable offline
    assert not re.search(r"<script[^>]+src=\"https?://", html)


def test_rerun_does_nothing_and_stage_c_change_reruns_only_stage_c(study, tmp_path):
    workdir, results, mirror = study
    proc = snakemake(workdir, "-n", "--cores", "2", mirror=mirror)
    assert "Nothing to be done" in proc.stdout + proc.stderr

    before = {p: p.stat().st_mtime_ns for p in results.glob("stage_[AB]/*/seed_*/result.json")}
    overlay = tmp_path / "longer_c.yaml"
    overlay.write_text("stages:\n  C:\n    seeds: 3\n    train: {num_iterations: 20}\n")
    dry = snakemake(workdir, "-n", "--cores", "2", configfiles=(TINY, overlay), mirror=mirror)
    train_jobs = re.findall(r"rule train:.*?wildcards: ([^\n]+)", dry.stdout + dry.stderr, flags=re.S)
    assert train_jobs, dry.stdout[-3000:]
    assert all("stage=C" in w for w in train_jobs), train_jobs
    gate_b = load(results / "gates" / "gate_B.json")
    assert len(train_jobs) == 3 * (1 + len(gate_b["advanced"])) if gate_b["advanced"] else True

    snakemake(workdir, "--cores", "2", configfiles=(TINY, overlay), mirror=mirror)
    after = {p: p.stat().st_mtime_ns for p in results.glob("stage_[AB]/*/seed_*/result.json")}
    assert after == before  # stages A and B untouched
    if gate_b["advanced"]:
        assert load(results / "stage_C" / "baseline" / "seed_3337" / "result.json")["final_step"] == 20


def test_gate_pivots_to_the_next_best_variant(study):
    """The pivot through the DAG: gate B fails, pivots to stage A's next-best variant (a
    checkpoint adds its stage B runs) and gates it against the baseline once. Runs in the tiny
    study's folder, so the tokenized data is reused."""
    workdir, _, mirror = study
    snakemake(workdir, "--cores", "2", configfiles=(PIVOT,), mirror=mirror)
    results = workdir / "results" / "tiny-pivot"
    assert load(results / "gates" / "gate_A.json")["advanced"] == ["twin"]
    gate_b = load(results / "gates" / "gate_B.json")
    assert gate_b["advanced"] == []
    assert "is not below the baseline's" in next(r for r in gate_b["ranking"] if r["variant"] == "twin")["reason"]
    assert gate_b["pivot"]["variant"] == "slow" and gate_b["pivot"]["run"] is True
    # the pivot variant ran stage B with stage B's seeds and was gated once
    assert sorted(p.name for p in (results / "stage_B" / "slow").glob("seed_*")) == ["seed_2337", "seed_2338"]
    pivot = load(results / "gates" / "gate_B_pivot.json")
    assert pivot["pivot_of"]["variant"] == "slow" and pivot["advanced"] == []
    assert [r["variant"] for r in pivot["ranking"]] == ["baseline", "slow"]
    table = (results / "stage_B" / "table.md").read_text()
    assert "slow" in table and "Pivot: no variant passed gate B" in table
    assert not list(results.glob("stage_C/*/seed_*"))   # nothing reached stage C
    assert load(results / "verdict.json")["winners"] == []


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, shared_data_server):
    typo = tmp_path / "typo.yaml"
    typo.write_text(TINY.read_text().replace("seeds: 2\n    train: {num_iterations: 8}", "sedes: 2\n    train: {num_iterations: 8}"))
    proc = snakemake(tmp_path, "--cores", "1", configfiles=(typo,), mirror=shared_data_server, check=False)
    assert proc.returncode != 0
    assert "sedes" in proc.stderr and "seeds" in proc.stderr
    bad_train = tmp_path / "bad_train.yaml"
    bad_train.write_text(TINY.read_text().replace("train: {lr: 6.0e-3}", "train: {learning_rate: 6.0e-3}"))
    proc = snakemake(tmp_path, "--cores", "1", configfiles=(bad_train,), mirror=shared_data_server, check=False)
    assert proc.returncode != 0
    assert "learning_rate" in proc.stderr and "variants.lr-6e-3.train" in proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_wrong_checksum_fails_naming_both_hashes_and_leaves_nothing(tmp_path, shared_data, file_server):
    mirror_dir = tmp_path / "mirror" / "tinyshakespeare"
    mirror_dir.mkdir(parents=True)
    corrupted = bytearray((shared_data / "tinyshakespeare" / "input.txt").read_bytes())
    corrupted[1000] ^= 0xFF
    (mirror_dir / "input.txt").write_bytes(corrupted)
    actual = hashlib.sha256(corrupted).hexdigest()
    server = file_server(tmp_path / "mirror")
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = snakemake(workdir, "--cores", "1", "data/raw/tinyshakespeare/input.txt", mirror=server.url, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert SHAKESPEARE_SHA256 in out and actual in out
    raw_dir = workdir / "data" / "raw" / "tinyshakespeare"
    assert not (raw_dir / "input.txt").exists()
    assert not raw_dir.exists() or list(raw_dir.iterdir()) == []


def test_same_seed_gives_identical_val_losses(study, tmp_path):
    workdir, results, _ = study
    run_cfg = load(results / "stage_A" / "baseline" / "seed_1337" / "result.json")
    meta = workdir / "data" / "tokens" / "shakespeare_char" / "meta.json"
    cfg = {"study": "det", "stage": "A", "variant": "baseline", "seed": 7, "run_id": 0, "dataset": "shakespeare_char",
           "model": run_cfg["config"]["model"], "train": {**run_cfg["config"]["train"], "num_iterations": 12}}
    curves = []
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "workflow.train",
             "--run-config", json.dumps(cfg), "--out-dir", str(out), "--meta", str(meta), "--threads", "1"],
            check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=300,
        )
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves.append([(r["step"], r["train_loss"], r["val_loss"]) for r in rows])
    assert curves[0] == curves[1]
    assert len([c for c in curves[0] if c[2] is not None]) >= 3
