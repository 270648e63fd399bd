"""Your own training script as a variant: the trainer section's checks, the metrics
presets, and the script runner on real processes (tests/integration/scripts/behaviour.py, the shipped
example examples/script_example/train.py): results, failure reasons, ignored seeds, SIGTERM ->
exit 75 -> resume. The end-to-end Snakemake study is tests/integration/test_script_study.py."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import runs  # tests/runs.py

from workflow.analysis.gates import decide_gate
from workflow.analysis.verdict import decide_verdict
from workflow.jobs.capture import MetricsCapture
from workflow.analysis.stats import summarize_runs
from workflow.data.nanogpt_layout import write_nanogpt_layout
from workflow.study.checks import check_trainers
from workflow.study.resolve import study_with_defaults
from workflow.study.schema import ConfigError, validate_section
from workflow.study.trainer_section import (
    TrainerConfigError, check_placeholders, expand, render_value, resolve_paths, stage_env,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EXAMPLE = REPO / "examples" / "script_example"
TRAIN = {"num_iterations": 20, "lr": 0.001, "batch_size": 4}


# --------------------------------------------------------------------------- helpers

def run_config(trainer: dict, *, seed: int = 1337, variant: str = "v", train: dict | None = None,
               study_dir: Path = SCRIPTS) -> dict:
    """A resolved run config of a script run (schema defaults, absolute paths)."""
    filled = validate_section(trainer, "trainer", "trainer")
    return {"study": "t", "stage": "A", "variant": variant, "seed": seed, "run_id": seed - 1337,
            "stage_seed_offset": 0, "dataset": "shakespeare_char", "model": {},
            "train": validate_section(train or TRAIN, "train", "train"),
            "trainer": resolve_paths(filled, study_dir)}


def runner_cmd(cfg: dict, out_dir: Path, meta: Path) -> list[str]:
    return [sys.executable, "-m", "workflow.run_script", "--log", str(out_dir / "train.log"),
            "--run-config", json.dumps(cfg), "--out-dir", str(out_dir), "--meta", str(meta)]


def runner_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run_runner(cfg: dict, out_dir: Path, meta: Path | None = None, **env) -> tuple[int, dict | None]:
    """Run the script runner as a job would; (exit status, result.json or None)."""
    meta = meta or out_dir.parent / "no-data" / "meta.json"
    proc = subprocess.run(runner_cmd(cfg, out_dir, meta), cwd=REPO, env=runner_env(**env), capture_output=True,
                          text=True, timeout=120)
    result = out_dir / "result.json"
    return proc.returncode, (json.loads(result.read_text()) if result.exists() else None)


def behaviour(mode: str = "ok", fmt: str = "nanogpt", metrics="nanogpt", **more) -> dict:
    return {"script": "behaviour.py", "args": [f"--mode={mode}", f"--format={fmt}", "--seed={seed}",
                                               "--steps={num_iterations}"], "metrics": metrics, **more}


def printed_val_losses(log: Path) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"val loss (\S+)\n", log.read_text())]


# --------------------------------------------------------------------------- the section

def test_placeholders_expand_and_unknown_ones_are_named():
    values = {"num_iterations": 200, "lr": 0.003, "compile": True, "strategy": {"name": "ddp"}, "seed": 7}
    assert expand("--max_iters={num_iterations} --lr={lr:.0e}", values) == "--max_iters=200 --lr=3e-03"
    assert expand("{{literal}} {compile} {strategy}", values) == '{literal} True {"name": "ddp"}'
    assert render_value(None) == "None" and render_value([1, 2]) == "[1, 2]"
    assert stage_env({"num_iterations": 5100, "lr": 0.02})["STAGE_NUM_ITERATIONS"] == "5100"
    with pytest.raises(TrainerConfigError, match=r"variants\.x\.trainer\.args\[1\]: unknown placeholder "
                                                 r"\{num_iters\}.*did you mean \{num_iterations\}"):
        check_placeholders({"args": ["--seed={seed}", "--max_iters={num_iters}"]}, TRAIN, "variants.x")
    with pytest.raises(TrainerConfigError, match=r"trainer\.env\.RUN: unknown placeholder \{outdir\}"):
        check_placeholders({"env": {"RUN": "{outdir}/x"}}, TRAIN, "s")
    with pytest.raises(TrainerConfigError, match="not a plain name"):
        check_placeholders({"args": ["{a.b}"]}, TRAIN, "s")


def study(trainer: dict, variants: dict | None = None) -> dict:
    return study_with_defaults({
        "study": "s", "dataset": "shakespeare_char", "trainer": trainer,
        "variants": variants or {"baseline": {}, "other": {"trainer": {"script": "missing_copy.py"}}},
        "stages": {"A": {"seeds": 2, "gate": {"rule": "top_k", "k": 1}}, "B": {"seeds": 2}},
    })


def test_study_checks_name_the_unknown_placeholder_and_the_missing_script():
    with pytest.raises(ConfigError, match=r"stages\.A \+ variants\.baseline\.trainer\.args\[0\]: unknown placeholder "
                                          r"\{max_iter\}"):
        check_trainers(study({"script": "behaviour.py", "args": ["--n={max_iter}"]}, {"baseline": {}}), SCRIPTS)
    with pytest.raises(ConfigError, match=r"stages\.A \+ variants\.other\.trainer\.script: .*/integration/scripts/"
                                          r"missing_copy\.py does not exist \(script is relative to workdir"):
        check_trainers(study({"script": "behaviour.py"}), SCRIPTS)
    with pytest.raises(ConfigError, match=r"trainer\.inputs\[0\]: .*nope\.py does not exist"):
        check_trainers(study({"script": "behaviour.py", "inputs": ["nope.py"]}, {"baseline": {}}), SCRIPTS)
    with pytest.raises(ConfigError, match=r"metrics\.regex: needs a val_loss pattern"):
        check_trainers(study({"script": "behaviour.py", "metrics": {"regex": {"step": r"it=(\d+)"}}},
                             {"baseline": {}}), SCRIPTS)
    # variant and stage overrides merge over the study's section; no section: the built-in trainer
    resolved = check_trainers(study({"script": "behaviour.py", "args": ["a"]},
                                    {"baseline": {}, "x": {"trainer": {"args": ["b"]}}}), SCRIPTS)
    assert resolved[("B", "x")]["args"] == ["b"] and resolved[("A", "baseline")]["script"] == str(SCRIPTS / "behaviour.py")
    plain = study_with_defaults({"study": "s", "dataset": "shakespeare_char", "variants": {"baseline": {}},
                                 "stages": {"A": {"seeds": 1}}})
    assert check_trainers(plain, SCRIPTS) == {}


def test_presets_parse_their_lines():
    cap = MetricsCapture("nanogpt")
    for line in ["step 0: train loss 4.2000, val loss 4.2100", "iter 0: loss 4.1900, time 120.50ms, mfu -100.00%",
                 "iter 10: loss 3.9100, time 100.00ms, mfu 1.20%", "noise step 5 of nothing",
                 "step 20: train loss 1.7648, val loss 1.8857"]:
        cap.feed_line(line)
    rows = cap.sorted_rows()
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert rows[0] == {"step": 0, "train_loss": 4.19, "val_loss": 4.21, "train_eval_loss": 4.2, "step_time_ms": 120.5,
                       "mfu_percent": -100.0}
    assert cap.final("val_loss") == 1.8857 and rows[1]["val_loss"] is None
    cap = MetricsCapture("modded-nanogpt")
    cap.feed_line("step:125/5100 val_loss:5.2340 train_time:15000ms step_avg:120.00ms")
    cap.feed_line("step:126/5100 train_loss:5.1 train_time:15120ms step_avg:120.00ms")
    assert cap.sorted_rows()[0] == {"step": 125, "train_loss": None, "val_loss": 5.234, "train_time_ms": 15000.0,
                                    "step_avg_ms": 120.0}
    cap = MetricsCapture({"regex": {"step": r"it=(\d+)", "val_loss": r"validation=(?P<val_loss>\S+)"}})
    cap.feed_line("[eval] it=40 | validation=2.5")
    cap.feed_line("[eval] validation=nan")
    rows = cap.sorted_rows()
    assert len(rows) == 1 and rows[0]["step"] == 40 and math.isnan(rows[0]["val_loss"])
    assert cap.nonfinite == ("val_loss", "nan", 40)
    # a resumed attempt: its first row replaces the earlier rows from that step on
    cap = MetricsCapture("nanogpt", prior=[{"step": s, "val_loss": 1.0} for s in (0, 10, 20)])
    cap.feed_line("step 10: train loss 2.0, val loss 2.0")
    assert [(r["step"], r["val_loss"]) for r in cap.sorted_rows()] == [(0, 1.0), (10, 2.0)]


# --------------------------------------------------------------------------- real script runs

def test_script_run_result_metrics_and_environment(tmp_path):
    """final_val_loss is the last printed val loss; metrics.jsonl has the built-in schema; the
    environment has STAGE_<KEY> and STAGERUN_*; result.json has env names but no secret value."""
    trainer = behaviour("env", env={"SECRET_TOKEN": "hunter2-{seed}", "RUN_NAME": "{variant}-{seed}"},
                        inputs=["capture_input.txt"])
    (SCRIPTS / "capture_input.txt").exists() or pytest.fail("tests/integration/scripts/capture_input.txt is missing")
    out = tmp_path / "run"
    status, result = run_runner(run_config(trainer), out)
    assert status == 0 and result["success"] and result["reason"] is None
    log = (out / "train.log").read_text()
    printed = printed_val_losses(out / "train.log")
    assert len(printed) == 5 and result["final_val_loss"] == printed[-1] and result["final_step"] == 20
    env = {k: v for line in log.splitlines() if line.startswith("ENV ") for k, v in json.loads(line[4:]).items()}
    assert env["STAGE_NUM_ITERATIONS"] == "20" and env["STAGE_LR"] == "0.001" and env["STAGERUN_SEED"] == "1337"
    assert env["STAGERUN_OUT_DIR"] == str(out) and env["STAGERUN_METRICS"] == str(out / "script_metrics.jsonl")
    assert env["SECRET_TOKEN"] == "hunter2-1337"
    text = (out / "result.json").read_text()
    assert "hunter2" not in text and "SECRET_TOKEN" in result["trainer"]["env_keys"]
    assert result["trainer"]["command"][1:] == [str(SCRIPTS / "behaviour.py"), "--mode=env", "--format=nanogpt",
                                                "--seed=1337", "--steps=20"]
    import hashlib
    assert result["trainer"]["script_sha256"] == hashlib.sha256((SCRIPTS / "behaviour.py").read_bytes()).hexdigest()
    assert list(result["trainer"]["inputs_sha256"]) == [str(SCRIPTS / "capture_input.txt")]
    assert result["flops"] is None and result["flops_known"] is False and result["tokens_seen"] is None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(21)) and all({"step", "train_loss", "val_loss"} <= set(r) for r in rows)
    assert rows[-1]["val_loss"] == printed[-1] and rows[1]["val_loss"] is None
    assert not (out / "metrics.partial.jsonl").exists() and (out / "train.attempt-1.log").exists()


@pytest.mark.parametrize("fmt, metrics", [
    ("modded", "modded-nanogpt"),
    ("jsonl", "jsonl"),
    ("custom", {"regex": {"step": r"it=(\d+)", "val_loss": r"validation=(?P<val_loss>[-0-9.eE]+|nan|inf)"}}),
])
def test_other_presets_capture_the_last_val_loss(tmp_path, fmt, metrics):
    out = tmp_path / "run"
    status, result = run_runner(run_config(behaviour("ok", fmt, metrics, tokens_per_step=None, flops_per_token=6.0)), out)
    expected = 4.0 * math.exp(-20 / 20) + 1.0 + (1337 % 97) * 1e-3
    assert status == 0 and result["success"], result["reason"]
    assert result["final_val_loss"] == pytest.approx(expected, abs=1e-4 if fmt != "jsonl" else 1e-12)
    assert result["final_step"] == 20
    if fmt == "jsonl":  # the script reports tokens: FLOPs = tokens x flops_per_token
        assert result["tokens_seen"] == 20 * 128 and result["flops"] == 20 * 128 * 6.0


@pytest.mark.parametrize("mode, metrics, reason", [
    ("crash", "nanogpt", r"^script exited with status 3; last lines of its log: .*RuntimeError: boom at the end"),
    ("silent", "nanogpt", r"^no validation loss captured \(metrics: nanogpt\); last lines of its log: "
                          r".*evaluating at step 20"),
    ("silent", {"regex": {"val_loss": r"vl=(\S+)"}},
     r'^no validation loss captured \(metrics: regex \{"val_loss": "vl=\(\\\\S\+\)"\}\)'),
    ("nan", "nanogpt", r"^diverged: val_loss is nan at step 20 \(captured from the script's output\)$"),
])
def test_failures_are_results_with_reasons(tmp_path, mode, metrics, reason):
    out = tmp_path / "run"
    status, result = run_runner(run_config(behaviour(mode, metrics=metrics)), out)
    assert status == 0, "a failed script is a result: the DAG goes on"
    assert result["success"] is False and result["final_val_loss"] is None
    assert re.search(reason, result["reason"]), result["reason"]
    summary = summarize_runs([result])
    assert summary["failed_runs"] == [{"seed": 1337, "reason": result["reason"]}]


def test_missing_interpreter_is_a_failed_result(tmp_path):
    out = tmp_path / "run"
    status, result = run_runner(run_config({**behaviour(), "python": str(tmp_path / "no-python")}), out)
    assert status == 0 and result["success"] is False
    assert result["reason"].startswith("script exited with status 127; last lines of its log: cannot start")


def test_ignored_seed_is_named_by_gate_and_verdict(tmp_path):
    """Every seed of a variant gives bit-identical losses: the gate and the verdict say the script
    ignores the seed, a CI gate does not advance it and the verdict names no winner."""
    results = {}
    for variant, mode in (("baseline", "ok"), ("deaf", "ignore_seed")):
        results[variant] = []
        for seed in (1337, 1338, 1339):
            cfg = run_config(behaviour(mode), seed=seed, variant=variant)
            status, result = run_runner(cfg, tmp_path / variant / str(seed))
            assert status == 0 and result["success"]
            results[variant].append(result)
    losses = {v: [r["final_val_loss"] for r in rs] for v, rs in results.items()}
    assert len(set(losses["deaf"])) == 1 and len(set(losses["baseline"])) == 3
    assert max(losses["deaf"]) < min(losses["baseline"])  # it "wins" on every seed: only the seed check stops it
    summaries = {v: summarize_runs(rs) for v, rs in results.items()}
    assert summaries["deaf"]["seed_ignored"] and not summaries["baseline"]["seed_ignored"]
    text = "the script ignores the seed: its 3 seeds gave bit-identical losses, so the repeats prove nothing"
    gate = validate_section({"rule": "beats_baseline_ci"}, "gate", "gate")
    decision = decide_gate("A", gate, summaries, "baseline", "welch")
    row = next(r for r in decision["ranking"] if r["variant"] == "deaf")
    assert not row["advanced"] and text in row["reason"] and "not advanced" in row["reason"]
    top = decide_gate("A", validate_section({"rule": "top_k", "k": 1}, "gate", "gate"), summaries, "baseline")
    assert text in next(r for r in top["ranking"] if r["variant"] == "deaf")["reason"]
    verdict = decide_verdict(summaries, "baseline", validate_section({"test": "welch", "alpha": 0.5}, "verdict", "v"))
    entry = next(e for e in verdict["results"] if e["variant"] == "deaf")
    assert verdict["winners"] == [] and not entry["winner"] and f"cannot win: {text}" in entry["verdict"]


# --------------------------------------------------------------------------- preemption

@pytest.fixture(scope="module")
def nanogpt_data(tmp_path_factory, shakespeare_char_meta) -> Path:
    out = tmp_path_factory.mktemp("nanogpt") / "nanogpt"
    write_nanogpt_layout(shakespeare_char_meta, out)
    return out


def test_nanogpt_layout_matches_the_tokens(nanogpt_data, shakespeare_char_meta):
    import pickle

    import numpy as np

    meta = json.loads(shakespeare_char_meta.read_text())
    pkl = pickle.loads((nanogpt_data / "meta.pkl").read_bytes())
    assert pkl["vocab_size"] == meta["vocab_size"] == 65 and pkl["itos"][pkl["stoi"]["a"]] == "a"
    for split in ("train", "val"):
        ours = np.fromfile(shakespeare_char_meta.parent / f"{split}.bin", dtype=meta["dtype"])
        theirs = np.memmap(nanogpt_data / f"{split}.bin", dtype=np.uint16, mode="r")
        assert theirs.dtype == np.uint16 and np.array_equal(ours, theirs)
    assert "".join(pkl["itos"][int(i)] for i in theirs[:20]) == "".join(meta["tokenizer"]["vocab"][int(i)] for i in ours[:20])


def example_config(seed: int = 1337, iters: int = 400) -> dict:
    trainer = {"script": "train.py", "workdir": str(EXAMPLE), "inputs": ["model.py"],
               "args": ["--dataset={nanogpt_data_dir}", "--max_iters={num_iterations}", "--lr={lr}",
                        "--eval_interval=100", "--log_interval=1", "--seed={seed}"]}
    return run_config(trainer, seed=seed, train={"num_iterations": iters, "lr": 20.0, "batch_size": 32})


def test_sigterm_exit_75_then_rerun_resumes(tmp_path, nanogpt_data):
    """SIGTERM to a running script job: the script gets it (checkpoints), exit 75 propagates, the
    rerun resumes from the checkpoint, and ends where an uninterrupted run ends."""
    meta = nanogpt_data.parent / "meta.json"  # tokens_dir = meta's folder; {nanogpt_data_dir} = its nanogpt/
    cfg = example_config()
    out = tmp_path / "run"
    proc = subprocess.Popen(runner_cmd(cfg, out, meta), cwd=REPO, env=runner_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs.wait_for_step(out / "metrics.partial.jsonl", 20, proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 75
    first = (out / "train.attempt-1.log").read_text()
    assert "SIGTERM: forwarded to the script's process group" in first
    stopped = int(re.search(r"signal 15: checkpoint at step (\d+), exiting 75", first).group(1))
    assert not (out / "result.json").exists() and (out / "checkpoint" / "ckpt.npz").exists()
    state = json.loads((out / "script_state.json").read_text())
    assert state["attempts"] == 1 and state["seconds"] > 0
    status, result = run_runner(cfg, out, meta)
    assert status == 0 and result["success"] and result["attempts"] == 2
    assert f"resuming from step {stopped}" in (out / "train.attempt-2.log").read_text()
    assert result["time_seconds"] > state["seconds"] and not (out / "checkpoint").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(401))
    fresh = tmp_path / "fresh"
    status, reference = run_runner(cfg, fresh, meta)
    assert status == 0 and reference["final_val_loss"] == result["final_val_loss"]
    assert printed_val_losses(out / "train.attempt-2.log")[-1] == result["final_val_loss"]
    def losses(path):
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in map(json.loads, path.read_text().splitlines())]

    assert losses(out / "metrics.jsonl") == losses(fresh / "metrics.jsonl")


def test_script_exit_75_by_itself_is_preempted(tmp_path):
    script = tmp_path / "preempted.py"
    script.write_text("import sys\nprint('step 0: train loss 4.0, val loss 4.1')\nsys.exit(75)\n")
    status, result = run_runner(run_config({"script": str(script)}), tmp_path / "run")
    assert status == 75 and result is None
    assert "PREEMPTED: the script exited 75" in (tmp_path / "run" / "train.log").read_text()


# --------------------------------------------------------------------------- launchers

def test_launch_commands_of_each_launcher(monkeypatch):
    from workflow.study.resolve import config_hash as study_hash
    from workflow.jobs.script_result import config_hash
    from workflow.jobs.script_runner import full_command

    cfg = run_config(behaviour(launcher="torchrun"))
    values = {**cfg["train"], "seed": 1337}
    one = {"nproc_per_node": 8, "nodes": 1, "cpus_per_proc": 4, "gpus": 8}
    assert full_command(cfg, values, one) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "8",
        str(SCRIPTS / "behaviour.py"), "--mode=ok", "--format=nanogpt", "--seed=1337", "--steps=20"]
    with pytest.raises(TrainerConfigError, match="needs a SLURM allocation"):
        monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
        full_command(cfg, values, {**one, "nodes": 2})
    python = run_config(behaviour())
    cmd = full_command(python, values, {**one, "nproc_per_node": 4, "nodes": 2})
    assert cmd[:6] == ["srun", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-task=1", "--cpus-per-task=4",
                       "--kill-on-bad-exit=1"] and cmd[6:8] == [sys.executable, str(SCRIPTS / "behaviour.py")]
    with pytest.raises(TrainerConfigError, match="launcher python runs one process"):
        full_command(python, values, one)
    command = run_config({"launcher": "command", "command": "bash run.sh --depth {seed}", "args": ["x y"]})
    assert full_command(command, values, one) == ["bash", "run.sh", "--depth", "1337", "x y"]
    assert config_hash(cfg) == study_hash(cfg)  # the runner's copy agrees with workflow.study.resolve's


def test_command_launcher_runs_a_shell_script_with_stage_settings(tmp_path):
    """launcher command (`bash run.sh` with DEPTH=24-style settings): run as given, never through a
    shell of ours; STAGE_<KEY> and the expanded env reach it."""
    (tmp_path / "run.sh").write_text(
        'echo "depth $DEPTH iters $STAGE_NUM_ITERATIONS arg $1"\n'
        f'exec "{sys.executable}" "{SCRIPTS / "behaviour.py"}" --seed="$STAGERUN_SEED" --steps="$STAGE_NUM_ITERATIONS"\n')
    trainer = {"launcher": "command", "command": ["bash", "run.sh"], "args": ["{variant}; rm -rf /"],
               "env": {"DEPTH": "{num_iterations}"}}
    cfg = run_config(trainer, study_dir=tmp_path)
    status, result = run_runner(cfg, tmp_path / "run")
    assert status == 0 and result["success"], result["reason"]
    assert "depth 20 iters 20 arg v; rm -rf /\n" in (tmp_path / "run" / "train.log").read_text()
    assert result["final_step"] == 20 and result["trainer"]["command"] == ["bash", "run.sh", "v; rm -rf /"]
    assert result["trainer"]["script_sha256"] is None and "DEPTH" in result["trainer"]["env_keys"]


def test_git_commit_and_diff_of_the_scripts_repository(tmp_path):
    repo = tmp_path / "research"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text((SCRIPTS / "behaviour.py").read_text())
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    script.write_text(script.read_text() + "# tuned\n")
    cfg = run_config({"script": "train.py", "args": ["--seed={seed}"]}, study_dir=repo)
    status, result = run_runner(cfg, tmp_path / "run")
    assert status == 0 and result["git_commit"] == commit and result["git_dirty"] is True
    assert "+# tuned" in (tmp_path / "run" / "script_git_diff.patch").read_text()
