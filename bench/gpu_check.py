"""The parts of bench/gpu_check.sh (one GPU slice, one command) and its summary.

    python bench/gpu_check.py part NAME --out DIR [--dry]   one part -> DIR/parts/NAME.json
    python bench/gpu_check.py summarize --out DIR            DIR/gpu_check.json + DIR/gpu_check.md

bench/gpu_check.sh runs every part under its own ``timeout`` and then ``summarize``; run the
shell script, not this file. Parts (``cuda``: needs a CUDA GPU; skipped under ``--dry`` or
without CUDA, with the reason):

============  =====  ==========================================================================
part          cuda   what it runs
============  =====  ==========================================================================
env           no     torch / CUDA / NCCL versions, GPU names, memory, C++ compiler, triton
plan          no     every run config below validated against config/schema.yaml and
                     ``snakemake -n`` of both study commands (catches a typo before the slice)
cpu_smoke     no     one 4-step CPU run through the same runner as the short runs
bench         yes    ``bench/bench_train.py gpu``: GPT-2 124M, bf16, eager and compiled
blocks        yes    40-step runs, bf16 + compile, on one GPU, side by side: sequential, palm,
                     tp/spd/parallel (simulated), DepthWarm, Muon
strategies    yes    DDP (nproc_per_node = GPU count), DiLoCo, gossip and real tensor
                     parallelism (each needs >= 2 GPUs: one NCCL rank per GPU)
warm          yes    stage A of the default study on CUDA, warm_start on and off: same losses
study         yes    the default study end to end on CUDA (stages cut short), with its report
============  =====  ==========================================================================

A part's JSON: ``{"name", "cuda", "status": ok|failed|skipped, "reason", "seconds",
"results"}``; the shell writes ``timeout`` itself when it had to kill a part. Every short run's
result: final train and val loss, tokens/s, MFU, peak memory, compile frames and graph breaks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.model.spec import build_model_config  # noqa: E402  (torch-free)
from workflow.study.schema import validate_section  # noqa: E402  (torch-free)

PARTS = ("env", "plan", "cpu_smoke", "bench", "blocks", "strategies", "warm", "study")
CUDA_PARTS = ("bench", "blocks", "strategies", "warm", "study")
SHARED = Path(os.environ.get("STAGERUN_SHARED_DATA") or REPO.parent / "shared" / "data")

#: Relative tolerance of warm_start on against off (final val_loss of every run). Both run the
#: same trainer code on the same GPU; CUDA runs are not bit-reproducible (configure_backends
#: leaves deterministic algorithms off: atomic adds in the embedding backward, TF32 matmuls
#: with split-K), so two identical runs of 30 steps differ by rounding, ~1e-4 relative
#: (first measurement: see docs/performance.md "GPU"). A warm-start fault (a stale module, the
#: wrong device, CUDA state inherited from the server) moves the loss by far more.
WARM_RTOL = 1e-3

TINY = {"preset": "nanogpt-small"}
BLOCK_RUNS = {
    "sequential": ({}, TINY),
    "palm": ({}, {**TINY, "block_type": "palm"}),
    "tp-spd-parallel": ({}, {**TINY, "n_layer": 3, "block_pattern": ["tp", "spd", "parallel"], "tp_size": 2}),
    "depthwarm": ({}, {**TINY, "n_layer": 4, "depth_warm": True, "depth_warm_start_layers": 1,
                       "depth_warm_steps": 20, "depth_warm_drop_prob": 0.3, "depth_warm_drop_until": 30}),
    "muon": ({"optimizer": "muon"}, TINY),
}
#: name -> (train overrides, model, minimum GPUs)
STRATEGY_RUNS = {
    "ddp": ({"strategy": {"name": "ddp"}}, TINY, 1),
    "diloco": ({"strategy": {"name": "diloco", "tau": 10}}, TINY, 2),
    "gossip": ({"strategy": {"name": "gossip", "topology": "ring"}, "lr": 0.02}, TINY, 2),
    "tp-real": ({"strategy": {"name": "ddp"}}, {**TINY, "n_layer": 2, "block_pattern": ["tp", "spd"], "tp_size": 2,
                                               "tp_mode": "real"}, 2),
}
STEPS = 40
#: Harness self-test only (never for a measurement): GPU_CHECK_DEVICE=cpu runs the CUDA parts'
#: runs on the CPU, GPU_CHECK_COMPILE=0 without torch.compile (what the parts do, checked
#: without a GPU; gloo instead of NCCL).
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
COMPILE = os.environ.get("GPU_CHECK_COMPILE", "1") != "0"
NEEDS = {"bench": "GPT-2 124M on the GPU", "blocks": "5 short runs on GPU 0", "strategies": "NCCL workers, one per GPU",
         "warm": "stage A on CUDA, warm start on and off", "study": "the default study with train.device cuda"}
#: The default study cut short (stage lengths in steps) for the warm and study parts.
STUDY_SET = "stages.A.train.num_iterations=40, stages.B.train.num_iterations=60, stages.C.train.num_iterations=80"


def run_config(name: str, train: dict, model: dict, device: str, steps: int = STEPS, compiled: bool = COMPILE) -> dict:
    """A short run on tiny Shakespeare (characters): batch 32 x 32 tokens, val at 0 and the end."""
    base = {"batch_size": 32, "num_iterations": steps, "lr": 2e-3, "warmup_iters": 5, "val_loss_every": steps,
            "log_every": 10, "val_tokens": 8192, "device": device, "dtype": "bfloat16", "compile": compiled}
    return {"study": "gpu_check", "stage": "A", "variant": name, "seed": 1337, "run_id": 0,
            "dataset": "shakespeare_char", "model": dict(model), "train": {**base, **train}}


_CHILDREN: set[int] = set()  # process groups of the commands running now


def run_command(cmd: list[str], timeout: float, log: Path, **kwargs) -> int | None:
    """Run ``cmd`` in its own process group with stdout and stderr to ``log``; after ``timeout``
    seconds the whole group is killed (torchrun's workers, snakemake's jobs) and None returned,
    else the exit status. A SIGTERM to this process (the shell's ``timeout``) kills the groups too."""
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        _CHILDREN.add(proc.pid)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            return None
        finally:
            _CHILDREN.discard(proc.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 (signal handler signature)
    for pgid in list(_CHILDREN):
        _kill_group(pgid)
    sys.exit(124)


def gpu_count() -> int:
    """CUDA devices (with GPU_CHECK_DEVICE=cpu: 2, the gloo workers of a harness self-test)."""
    import torch  # deferred: torch is heavy, and summarize never needs it

    if DEVICE == "cpu":
        return 2
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ----- parts ---------------------------------------------------------------------------------

def part_env(args) -> dict:
    import torch  # deferred: torch is heavy, and summarize never needs it

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "cuda_version": torch.version.cuda, "gpus": [], "nccl": None, "cxx": shutil.which("g++") or shutil.which("c++"),
           "hostname": platform.node(), "cpus": os.cpu_count()}
    try:
        import triton  # noqa: F401  (inductor's GPU code generator)
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if torch.cuda.is_available():
        version = torch.cuda.nccl.version()
        out["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        out["nccl_available"] = torch.distributed.is_nccl_available()
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            out["gpus"].append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                                "memory_gib": round(total / 2**30, 1), "free_gib": round(free / 2**30, 1)})
        out["nccl_all_reduce"] = nccl_self_test()
    status, reason = "ok", None
    if not args.dry and not out["cuda_available"]:
        status = "failed"
        reason = (f"torch {torch.__version__} sees no CUDA device (a CPU wheel? README: 'Set-up' installs the CUDA "
                  "wheel with TORCH_SPEC)")
    return {"status": status, "reason": reason, "results": out}


def nccl_self_test() -> str:
    """One NCCL all-reduce in a 1-rank process group on GPU 0 ("ok" or the error): NCCL's
    library loads and runs even where one GPU leaves the multi-process runs skipped."""
    import torch  # deferred: torch is heavy, and summarize never needs it
    import torch.distributed as dist

    try:
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device("cuda", 0))
        x = torch.ones(4, device="cuda:0")
        dist.all_reduce(x)
        torch.cuda.synchronize()
        dist.destroy_process_group()
        return "ok" if x.sum().item() == 4.0 else f"wrong sum {x.sum().item()}"
    except Exception as err:  # noqa: BLE001 (reported, not raised)
        return f"{type(err).__name__}: {err}"[:300]


def tokenized_meta(out: Path) -> Path:
    """tiny Shakespeare, characters, tokenized into ``out/data`` (raw text from the shared data,
    ``$STAGERUN_MIRROR``, or the public URL)."""
    meta = out / "data" / "tokens" / "shakespeare_char" / "meta.json"
    if meta.is_file():
        return meta
    raw = out / "data" / "raw" / "tinyshakespeare"
    if not (raw / "input.txt").is_file():
        mirror = os.environ.get("STAGERUN_MIRROR") or (str(SHARED) if (SHARED / "tinyshakespeare").is_dir() else None)
        cmd = [sys.executable, "-m", "workflow.download", "--source", "tinyshakespeare", "--file", "input.txt",
               "--out", str(raw / "input.txt"), "--no-progress"] + (["--mirror", mirror] if mirror else [])
        subprocess.run(cmd, check=True, cwd=REPO, timeout=120)
    subprocess.run([sys.executable, "-m", "workflow.tokenize", "--dataset", "shakespeare_char", "--raw-dir", str(raw),
                    "--out-dir", str(meta.parent)], check=True, cwd=REPO, timeout=120, capture_output=True)
    return meta


def train_run(cfg: dict, out_dir: Path, meta: Path, nproc: int, timeout: float, torchrun: bool = False) -> dict:
    """``python -m workflow.train`` (one process) or torchrun (several, or ``torchrun``) with its
    own time limit; the run's numbers from result.json, or why there are none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    launch = ([sys.executable] if nproc == 1 and not torchrun else
              [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(nproc)])
    cmd = [*launch, "-m", "workflow.train", "--run-config", json.dumps(cfg), "--out-dir", str(out_dir),
           "--meta", str(meta)]
    start = time.monotonic()
    rc = run_command(cmd, timeout, out_dir / "train.log", cwd=out_dir, env={**os.environ, "PYTHONPATH": str(REPO)})
    out = {"nproc": nproc, "seconds": round(time.monotonic() - start, 1), "log": str(out_dir / "train.log")}
    if rc is None:
        return {**out, "status": "timeout", "reason": f"no result after {timeout:.0f} s"}
    result_file = out_dir / "result.json"
    if rc != 0 or not result_file.is_file():
        tail = (out_dir / "train.log").read_text(errors="replace").strip().splitlines()[-1:]
        return {**out, "status": "failed", "reason": f"exit {rc}: {tail[0] if tail else ''}"[:300]}
    r = json.loads(result_file.read_text())
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    mfus = [row["mfu"] for row in rows if row.get("mfu") is not None]
    ok = bool(r["success"]) and r["final_val_loss"] is not None and r["final_val_loss"] < rows[0]["val_loss"]
    return {**out, "status": "ok" if ok else "failed",
            "reason": None if ok else f"did not learn: {r.get('reason') or 'val_loss did not fall'}",
            "final_train_loss": r["final_train_loss"], "final_val_loss": r["final_val_loss"],
            "first_val_loss": rows[0]["val_loss"], "tokens_per_s": r["tokens_per_s"],
            "mfu_last_window": mfus[-1] if mfus else None, "device_name": r["device_name"],
            "world_size": r["world_size"], "compile": r.get("compile"),
            "comm_calls_by_kind": r["communication"]["calls_by_kind"]}


def _runs_status(runs: dict) -> tuple[str, str | None]:
    bad = {k: v["status"] for k, v in runs.items() if v["status"] not in ("ok", "skipped")}
    return ("ok", None) if not bad else ("failed", ", ".join(f"{k}: {v}" for k, v in bad.items()))


def part_plan(args) -> dict:

    checked = []
    for name, (train, model) in BLOCK_RUNS.items():
        cfg = run_config(name, train, model, "cuda")
        validate_section(cfg["train"], "train", f"blocks.{name}.train")
        build_model_config(cfg["model"], 65)
        checked.append(f"blocks.{name}")
    for name, (train, model, _) in STRATEGY_RUNS.items():
        cfg = run_config(name, train, model, "cuda")
        validate_section(cfg["train"], "train", f"strategies.{name}.train")
        build_model_config(cfg["model"], 65)
        checked.append(f"strategies.{name}")
    dry = {}
    for name, cmd in study_commands(args.out, dry_run=True).items():
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        dry[name] = {"command": " ".join(cmd), "rc": proc.returncode}
        if proc.returncode != 0:
            return {"status": "failed", "reason": f"snakemake -n ({name}) exit {proc.returncode}: "
                    + proc.stderr.strip()[-400:], "results": {"configs": checked, "snakemake_dry_run": dry}}
    return {"status": "ok", "reason": None, "results": {"configs": checked, "snakemake_dry_run": dry}}


def part_cpu_smoke(args) -> dict:
    meta = tokenized_meta(args.out)
    cfg = run_config("cpu_smoke", {"val_tokens": 1024}, TINY, "cpu", steps=4, compiled=False)
    cfg["train"]["dtype"] = "float32"
    run = train_run(cfg, args.out / "runs" / "cpu_smoke", meta, 1, timeout=120)
    return {"status": run["status"], "reason": run.get("reason"), "results": {"cpu_smoke": run}}


def part_bench(args) -> dict:
    out_json = args.out / "parts" / "bench_train.json"
    cmd = [sys.executable, str(REPO / "bench" / "bench_train.py"), "gpu", "--steps", "30", "--json", str(out_json)]
    log = args.out / "parts" / "bench_train.log"
    rc = run_command(cmd, args.limit - 10, log, cwd=REPO)
    if rc != 0 or not out_json.is_file():
        tail = log.read_text(errors="replace").strip()[-300:]
        return {"status": "failed", "reason": f"exit {rc}: {tail}" if rc is not None else "timeout", "results": {}}
    result = json.loads(out_json.read_text())
    if "skipped" in result:
        return {"status": "skipped", "reason": result["skipped"], "results": result}
    return {"status": "ok", "reason": None, "results": result}


def part_blocks(args) -> dict:
    """The five block / optimizer runs side by side on GPU 0 (tiny models leave the GPU idle
    most of the time; compilation is CPU work and runs in parallel)."""
    meta = tokenized_meta(args.out)
    per_run = max(30.0, args.limit - 15)
    env_one_gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    os.environ.update(env_one_gpu)
    with concurrent.futures.ThreadPoolExecutor(len(BLOCK_RUNS)) as pool:
        futures = {name: pool.submit(train_run, run_config(name, train, model, DEVICE), args.out / "runs" / name,
                                     meta, 1, per_run)
                   for name, (train, model) in BLOCK_RUNS.items()}
        runs = {name: f.result() for name, f in futures.items()}
    status, reason = _runs_status(runs)
    return {"status": status, "reason": reason, "results": runs}


def part_strategies(args) -> dict:
    meta = tokenized_meta(args.out)
    gpus = gpu_count()
    runs = {}
    deadline = time.monotonic() + args.limit - 10
    for name, (train, model, min_gpus) in STRATEGY_RUNS.items():
        nproc = gpus if name != "tp-real" else 2
        if gpus < min_gpus:
            runs[name] = {"status": "skipped", "reason": f"needs >= {min_gpus} GPUs, found {gpus}: NCCL runs one "
                          f"rank per GPU, so {name} with one worker would test nothing it adds"}
            continue
        left = deadline - time.monotonic()
        if left < 20:
            runs[name] = {"status": "skipped", "reason": "no time left in this part's limit"}
            continue
        runs[name] = train_run(run_config(name, train, model, DEVICE), args.out / "runs" / name, meta, nproc, left,
                               torchrun=True)
    status, reason = _runs_status(runs)
    return {"status": status, "reason": reason, "results": runs}


def study_commands(out: Path, dry_run: bool = False) -> dict[str, list[str]]:
    """The snakemake commands of the warm and study parts (each in its own folder under out)."""
    mirror = os.environ.get("STAGERUN_MIRROR") or (str(SHARED) if (SHARED / "tinyshakespeare").is_dir() else None)
    cores = str(min(os.cpu_count() or 1, 16))

    def smk(folder: str, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(out / "studies" / folder), "--configfile", str(REPO / "config" / "config.yaml"), "--cores", cores]
        config = [f"set=[train.device={DEVICE}, {STUDY_SET}]"] + ([f"mirror={mirror}"] if mirror else [])
        return cmd + (["-n"] if dry_run else []) + ["--config", *config, *extra]

    return {"warm_on": smk("warm_on", "warm_start=on", "--", "stage_A"),
            "warm_off": smk("warm_off", "warm_start=off", "--", "stage_A"),
            "study": smk("study")}


def _final_losses(results_dir: Path) -> dict[str, float | None]:
    return {str(p.parent.relative_to(results_dir)): json.loads(p.read_text())["final_val_loss"]
            for p in sorted(results_dir.glob("stage_*/*/seed_*/result.json"))}


def part_warm(args) -> dict:
    cmds = study_commands(args.out)
    runs, losses = {}, {}
    for name in ("warm_on", "warm_off"):
        start = time.monotonic()
        rc = run_command(cmds[name], args.limit / 2 - 5, args.out / "parts" / f"{name}.log", cwd=REPO)
        runs[name] = {"rc": rc, "seconds": round(time.monotonic() - start, 1)}
        if rc != 0:
            why = f"snakemake exit {rc}" if rc is not None else f"no end after {args.limit / 2 - 5:.0f} s"
            return {"status": "failed", "reason": f"{name}: {why} (parts/{name}.log)", "results": runs}
        losses[name] = _final_losses(args.out / "studies" / name / "results" / "shakespeare-char")
    on, off = losses["warm_on"], losses["warm_off"]
    diffs = {k: abs(on[k] - off[k]) / abs(off[k]) for k in off if k in on}
    same = set(on) == set(off) and len(off) > 0 and max(diffs.values()) <= WARM_RTOL
    # launch: "warm start: trainer is pid N, forked by the server" in a job's log = served warm
    logs = (args.out / "studies" / "warm_on" / "results" / "shakespeare-char").glob("stage_*/*/seed_*/train.log")
    served = sum("forked by the server" in p.read_text(errors="replace") for p in logs)
    results = {**runs, "runs": len(off), "served_warm": served, "max_rel_diff": max(diffs.values()) if diffs else None,
               "identical": on == off, "final_val_loss_on": on, "final_val_loss_off": off}
    reason = (None if same and served == len(off) else
              f"losses differ beyond {WARM_RTOL} relative" if not same else
              f"only {served} of {len(off)} jobs were forked by the warm server (their train.log says why)")
    return {"status": "ok" if reason is None else "failed", "reason": reason, "results": results}


def part_study(args) -> dict:
    cmd = study_commands(args.out)["study"]
    start = time.monotonic()
    rc = run_command(cmd, args.limit - 40, args.out / "parts" / "study.log", cwd=REPO)
    results_dir = args.out / "studies" / "study" / "results" / "shakespeare-char"
    out = {"rc": rc, "seconds": round(time.monotonic() - start, 1)}
    if rc != 0:
        why = f"snakemake exit {rc}" if rc is not None else f"no end after {args.limit - 40:.0f} s"
        return {"status": "failed", "reason": f"{why} (parts/study.log)", "results": out}
    report = results_dir / "report.html"
    report_rc = run_command(cmd + ["--report", str(report)], max(20, args.limit - 10 - (time.monotonic() - start)),
                            args.out / "parts" / "study_report.log", cwd=REPO)
    verdict = results_dir / "verdict.json"
    out.update({"runs": len(_final_losses(results_dir)), "report": str(report) if report.is_file() else None,
                "report_rc": report_rc,
                "verdict": json.loads(verdict.read_text()) if verdict.is_file() else None,
                "final_val_loss": _final_losses(results_dir)})
    ok = report_rc == 0 and verdict.is_file()
    return {"status": "ok" if ok else "failed", "reason": None if ok else "no verdict or report", "results": out}


def run_part(args) -> int:
    name = args.name
    start = time.monotonic()
    record = {"name": name, "cuda": name in CUDA_PARTS}
    if name in CUDA_PARTS and args.dry:
        record.update(status="skipped", reason=f"--dry (CPU dry run): needs CUDA ({NEEDS[name]})", results={})
    elif name in CUDA_PARTS and gpu_count() == 0:
        record.update(status="skipped", reason=f"no CUDA device (torch.cuda.is_available() is False); needs "
                      f"{NEEDS[name]}", results={})
    else:
        try:
            record.update(globals()[f"part_{name}"](args))
        except Exception as err:  # noqa: BLE001 (a part's failure is reported, the next part runs)
            record.update(status="failed", reason=f"{type(err).__name__}: {err}"[:500], results={})
    record["seconds"] = round(time.monotonic() - start, 1)
    (args.out / "parts").mkdir(parents=True, exist_ok=True)
    (args.out / "parts" / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"gpu_check: {name}: {record['status']}" + (f" ({record['reason']})" if record.get("reason") else ""),
          flush=True)
    return 0 if record["status"] in ("ok", "skipped") else 1


# ----- summary ---------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summarize(out: Path, dry: bool, budget_s: float, elapsed_s: float) -> dict:
    parts = {}
    for name in PARTS:
        f = out / "parts" / f"{name}.json"
        parts[name] = json.loads(f.read_text()) if f.is_file() else {
            "name": name, "cuda": name in CUDA_PARTS, "status": "missing", "reason": "the part wrote no result"}
    status = {n: p["status"] for n, p in parts.items()}
    summary = {"dry": dry, "budget_s": budget_s, "elapsed_s": elapsed_s, "status": status,
               "ok": all(s in ("ok", "skipped") for s in status.values()) and (dry or "skipped" not in
                                                                              [status[p] for p in CUDA_PARTS]),
               "parts": parts}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

    env = parts["env"].get("results", {})
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env.get("gpus", [])) or "none"
    lines = ["# stagerun GPU check", "",
             f"{'dry run (--dry), ' if dry else ''}{elapsed_s:.0f} s of a {budget_s:.0f} s budget; "
             f"torch {env.get('torch')}, CUDA {env.get('cuda_version')}, NCCL {env.get('nccl')}, GPUs: {gpus}", "",
             "| part | CUDA | status | seconds | reason |", "|---|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {'yes' if p.get('cuda') else 'no'} | {p['status']} | {_fmt(p.get('seconds'))} | "
                     f"{p.get('reason') or ''} |")
    bench = parts["bench"].get("results", {})
    if bench.get("runs"):
        lines += ["", f"## GPT-2 124M, bf16 ({bench.get('device')})", "",
                  "| mode | tokens/s | MFU | step ms | first 10 steps s | peak GiB |", "|---|---|---|---|---|---|"]
        for mode, r in bench["runs"].items():
            lines.append(f"| {mode} | {_fmt(r['tokens_per_s'], 6)} | {_fmt(r['mfu'])} | {_fmt(r['step_ms'])} | "
                         f"{_fmt(r['first_10_steps_s'])} | {_fmt(r['peak_memory_gib'])} |")
    short = {**{f"blocks.{k}": v for k, v in parts["blocks"].get("results", {}).items()},
             **{f"strategies.{k}": v for k, v in parts["strategies"].get("results", {}).items()},
             **parts["cpu_smoke"].get("results", {})}
    if short:
        lines += ["", "## Short runs", "", "| run | status | processes | final train loss | final val loss | "
                  "tokens/s | compiled frames | graph breaks | seconds | reason |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in short.items():
            comp = r.get("compile") or {}
            lines.append(f"| {name} | {r['status']} | {_fmt(r.get('nproc'))} | {_fmt(r.get('final_train_loss'))} | "
                         f"{_fmt(r.get('final_val_loss'))} | {_fmt(r.get('tokens_per_s'), 6)} | "
                         f"{_fmt(comp.get('frames'))} | {_fmt(comp.get('graph_breaks'))} | {_fmt(r.get('seconds'))} | "
                         f"{r.get('reason') or ''} |")
    warm = parts["warm"].get("results", {})
    if "runs" in warm:
        lines += ["", f"Warm start: {warm['runs']} runs of stage A, on {warm['warm_on']['seconds']} s, off "
                  f"{warm['warm_off']['seconds']} s, largest relative difference of final val_loss "
                  f"{_fmt(warm['max_rel_diff'])} (identical: {warm['identical']})."]
    study = parts["study"].get("results", {})
    if "runs" in study:
        lines += ["", f"Default study on CUDA: {study['runs']} runs in {study['seconds']} s, verdict "
                  f"{json.dumps(study['verdict'])[:300] if study.get('verdict') else '-'}, report {study['report']}."]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("part")
    p.add_argument("name", choices=PARTS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry", action="store_true")
    p.add_argument("--limit", type=float, default=120.0, help="this part's time limit (s), for its own sub-limits")
    s = sub.add_parser("summarize")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--dry", action="store_true")
    s.add_argument("--budget", type=float, default=0.0)
    s.add_argument("--elapsed", type=float, default=0.0)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.command == "part":
        signal.signal(signal.SIGTERM, _on_sigterm)
        return run_part(args)
    summary = summarize(args.out, args.dry, args.budget, args.elapsed)
    print((args.out / "gpu_check.md").read_text(), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
