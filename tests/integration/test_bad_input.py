"""Hardening: each test here failed before its fix.

- permissions: atomic writes get what ``open()`` gives under the umask (002 and 022), not 0600;
- raw files are checked against the registry's size / sha256 where tokenization reads them;
- custom text: CRLF read as LF, a UTF-8 BOM skipped, a split without a training window stops
  tokenization, and a split shorter than the model's window stops the job before training;
- parse-time errors: gate ``k`` above the variants, an unknown dataset, a schema error in a
  few lines (real ``snakemake -n``);
- the job's exit status is 75 after SIGTERM with both launchers (one process: the trainer in
  the launcher's own process; several: torchrun, with real signals), and a one-process job
  gives exactly the losses of torchrun with one process;
- every attempt keeps its log across a real Snakemake rerun after a preemption;
- the README's ``--configfile X.yaml -- <target>`` works (real dry run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from runs import last_step, rows_without_timings, wait_for_step  # tests/runs.py

from workflow.core.io import atomic_write, write_json_atomic, write_text_atomic
from workflow.data.prepare import prepare
from workflow.data.writers import DataError
from workflow.jobs.launcher import EXIT_PREEMPTED, job_exit_status
from workflow.study.checks import check_study
from workflow.study.resources import launch_command
from workflow.study.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]

pytestmark = pytest.mark.timeout(600)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_cfg(num_iterations: int, **train) -> dict:
    return {"study": "h", "stage": "A", "variant": "v", "seed": 1337, "run_id": 0, "dataset": "shakespeare_char",
            "model": {"preset": "nanogpt-small"},
            "train": {"batch_size": 8, "num_iterations": num_iterations, "warmup_iters": 2, "val_loss_every": 0,
                      "log_every": 2, "val_tokens": 512, "device": "cpu", **train}}


def launcher(res: dict) -> list[str]:
    """The job's command prefix exactly as rules/train.smk gets it, with this interpreter."""
    return shlex.split(launch_command(res, python=sys.executable))


def trainer_args(cfg: dict, out_dir: Path, meta: Path) -> list[str]:
    return ["--run-config", json.dumps(cfg), "--out-dir", str(out_dir), "--meta", str(meta), "--threads", "1"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def study():
    cfg = yaml.safe_load(TINY.read_text())
    cfg.setdefault("base_seed", 1337)
    cfg.setdefault("baseline", "baseline")
    return cfg


# ------------------------------------------------------------------ 2: permissions of outputs

@pytest.mark.parametrize("umask", [0o002, 0o022], ids=["umask002", "umask022"])
def test_atomic_writes_get_the_permissions_of_open_under_the_umask(umask, tmp_path, raw_copy):
    raw = raw_copy("tinyshakespeare", "input.txt")
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
        write_json_atomic(tmp_path / "result.json", {"final_val_loss": 1.0})
        write_text_atomic(tmp_path / "verdict.md", "# verdict\n")
        with atomic_write(tmp_path / "checkpoint.pt", "wb") as handle:
            handle.write(b"\0" * 16)
        prepare("shakespeare_char", raw, tmp_path / "tokens")  # real token files and meta.json
    finally:
        os.umask(previous)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask
    written = [tmp_path / n for n in ("result.json", "verdict.md", "checkpoint.pt")]
    written += [tmp_path / "tokens" / n for n in ("meta.json", "train.bin", "val.bin")]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(plain) for p in written}
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "tokens").glob(".*.tmp"))


# ------------------------------------------------------------------ 3: raw files verified where read

def test_tokenize_refuses_a_raw_file_changed_after_download(raw_copy, tmp_path):
    raw = raw_copy("tinyshakespeare", "input.txt")
    data = bytearray((raw / "input.txt").read_bytes())
    data[1000] ^= 0x20  # one letter changes case: still valid text, same size
    (raw / "input.txt").write_bytes(data)
    actual = hashlib.sha256(data).hexdigest()
    out = tmp_path / "tokens"
    proc = subprocess.run([sys.executable, "-m", "workflow.tokenize", "--dataset", "shakespeare_char",
                           "--raw-dir", str(raw), "--out-dir", str(out)], capture_output=True, text=True, env=env(),
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {raw / 'input.txt'}:")
    assert actual in error and SHAKESPEARE_SHA256 in error
    assert not (out / "meta.json").exists() and not (out / "train.bin").exists()


def test_tokenize_checks_the_gpt2_ranks_it_reads(raw_copy, tmp_path):
    raw = raw_copy("tinyshakespeare", "input.txt")
    ranks = raw_copy("gpt2", "r50k_base.tiktoken") / "r50k_base.tiktoken"
    ranks.write_bytes(ranks.read_bytes()[:100_000])  # a partial copy
    with pytest.raises(DataError, match=r"r50k_base.tiktoken: 100,000 bytes, sha256 [0-9a-f]{64}, but the registry .* "
                                        r"expects 835,554 bytes, sha256 306cd27f"):
        prepare("shakespeare_gpt2", raw, tmp_path / "tokens")
    assert not (tmp_path / "tokens" / "meta.json").exists()


# ------------------------------------------------------------------ 4: custom text, windows

def _shakespeare_docs(shared_data: Path, n_lines: int = 1200) -> str:
    lines = (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines(keepends=True)
    return "".join(lines[:n_lines])  # documents: speeches separated by blank lines


def test_custom_text_with_crlf_and_bom_gives_the_ids_of_its_lf_copy(shared_data, tmp_path):
    text = _shakespeare_docs(shared_data)
    lf, crlf = tmp_path / "lf", tmp_path / "crlf"
    lf.mkdir()
    crlf.mkdir()
    (lf / "play.txt").write_bytes(text.encode())
    (crlf / "play.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())  # Windows Notepad style
    options = {"charset": "".join(sorted(set(text))), "vocab_size": 64, "val_fraction": 0.1}
    meta_lf = prepare("custom_text", lf, tmp_path / "tok_lf", {**options, "folder": str(lf)})
    meta = prepare("custom_text", crlf, tmp_path / "tok_crlf", {**options, "folder": str(crlf)})
    assert meta["documents"] == meta_lf["documents"] and meta["documents"]["val"] > 0
    assert meta["splits"] == meta_lf["splits"]
    for split in ("train", "val"):
        assert (tmp_path / "tok_crlf" / f"{split}.bin").read_bytes() == (tmp_path / "tok_lf" / f"{split}.bin").read_bytes()
    assert meta["normalized"] == {"crlf_line_ends": text.count("\n"), "utf8_bom_files": 1}


def test_custom_text_crlf_error_names_the_place_on_disk(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    data = b"\xef\xbb\xbf12+3.\r\nH\r\n\r\n7-1*\r\n"
    (folder / "a.txt").write_bytes(data)
    with pytest.raises(DataError, match=rf"a.txt: line 4, column 4 \(byte {data.index(b'*')}\): character '\*'"):
        prepare("custom_text", folder, tmp_path / "tok", {"folder": str(folder), "chunk_bytes": 4})


def test_a_split_without_any_window_stops_tokenization(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "one.txt").write_text("12+3.\nH\n")  # one document: 90 % of it is all of it, val is empty
    out = tmp_path / "tok"
    with pytest.raises(DataError, match=r"val.bin: split 'val' has 0 tokens, but a training window needs "
                                        r"block_size \+ 1 >= 2 tokens"):
        prepare("custom_text", folder, out, {"folder": str(folder)})
    assert not out.exists() or list(out.iterdir()) == []


def test_job_stops_before_training_when_a_split_is_shorter_than_the_window(shared_data, tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    text = _shakespeare_docs(shared_data, 400)
    (folder / "a.txt").write_text(text)
    (folder / "z.txt").write_text("To be.\n")  # the last document: the val split
    charset = "".join(sorted(set(text)))
    n_docs = prepare("custom_text", folder, tmp_path / "probe", {"folder": str(folder), "charset": charset,
                                                                  "vocab_size": 64})["documents"]
    n_docs = n_docs["train"] + n_docs["val"]
    meta = prepare("custom_text", folder, tmp_path / "tok", {"folder": str(folder), "charset": charset,
                                                              "vocab_size": 64, "val_fraction": 1 / n_docs})
    assert meta["splits"]["val"]["tokens"] == 8  # <|bos|> + "To be.\n"
    out = tmp_path / "run"
    cmd = [*launcher({"nodes": 1, "nproc_per_node": 1}), "--log", str(out / "train.log"),
           *trainer_args({**run_cfg(4), "dataset": "custom_text", "dataset_options": meta["options"]}, out,
                         tmp_path / "tok" / "meta.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=240)
    log = (out / "train.log").read_text()
    assert proc.returncode == 1, log
    assert "split 'val' has 8 tokens, but one training window needs 33 (model.block_size 32 + 1)" in log
    assert "Traceback" not in log and "run h/A/v" not in log  # the trainer never started
    assert not (out / "result.json").exists()


# ------------------------------------------------------------------ 6, 7: parse-time checks

def test_gate_k_above_the_variants_is_rejected_naming_the_key(study):
    study["stages"]["A"]["gate"]["k"] = 4  # tiny.yaml: 4 variants, 3 besides the baseline
    with pytest.raises(ConfigError, match=r"stages\.A\.gate\.k: 4, but the study has 3 variants besides the baseline"):
        check_study(study)
    study["stages"]["A"]["gate"]["k"] = 3
    check_study(study)  # k = 3 ranks them all: allowed
    study["stages"]["A"]["gate"] = {"rule": "beats_baseline", "k": 9}  # k means nothing to beats_baseline
    check_study(study)


def test_unknown_dataset_is_rejected_listing_the_known_ones(study):
    study["dataset"] = "shakespeare_chars"
    with pytest.raises(ConfigError, match=r"dataset: 'shakespeare_chars' is not a known dataset \(known: custom_text, "
                                          r".*shakespeare_char, shakespeare_gpt2"):
        check_study(study)
    study["dataset"] = "shakespeare_char"
    study["datasets"] = {"shakespeare_char": {"train_frac": 0.8}}
    with pytest.raises(ConfigError, match=r"datasets\.shakespeare_char.*'train_frac'.*train_fraction"):
        check_study(study)


# ------------------------------------------------------------------ 7, 8, 12: real snakemake -n

def _write_study(tmp_path: Path, name: str, edit) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    edit(cfg)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_snakemake_errors_name_the_problem_in_a_few_lines(tmp_path):
    typo = _write_study(tmp_path, "typo.yaml", lambda c: c.update(verdcit={"alpha": 0.05}))
    proc = snakemake(tmp_path, "-n", "--configfile", str(typo), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "verdcit = {\"alpha\": 0.05}: unknown key; did you mean 'verdict'?" in out
    assert "rule: additionalProperties: false" in out and "description of the study: A stagerun study" in out
    assert len(out.splitlines()) < 20, out  # not the schema (Snakemake's own message: ~800 lines)
    assert "definitions" not in out

    bad_k = _write_study(tmp_path, "bad_k.yaml", lambda c: c["stages"]["A"]["gate"].update(k=0))
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad_k), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "stages.A.gate.k = 0: 0 is less than the minimum of 1" in out
    assert "rule: minimum: 1" in out and "description: top_k: how many variants advance" in out

    unknown = _write_study(tmp_path, "unknown.yaml", lambda c: c.update(dataset="shakespeare_chars"))
    proc = snakemake(tmp_path, "-n", "--configfile", str(unknown), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dataset: 'shakespeare_chars' is not a known dataset (known: custom_text," in out
    assert "MissingInputException" not in out
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_readme_configfile_then_target_form_works(tmp_path):
    readme = (REPO / "README.md").read_text()
    documented = re.search(r"^snakemake (.*)--configfile config/studies/X\.yaml -- (\S+)", readme, re.M)
    assert documented, "README documents `snakemake ... --configfile X.yaml -- <target>`"
    target = documented.group(2)
    proc = snakemake(tmp_path, "-n", "--configfile", str(TINY), "--", target)
    assert re.search(r"^train\s+8$", proc.stdout, re.M), proc.stdout[-2000:]  # stage A: 4 variants x 2 seeds
    assert "download_checked" in proc.stdout
    # What a user types without the `--`: Snakemake reads the target as a second config file.
    proc = snakemake(tmp_path, "-n", "--configfile", str(TINY), target, check=False)
    assert proc.returncode != 0 and target in proc.stdout + proc.stderr


# ------------------------------------------------------------------ 10: exit status 75

def test_exit_status_rule():
    assert job_exit_status(1, {0: 75, 1: 75}, 2) == EXIT_PREEMPTED      # torchrun says 1, both workers 75
    assert job_exit_status(1, {0: 75, 1: 1}, 2) == 1                    # one worker failed: a failure
    assert job_exit_status(1, {0: 75}, 2) == 1                          # a worker without a status (killed)
    assert job_exit_status(-15, {}, 2, preempt_signal=True) == EXIT_PREEMPTED  # signalled before workers started
    assert job_exit_status(-9, {}, 2) == 137
    assert job_exit_status(0, {0: 0, 1: 0}, 2) == 0


def test_one_process_job_is_the_trainer_and_exits_75_on_sigterm(shakespeare_char_meta, tmp_path):
    out = tmp_path / "run"
    cmd = [*launcher({"nodes": 1, "nproc_per_node": 1}), "--log", str(out / "train.log"),
           *trainer_args(run_cfg(5000), out, shakespeare_char_meta)]
    assert "torch.distributed.run" not in cmd and "torchrun" not in " ".join(cmd)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=tmp_path)
    wait_for_step(out / "metrics.partial.jsonl", 4, proc)
    started = [" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True)]
    assert not [c for c in started if "workflow" in c or "torch" in c], started  # the trainer is this process
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED
    log = (out / "train.log").read_text()
    assert "world_size 1 (single, none)" in log and re.search(r"PREEMPTED by signal at step \d+", log)


@pytest.mark.parametrize("who", ["launcher", "process group"])
def test_torchrun_job_exits_75_on_sigterm(who, shakespeare_char_meta, tmp_path):
    out = tmp_path / "run"
    cmd = [*launcher({"nodes": 1, "nproc_per_node": 2}), "--log", str(out / "train.log"),
           *trainer_args(run_cfg(5000), out, shakespeare_char_meta)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=tmp_path,
                            start_new_session=True)
    wait_for_step(out / "metrics.partial.jsonl", 4, proc)
    if who == "launcher":
        proc.send_signal(signal.SIGTERM)  # the job's command only: it passes the signal on
    else:
        os.killpg(proc.pid, signal.SIGTERM)  # every process of the job at once, as SLURM does
    code = proc.wait(timeout=180)
    log = (out / "train.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    assert "world_size 2 (torchrun, gloo)" in log and "PREEMPTED by signal at step" in log
    assert re.search(r"worker exit codes \{0: 75, 1: 75\}; job exit status 75", log), log[-3000:]


def test_one_process_job_gives_the_losses_of_torchrun_with_one_process(shakespeare_char_meta, tmp_path):
    cfg = run_cfg(12, val_loss_every=6)
    direct, via_torchrun = tmp_path / "direct", tmp_path / "torchrun"
    subprocess.run([*launcher({"nodes": 1, "nproc_per_node": 1}), *trainer_args(cfg, direct, shakespeare_char_meta)],
                   check=True, capture_output=True, env=env(), cwd=tmp_path, timeout=240)
    subprocess.run([*TORCHRUN, "--nproc_per_node", "1", "-m", "workflow.train",
                    *trainer_args(cfg, via_torchrun, shakespeare_char_meta)],
                   check=True, capture_output=True, env=env(), cwd=tmp_path, timeout=240)
    a, b = (json.loads((d / "result.json").read_text()) for d in (direct, via_torchrun))
    assert a["final_val_loss"] == b["final_val_loss"] and a["final_train_loss"] == b["final_train_loss"]
    assert rows_without_timings(direct / "metrics.jsonl") == rows_without_timings(via_torchrun / "metrics.jsonl")


# ------------------------------------------------------------------ 10, 11: Snakemake after a preemption

def test_snakemake_rerun_after_preemption_keeps_every_attempts_log(shared_data_server, tmp_path):
    def edit(cfg):
        cfg["variants"] = {"baseline": {}, "lr-6e-3": cfg["variants"]["lr-6e-3"]}
        cfg["stages"]["A"]["train"] = {"num_iterations": 150, "val_loss_every": 0}
        cfg.update(mirror=shared_data_server)

    study = _write_study(tmp_path, "study.yaml", edit)
    run = tmp_path / "results" / "tiny" / "stage_A" / "baseline" / "seed_1337"
    target = str((run / "result.json").relative_to(tmp_path))  # targets are relative to --directory
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "--configfile", str(study), "--", target]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    try:
        wait_for_step(run / "metrics.partial.jsonl", 4, first)
        jobs = [p for p in psutil.Process(first.pid).children(recursive=True)
                if "workflow.launch" in " ".join(p.cmdline())]
        assert len(jobs) == 1, [p.cmdline() for p in psutil.Process(first.pid).children(recursive=True)]
        jobs[0].send_signal(signal.SIGTERM)  # the training job only, not Snakemake
        output, _ = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert re.search(r"exit status 75|exit code:? 75|returned non-zero exit status 75", output), output[-3000:]
    attempt1 = (run / "train.attempt-1.log").read_text()
    assert re.search(r"PREEMPTED by signal at step \d+", attempt1)

    second = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    attempt2 = (run / "train.attempt-2.log").read_text()
    assert "resumed from" in attempt2 and "PREEMPTED" not in attempt2
    assert (run / "train.attempt-1.log").read_text() == attempt1  # the first attempt's log survived the rerun
    assert os.path.samefile(run / "train.log", run / "train.attempt-2.log")
    assert json.loads((run / "result.json").read_text())["final_step"] == 150


# ========================================================================= bad input, second round
# (in-process checks: tests/unit/test_study_checks.py; here the real Snakefile, launcher and trainer)

def _tiny_edit(**changes):
    def edit(cfg):
        for dotted, value in changes.items():
            node = cfg
            *parents, last = dotted.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
    return edit


# Item 1: every user string is data. Each study plans (`snakemake -n`); a folder with braces stops
# with the key named. Items 7-9, 5: set= errors and plan warnings through the real parse.
@pytest.mark.parametrize("study_file, edit, args, expect_ok, expected", [
    (None, _tiny_edit(**{"variants/lr-6e-3/description": "lr {x} test"}), (), True, None),
    (None, _tiny_edit(**{"variants/lr-6e-3/description": "double {{x}} braces"}), (), True, None),
    (None, _tiny_edit(wandb={"project": "p{a}"}), (), True, None),
    (None, _tiny_edit(**{"datasets/shakespeare_char/train_fraction": 0.8}), (), True, None),
    ("gossip.yaml", None, (), True, None),
    ("multi30k.yaml", None, (), True, None),
    (None, _tiny_edit(results_dir="res{x}"), (), False, "results_dir: 'res{x}' has a brace, but it becomes part of "
                                                        "every output path"),
    (None, _tiny_edit(data_dir="data/{x}"), (), False, "data_dir: 'data/{x}' has a brace"),
    (None, _tiny_edit(), ("--config", "set=stages.Z.seeds=2"), False,
     "set 'stages.Z.seeds=2': the study has no stage 'Z' (stages: A, B, C)"),
    (None, _tiny_edit(), ("--config", "set=[train.lr=3e-3, stages.A.seeds=3"), False,
     "set: '[train.lr=3e-3, stages.A.seeds=3' has no closing ']'"),
    (None, _tiny_edit(**{"stages/C/seeds": 1}), (), True,
     "WARNING: stages.C.seeds: 1, but the verdict's paired t-test needs at least 2 seed-matched pairs"),
    (None, _tiny_edit(**{"variants/lr-6e-3/train/strategy": {"name": "gossip"}}), (), True,
     "WARNING: stages.A + variants.lr-6e-3: strategy gossip with 1 worker per run"),
], ids=["description", "description_escaped", "wandb_project", "dataset_options", "gossip_yaml", "multi30k_yaml",
        "results_dir", "data_dir", "set_unknown_stage", "set_unclosed_list", "one_seed_verdict", "gossip_one_worker"])
def test_user_strings_plan_and_bad_studies_stop_at_parse(study_file, edit, args, expect_ok, expected, tmp_path):
    config = REPO / "config" / "studies" / study_file if study_file else _write_study(tmp_path, "s.yaml", edit)
    proc = snakemake(tmp_path, "-n", "--configfile", str(config), *args, check=False)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, out[-4000:]
    assert "WildcardError" not in out and "Traceback" not in out
    if expect_ok:
        assert re.search(r"^train\s+\d+$", out, re.M), out[-3000:]
    else:
        assert len(out.splitlines()) < 40, out
        assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    if expected:
        assert expected in out, out[-4000:]


# Item 3 and item 2's run-side check: the launcher's data check stops the job before the trainer
# (no torch trace) when the model's vocab_size is below the data's symbols, or when the tokens were
# made with other options than the run's study gives.
@pytest.mark.parametrize("change, message", [
    ({"model": {"preset": "nanogpt-small", "vocab_size": 10}},
     "model.vocab_size: 10, but the data ({meta}) has 65 symbols (token ids 0..64)"),
    ({"dataset_options": {"train_fraction": 0.99999}},
     "{meta}: these tokens are not this run's: they were made with datasets.shakespeare_char options {{}}, but the "
     'study gives {{"train_fraction": 0.99999}}'),
], ids=["vocab_size", "token_options"])
def test_launcher_data_check_names_the_mismatch_before_training(change, message, shakespeare_char_meta, tmp_path):
    out = tmp_path / "run"
    cmd = [*launcher({"nodes": 1, "nproc_per_node": 1}), "--log", str(out / "train.log"),
           *trainer_args({**run_cfg(4), **change}, out, shakespeare_char_meta)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=240)
    log = (out / "train.log").read_text()
    assert proc.returncode == 1, log
    assert message.format(meta=shakespeare_char_meta) in log, log
    assert "Traceback" not in log and "IndexError" not in log and not (out / "result.json").exists()


def test_vocab_size_below_the_data_stops_the_dry_run_when_the_tokens_exist(shakespeare_char_meta, tmp_path):
    tokens = tmp_path / "data" / "tokens" / "shakespeare_char"
    tokens.mkdir(parents=True)
    (tokens / "meta.json").write_text(shakespeare_char_meta.read_text())
    study = _write_study(tmp_path, "s.yaml", _tiny_edit(model={"preset": "nanogpt-small", "vocab_size": 10}))
    proc = snakemake(tmp_path, "-n", "--configfile", str(study), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model.vocab_size: 10, but the data (data/tokens/shakespeare_char/meta.json) has 65 symbols" in out, out
    assert not (tmp_path / "results").exists()


# Item 2: two studies with different train_fraction on one data_dir keep their own tokens and results.
def test_two_studies_with_different_splits_keep_separate_tokens_and_results(shared_data_server, tmp_path):
    def edit(name, options):
        def apply(cfg):
            cfg.update(study=name, mirror=shared_data_server, variants={"baseline": {}, "lr-6e-3": cfg["variants"]["lr-6e-3"]})
            cfg["stages"]["A"]["train"] = {"num_iterations": 4, "val_loss_every": 0}
            if options:
                cfg["datasets"] = {"shakespeare_char": options}
        return apply

    studies = {"one": {}, "two": {"train_fraction": 0.8}}
    results = {}
    for name, options in studies.items():
        study = _write_study(tmp_path, f"{name}.yaml", edit(name, options))
        target = f"results/{name}/stage_A/baseline/seed_1337/result.json"
        snakemake(tmp_path, "--cores", "1", "--configfile", str(study), "--", target)
        results[name] = json.loads((tmp_path / target).read_text())
        if name == "one":
            first = {p.name: p.read_bytes() for p in (tmp_path / "data" / "tokens" / "shakespeare_char").iterdir()}
    folders = sorted(p.name for p in (tmp_path / "data" / "tokens").iterdir())
    assert folders[0] == "shakespeare_char" and re.fullmatch(r"shakespeare_char-[0-9a-f]{12}", folders[1]), folders
    metas = {f: json.loads((tmp_path / "data" / "tokens" / f / "meta.json").read_text()) for f in folders}
    assert metas[folders[0]]["options"]["train_fraction"] == 0.9 and metas[folders[1]]["options"]["train_fraction"] == 0.8
    assert metas[folders[0]]["splits"]["val"]["tokens"] == 111540 and metas[folders[1]]["splits"]["val"]["tokens"] == 223079
    # the first study's tokens were not touched, and its finished run is not invalidated
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "tokens" / folders[0]).iterdir()} == first
    again = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "one.yaml"), "--",
                      "results/one/stage_A/baseline/seed_1337/result.json")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
    assert results["one"]["final_val_loss"] != results["two"]["final_val_loss"]  # different val splits


# Full disk: `Errno 28` names the folder and its free space, not a trace through torch.save; no file
# that looks finished is left. A real full file system: a 256 KiB tmpfs (root), which holds the run's
# metrics but not its model.
def test_full_disk_names_the_folder_and_the_free_space(shakespeare_char_meta, tmp_path, full_disk_folder):
    small = full_disk_folder
    out = small / "run"
    log = tmp_path / "train.log"
    cmd = [*launcher({"nodes": 1, "nproc_per_node": 1}), "--log", str(log),
           *trainer_args(run_cfg(4), out, shakespeare_char_meta)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=240)
    text = log.read_text()
    assert proc.returncode == 1, text[-3000:]
    error = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, text[-3000:]
    assert re.fullmatch(rf"error: \[Errno 28\] {re.escape(str(out))}\S*: no space left on device writing \S+ "
                        r"\([\d.,]+ (bytes|KiB) written before it filled; removed\); [\d.,]+ (bytes|KiB) free of "
                        r"256\.0 KiB there now: free space or move the folder \(results_dir / data_dir\)", error[0]), error
    assert "Traceback" not in text and "torch" not in error[0]
    assert not (out / "result.json").exists() and not (out / "model.pt").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# The kill test, landing inside training: warm start on, kill -9 of Snakemake's whole process group
# while stage A's trainers are mid-run (after a metrics row past a checkpoint, not after a fixed
# time), then `snakemake --unlock` and a rerun: the results equal an uninterrupted run's bit for bit,
# and no process of the killed invocation outlives it (psutil, by an environment marker that every
# process it starts inherits, warm-server forks included).
def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("STAGERUN_TEST_MARKER") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _wait_until_gone(marker: str, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [(p.pid, " ".join(p.cmdline())) for p in _processes_with(marker)]


def test_kill_9_of_snakemake_mid_training_with_warm_start_then_rerun_is_exact(shared_data_server, tmp_path):
    def edit(cfg):
        cfg.update(mirror=shared_data_server, warm_start="on")
        cfg["variants"] = {"baseline": {}, "lr-6e-3": cfg["variants"]["lr-6e-3"]}
        cfg["stages"]["A"].update(seeds=1, train={"num_iterations": 150, "val_loss_every": 50, "checkpoint_every": 20})

    study = _write_study(tmp_path, "study.yaml", edit)
    runs = {v: f"results/tiny/stage_A/{v}/seed_1337" for v in ("baseline", "lr-6e-3")}
    targets = ["--", *(f"{r}/result.json" for r in runs.values())]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    marker = f"kill-{os.getpid()}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(killed),
           "--cores", "2", "--configfile", str(study), *targets]
    killed.mkdir()
    with open(tmp_path / "first.out", "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**env(), "STAGERUN_TEST_MARKER": marker},
                                 start_new_session=True)  # its own process group, as a terminal's job
    try:
        partials = [killed / r / "metrics.partial.jsonl" for r in runs.values()]
        deadline = time.monotonic() + 300
        while max(last_step(p) for p in partials) < 24 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "first.out").read_text()[-3000:]
        steps = [last_step(p) for p in partials]
        assert 24 <= max(steps) < 150, steps  # inside training, past the checkpoint of step 20
        trainers = [p for p in _processes_with(marker) if "workflow.warm" in " ".join(p.cmdline())]
        assert trainers, "no warm server: the trainers did not fork from it"
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 of Snakemake's process group
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert "warm start: training processes fork" in (tmp_path / "first.out").read_text()
    assert _wait_until_gone(marker) == []  # no trainer, launcher or warm server outlives the kill

    snakemake(killed, "--unlock", "--configfile", str(study))
    snakemake(killed, "--cores", "2", "--configfile", str(study), *targets)
    watched = killed / runs["baseline" if steps[0] >= steps[1] else "lr-6e-3"]
    assert "resumed from" in (watched / "train.attempt-2.log").read_text()
    reference.mkdir()
    snakemake(reference, "--cores", "2", "--configfile", str(study), *targets)
    for run in runs.values():
        a, b = (json.loads((d / run / "result.json").read_text()) for d in (killed, reference))
        assert (a["final_val_loss"], a["final_train_loss"], a["final_step"]) == \
            (b["final_val_loss"], b["final_train_loss"], b["final_step"]) and a["final_step"] == 150
        assert rows_without_timings(killed / run / "metrics.jsonl") == rows_without_timings(reference / run / "metrics.jsonl")
    assert _wait_until_gone(marker, timeout=10) == []


# Third round, through the real parse (`snakemake -n`): the study file as written by hand (text
# edits of tests/configs/tiny.yaml, so YAML's traps stay in the file), set= with list values, and
# a warning. The messages themselves (and the settings that can never work) are checked in tests/unit
# (test_study_study_file.py, test_study_checks.py); here: they reach the user, before any job.
def _text(*replacements: tuple[str, str]) -> str:
    text = TINY.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("text, args, expect_ok, expected", [
    (_text(("  lr-1e-4:", "  lr-6e-3:")), (), False,
     "line 21: variants.lr-6e-3 is written twice (first on line 19); YAML would keep only the last one: rename or "
     "remove one of them"),
    (_text(("  lr-1e-4:", "  123:"), ("  diverge:", "  yes:"), ("  C:\n", "  2:\n"), ("lr: 2.0e-3", "lr: 2e-3")),
     (), True, "rule stage_table:"),
    (_text(), ("set=[stages.A.seeds=3, train.curriculum_block_sizes=[16, 32], train.curriculum_steps=[4]]",),
     True, '"curriculum_block_sizes": [16, 32], "curriculum_fractions": null, "curriculum_min_delta": 0.0, '
           '"curriculum_patience": 2, "curriculum_steps": [4]'),
    (_text(("gate: {rule: top_k, k: 1}", "gate: {rule: top_k, k: 1, pivot: true}")), (), True,
     "WARNING: stages.A.gate.pivot: true, but a pivot runs the next-best variant of the previous gate"),
], ids=["duplicate_variant", "typed_names_and_2e-3", "set_list_values", "pivot_first_gate"])
def test_hand_written_traps_stop_or_warn_at_parse(text, args, expect_ok, expected, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    proc = snakemake(tmp_path, "-n", "--configfile", str(path), "--config", "mirror=../shared/data", *args, check=False)
    if "seeds=3" in " ".join(args):
        assert "stage_A/baseline/seed_1339" in proc.stdout
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, out[-4000:]
    assert "InputFunctionException" not in out and "TypeError" not in out
    assert expected in out, out[-4000:]
    if not expect_ok:
        assert len(out.splitlines()) < 40, out
        assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
