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
import subprocess
import threading
import time
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


# ---------------------------------------------------------------- a tiny script study written here
SECRET = "sk-planted-7f3a9c2e41d8b6"
TINY_TRAIN = '''\
import os, sys
from helpers import offset  # a local module (it imports another)
args = dict(a.split("=", 1) for a in sys.argv[2:])
conf = {}
exec(open(sys.argv[1]).read(), conf)  # one config file per variant, named only in args
if os.environ.get("SECRET_TOKEN") != "%s":
    sys.exit("the secret did not arrive")
seed = int(args["--seed"])
for step in range(int(args["--steps"]) + 1):
    loss = 3.0 - 0.1 * step + conf["bump"] + offset() + seed * 1e-3
    print(f"step {step}: train loss {loss:.4f}, val loss {loss:.4f}")
''' % SECRET


def write_tiny_study(folder: Path, trainer: dict | None = None, **changes) -> Path:
    """A two-stage study of a tiny script (prints nanoGPT lines, a few steps) in ``folder``."""
    scripts = folder / "scripts"
    (scripts / "cfg").mkdir(parents=True, exist_ok=True)
    (scripts / "train.py").write_text(TINY_TRAIN)
    (scripts / "helpers.py").write_text("from deep import base\n\ndef offset():\n    return base()\n")
    (scripts / "deep.py").write_text("def base():\n    return 0.0\n")
    (scripts / "cfg" / "baseline.py").write_text("bump = 0.0\n")
    (scripts / "cfg" / "better.py").write_text("bump = -0.5\n")
    study = {
        "study": "tiny_script", "dataset": "shakespeare_char", "baseline": "baseline", "warm_start": "off",
        "trainer": trainer if trainer is not None else {"script": "train.py", "workdir": "scripts",
                               "args": ["cfg/{variant}.py", "--seed={seed}", "--steps={num_iterations}"],
                               "env": {"SECRET_TOKEN": SECRET}},
        "variants": {"baseline": {}, "better": {}},
        "stages": {"A": {"seeds": 2, "train": {"num_iterations": 3}, "gate": {"rule": "top_k", "k": 1}},
                   "B": {"seeds": 2, "train": {"num_iterations": 4}}},
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_script_study(tmp_path_factory, shared_data_server):
    """The tiny study run once while ``ps`` is sampled: (workdir, study, results, mirror, proc, ps lines)."""
    workdir = tmp_path_factory.mktemp("tiny_script")
    study = write_tiny_study(workdir)
    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        proc = run_snakemake(workdir, "--cores", "2", configfiles=(study,), mirror=shared_data_server)
    finally:
        stop.set()
        sampler.join()
    return workdir, study, workdir / "results" / "tiny_script", shared_data_server, proc, seen


def test_a_planted_secret_is_nowhere_on_disk_or_in_ps(tiny_script_study):
    workdir, _, results, _, _, seen = tiny_script_study
    assert any("workflow.run_script" in line for line in seen)  # the sampler saw the jobs
    assert not [line for line in seen if SECRET in line]
    for folder in (results, workdir / ".snakemake", workdir / "data"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
    result = json.loads(next(results.glob("stage_A/baseline/seed_*/result.json")).read_text())
    assert result["success"], result["reason"]  # the script got the secret (it exits 1 without it)
    assert result["trainer"]["env_keys"].count("SECRET_TOKEN") == 1


def test_files_named_in_args_and_local_imports_are_tracked(tiny_script_study):
    workdir, study, results, mirror, proc, _ = tiny_script_study
    assert "stagerun: study tiny_script" in proc.stderr and "verdict:" in proc.stderr  # the end-of-call summary
    result = json.loads(next(results.glob("stage_A/better/seed_*/result.json")).read_text())
    scripts = workdir / "scripts"
    assert set(result["trainer"]["inputs_sha256"]) == {str(scripts / f) for f in ("cfg/better.py", "helpers.py", "deep.py")}
    (scripts / "cfg" / "better.py").write_text("bump = -0.4\n")  # named only in args
    planned = train_jobs(run_snakemake(workdir, "-n", "--cores", "2", configfiles=(study,), mirror=mirror).stdout)
    assert planned and {variant for _, variant, _ in planned} == {"better"}
    run_snakemake(workdir, "--cores", "2", configfiles=(study,), mirror=mirror)
    (scripts / "deep.py").write_text("def base():\n    return 0.01\n")  # imported by helpers.py, which train.py imports
    planned = train_jobs(run_snakemake(workdir, "-n", "--cores", "2", configfiles=(study,), mirror=mirror).stdout)
    assert {variant for stage, variant, _ in planned if stage == "A"} == {"baseline", "better"}
    why = run_snakemake(workdir, "--cores", "1", "why_rerun", configfiles=(study,), mirror=mirror).stdout
    assert re.search(r"8 run\(s\) changed .*\n  file \S+/scripts/deep\.py: \"sha256 \w+\" -> \"sha256 \w+\"", why), why


def test_script_runs_record_no_built_in_numbers(tiny_script_study):
    _, _, results, _, proc, _ = tiny_script_study
    assert "tokens n/a (script runs" in proc.stderr and "<= 12,288 tokens" not in proc.stderr  # the printed plan
    result = json.loads(next(results.glob("stage_A/baseline/seed_*/result.json")).read_text())
    assert "model" not in result["config"] and result["config"]["trainer"]["env"] == {"SECRET_TOKEN": "(not recorded)"}
    assert "warm start" not in proc.stderr  # no warm-start server for a study of scripts only


@pytest.mark.parametrize("trainer, message", [
    ({}, r"variants\.baseline\.trainer\.script: the trainer section needs script"),
    ({"script": ""}, r"trainer\.script: the trainer section needs script .* script is ''"),
    ({"launcher": "command", "args": ["x"]}, r"trainer\.command: the trainer section needs script"),
    ({"launcher": "torchrun", "args": ["x"]}, r"trainer\.script: the trainer section needs script"),
    ({"launcher": "command", "command": ["nonexistent-binary-x"], "workdir": "scripts"},
     r"trainer\.command\[0\]: nonexistent-binary-x is not on PATH"),
    ({"script": "train.py", "workdir": "scripts", "python": "/nonexistent/python3"},
     r"trainer\.python: /nonexistent/python3 does not exist"),
    ({"script": "train.py", "workdir": "scripts", "args": ["--lr={lr:d}"]},
     r"trainer\.args\[0\]: placeholder \{lr:d\} in '--lr=\{lr:d\}'"),
    ({"script": "train.py", "workdir": "scripts", "inputs": ["cfg/{variant}.yaml"]},
     r"variants\.baseline\.trainer\.inputs\[0\]: \S+/cfg/baseline\.yaml does not exist"),
])
def test_an_incomplete_trainer_section_stops_before_any_job(tmp_path, trainer, message):
    study = write_tiny_study(tmp_path, trainer=trainer)
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", configfiles=(study,), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and re.search(message, output), output[-3000:]
    assert "rule train" not in output


def test_a_study_whose_every_run_failed_exits_non_zero_with_its_summary(tmp_path, shared_data_server):
    trainer = {"script": "reject.py", "workdir": "scripts", "args": ["--seed={seed}"]}
    study = write_tiny_study(tmp_path, trainer=trainer)
    (tmp_path / "scripts" / "reject.py").write_text("import sys\nsys.exit('error: unrecognized arguments: ' + sys.argv[1])\n")
    proc = run_snakemake(tmp_path, "--cores", "2", configfiles=(study,), mirror=shared_data_server, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = tmp_path / "results" / "tiny_script"
    assert (results / "verdict.json").exists() and (results / "summary.html").exists()  # outputs written first
    assert re.search(r"A\s+4\s+0\s+4\s+advanced: none; failed: baseline seed \d+: script exited with status 1; "
                     r"last lines of its log: error: unrecognized arguments: --seed=", proc.stderr), proc.stderr[-3000:]
    assert "stagerun: exit status 1: every run of the study failed" in proc.stderr
    study.write_text(study.read_text() + "exit_nonzero_on_failure: false\n")
    proc = run_snakemake(tmp_path, "--cores", "2", configfiles=(study,), mirror=shared_data_server, check=False)
    assert proc.returncode == 0 and "verdict: no winner" in proc.stderr, proc.stderr[-3000:]
