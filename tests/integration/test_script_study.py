"""A study whose variants are training scripts, end to end with Snakemake on real processes:
the shipped example's scripts (examples/script_example/, copied so the test can edit
them) through stages, gate, verdict, report and curves; edits rerun exactly the variants that
use the edited file; a no-op rerun runs nothing; an unknown placeholder or a missing script
stops the study before any job; the GPU speedrun study of modified train_gpt.py copies as a
dry run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_snakemake  # tests/conftest.py

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "script_example"


def write_study(folder: Path, **changes) -> Path:
    """The shipped script_example study, smaller (2 seeds, a few dozen steps), its scripts copied
    next to it (workdir: scripts, relative to the study file)."""
    study = yaml.safe_load((REPO / "config" / "studies" / "script_example.yaml").read_text())
    scripts = folder / "scripts"
    if not scripts.exists():
        shutil.copytree(EXAMPLE, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    study["trainer"]["workdir"] = "scripts"
    study["trainer"]["args"] += ["--eval_interval=20", "--eval_iters=5"]
    study["stages"] = {"A": {"seeds": 2, "train": {"num_iterations": 40}, "gate": {"rule": "top_k", "k": 1}},
                       "B": {"seeds": 2, "train": {"num_iterations": 60}}}
    for key, value in changes.items():
        study[key] = value
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def train_jobs(output: str) -> set[tuple[str, str, str]]:
    """(stage, variant, seed) of every train job a Snakemake (dry) run lists."""
    jobs = set()
    for block in re.split(r"\n(?=\S*rule )", output):
        if re.match(r"\S*rule train:", block.strip()):
            m = re.search(r"wildcards: stage=(\w+), variant=([\w.-]+), seed=(\d+)", block)
            jobs.add(m.groups())
    return jobs


@pytest.fixture(scope="module")
def script_study(tmp_path_factory, shared_data_server):
    """The study run once, and its report: (workdir, study file, results folder, mirror)."""
    workdir = tmp_path_factory.mktemp("script_study")
    study = write_study(workdir)
    run_snakemake(workdir, "--cores", "2", configfiles=(study,), mirror=shared_data_server)
    results = workdir / "results" / "script_example"
    run_snakemake(workdir, "--report", str(results / "report.html"), configfiles=(study,), mirror=shared_data_server)
    return workdir, study, results, shared_data_server


def test_script_variants_run_end_to_end(script_study):
    workdir, _, results, _ = script_study
    for target in ("verdict.json", "verdict.md", "gates/gate_A.json", "stage_A/table.csv", "stage_B/table.csv",
                   "plots/curves_stage_A.png", "plots/curves_stage_B.png", "plots/val_loss_by_stage.png",
                   "compute.csv", "summary.html", "report.html"):
        assert (results / target).stat().st_size > 0, target
    assert (workdir / "data" / "tokens" / "shakespeare_char" / "nanogpt" / "meta.pkl").exists()
    run_results = sorted(results.glob("stage_*/*/seed_*/result.json"))
    assert len(run_results) == 3 * 2 + 2 * 2
    for path in run_results:
        result = json.loads(path.read_text())
        printed = re.findall(r"step \d+: train loss \S+, val loss (\S+)\n", (path.parent / "train.log").read_text())
        assert result["success"], result["reason"]
        assert result["final_val_loss"] == float(printed[-1]), path  # the script's last printed val loss
        assert result["final_step"] == result["num_iterations"]
        assert result["trainer"]["script"].endswith("train_momentum.py" if "momentum" in str(path) else "train.py")
    gate = json.loads((results / "gates" / "gate_A.json").read_text())
    verdict = json.loads((results / "verdict.json").read_text())
    assert len(gate["advanced"]) == 1 and {e["variant"] for e in verdict["results"]} == {"baseline", *gate["advanced"]}
    assert "unknown" in (results / "compute.csv").read_text()  # the scripts report no FLOPs
    assert not list(results.glob("samples/*/*/*.txt"))  # no model.pt to sample from


def test_edits_rerun_exactly_the_variants_that_use_them(script_study):
    workdir, study, results, mirror = script_study
    noop = run_snakemake(workdir, "--cores", "2", configfiles=(study,), mirror=mirror)
    assert "Nothing to be done" in noop.stdout + noop.stderr
    momentum = workdir / "scripts" / "train_momentum.py"
    momentum.write_text(momentum.read_text() + "\n# an edit\n")
    dry = run_snakemake(workdir, "-n", "--cores", "2", configfiles=(study,), mirror=mirror)
    planned = train_jobs(dry.stdout)
    assert planned and {variant for _, variant, _ in planned} == {"momentum"}
    assert {stage for stage, _, _ in planned} == {"A"} | ({"B"} if (results / "stage_B" / "momentum").exists() else set())
    before = {p: p.stat().st_mtime_ns for p in results.glob("stage_*/*/seed_*/result.json")}
    ran = run_snakemake(workdir, "--cores", "2", configfiles=(study,), mirror=mirror)
    changed = {p for p in before if p.stat().st_mtime_ns != before[p]}
    assert {p.parent.parent.name for p in changed} == {"momentum"}, ran.stderr[-2000:]
    model = workdir / "scripts" / "model.py"  # an `inputs` file of every variant
    model.write_text(model.read_text() + "\n# an edit\n")
    dry = run_snakemake(workdir, "-n", "--cores", "2", configfiles=(study,), mirror=mirror)
    assert {variant for stage, variant, _ in train_jobs(dry.stdout) if stage == "A"} == {"baseline", "momentum", "high-lr"}


def test_unknown_placeholder_and_missing_script_stop_before_any_job(tmp_path, shared_data_server):
    trainer = yaml.safe_load((REPO / "config" / "studies" / "script_example.yaml").read_text())["trainer"]
    bad = write_study(tmp_path, trainer={**trainer, "workdir": "scripts", "args": ["--max_iters={max_iters}"]})
    proc = run_snakemake(tmp_path, "--cores", "1", configfiles=(bad,), mirror=shared_data_server, check=False)
    assert proc.returncode != 0
    assert re.search(r"stages\.A \+ variants\.baseline\.trainer\.args\[0\]: unknown placeholder \{max_iters\}",
                     proc.stderr), proc.stderr[-3000:]
    variants = {"baseline": {}, "copy": {"trainer": {"script": "train_copy.py"}}}
    missing = write_study(tmp_path, trainer={**trainer, "workdir": "scripts"}, variants=variants)
    proc = run_snakemake(tmp_path, "--cores", "1", configfiles=(missing,), mirror=shared_data_server, check=False)
    assert proc.returncode != 0
    assert re.search(r"variants\.copy\.trainer\.script: \S+/scripts/train_copy\.py does not exist", proc.stderr), \
        proc.stderr[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_speedrun_study_of_modified_scripts_dry_run(tmp_path):
    """The GPU study (config/studies/speedrun_script.yaml) as a dry run: one script runner job per
    variant and seed of stage A, each with its copy of train_gpt.py, torchrun and the GPU count."""
    proc = run_snakemake(tmp_path, "-n", "--cores", "8", configfiles=(REPO / "config" / "studies" / "speedrun_script.yaml",))
    jobs = train_jobs(proc.stdout)
    assert jobs == {("A", v, s) for v in ("baseline", "rmsnorm", "parallel") for s in ("42", "43")}
    commands = re.findall(r"Shell command: (python -m workflow\.run_script .*)", proc.stdout)
    assert len(commands) == 6 and all("--nproc-per-node 1 --nodes 1 --cpus-per-proc 8 --gpus 1" in c for c in commands)
    scripts = {json.loads(re.search(r"--run-config '(.*?)' --out-dir", c).group(1))["trainer"]["script"] for c in commands}
    assert {Path(s).name for s in scripts} == {"train_gpt.py", "train_gpt_rmsnorm.py", "train_gpt_parallel.py"}
    assert all(Path(s).is_file() for s in scripts)
    assert "no GPU" not in proc.stderr and "CPU process(es) per run instead" not in proc.stderr
