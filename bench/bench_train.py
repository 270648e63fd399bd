"""Trainer benchmarks (not tests). Ratios against a reference measured in the same run.

    .venv/bin/python bench/bench_train.py cpu  [--iters 2000] [--json out.json]
    .venv/bin/python bench/bench_train.py fast [--target 1.88] [--iters 2000]
    .venv/bin/python bench/bench_train.py muon [--iters 200]
    .venv/bin/python bench/bench_train.py speedrun [--iters 1000] [--target 2.0]
    python bench/bench_train.py gpu [--steps 40] [--compile both|on|off] [--data synthetic|<meta.json>]
    .venv/bin/python bench/bench_train.py MODE --quick     # seconds: 10 iterations (CI checks it finishes)

``cpu``: steps/s of workflow.train.Trainer at nanoGPT's CPU "baby" config (README: block 64,
batch 12, 4 layers, 4 heads, n_embd 128, dropout 0, 2000 iterations, lr 1e-3 -> 1e-4 cosine
with 100 warmup steps, beta2 0.99) on character-level tiny Shakespeare, against a minimal
plain-PyTorch loop of the same model (nanoGPT-style get_batch, AdamW, clip, cosine lr) timed
in the same process. The plain loop runs half its steps before and half after the trainer
(the machine's load hits both alike). Prints the ratio (target >= 1.0) and the trainer's
val_loss (nanoGPT reports 1.88 for this config). Timings exclude evaluations.

``fast``: training time (evaluations excluded) until val_loss <= ``--target`` for the baby
config and for the best default found (see FAST_CONFIG), both run here; target ratio <= 0.5.

``muon``: the cost of a Muon step at the baby config on one core: the trainer's step time
(step_avg_ms, evaluations excluded) with ``optimizer: muon`` against ``adamw`` (runs
interleaved in halves; target: ratio as low as the Newton-Schulz FLOPs allow), and the
optimizer step alone on the baby model's real gradients: ``workflow.optim.optimizers.Muon`` against a
per-matrix reference loop (Newton-Schulz one matrix at a time with plain matmuls, the
algorithm as first written) and against ``torch.optim.AdamW``, interleaved repeats (median).

``speedrun``: the ``modded-nanogpt-2024-10`` preset with the record's optimizer split (Muon at
0.1 x lr with the record's update scale and q/k/v split, AdamW at lr = 0.0036 on the tied
embedding, trapezoidal schedule with the seed's warmdown ratio 1450 / 5100) against the
``gpt2-124m`` preset with the speedrun study's former baseline recipe (AdamW 1.8e-3, betas 0.9 /
0.95, no decay, clip 1) at the same size (the baby config: block 64, 4 layers, 4 heads, n_embd
128, batch 12) on tiny Shakespeare. Step time (forward, backward, optimizer step; ms) and
tokens/s of the three setups interleaved in one process (``--repeats`` rounds of 10 steps each,
rotating order, median), so the machine's load hits all alike: the preset's recipe, GPT-2's, and
the preset's architecture with GPT-2's AdamW (the architecture's step cost without Muon's). Then
the training time (evaluations excluded) of a Trainer run of each recipe until val_loss <=
``--target``. Prints the ratios preset / GPT-2.

``gpu``: GPT-2 124M tokens/s and MFU of the trainer on one CUDA GPU, bf16 autocast, eager and
then torch.compile'd (``--compile both``), on synthetic tokens (default) or a tokenized
dataset's meta.json; the first 10 steps (compilation, warm-up) are left out. Prints one JSON
line (``runs.eager`` / ``runs.compiled``, ``tokens_per_s_*``, ``mfu_*``, ``compile_speedup``).
bench/gpu_check.sh runs it as one of its parts.

All modes print one JSON line (and write it to ``--json``). Needs the shared data for
``cpu``/``fast`` (``$STAGERUN_SHARED_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.model import GPT  # noqa: E402
from workflow.optim.registry import build_optimizers  # noqa: E402
from workflow.optim.schedules import TRAIN_DEFAULTS  # noqa: E402
from workflow.parallel.process_groups import DistContext, init_distributed  # noqa: E402
from workflow.model.spec import build_model_config
from workflow.train import configure_backends
from workflow.training.trainer import Trainer  # noqa: E402
from workflow.model.flops import peak_flops  # noqa: E402

SHARED = Path(os.environ.get("STAGERUN_SHARED_DATA") or REPO.parent / "shared" / "data")

BABY_MODEL = {"preset": "nanogpt-small", "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0}
BABY_TRAIN = {"batch_size": 12, "lr": 1e-3, "min_lr_ratio": 0.1, "schedule": "cosine", "warmup_iters": 100,
              "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0, "device": "cpu",
              "val_tokens": 65536, "log_every": 100}
# Best default found for `fast` (bench notes in the report): Muon on hidden matrices, a
# trapezoidal schedule (constant, then linear warmdown) and higher AdamW lr on the embeddings.
FAST_MODEL = dict(BABY_MODEL)
FAST_TRAIN = {**BABY_TRAIN, "optimizer": "muon", "muon_lr": 0.03, "lr": 3e-3, "embed_lr": 3e-3,
              "schedule": "trapezoidal", "warmup_iters": 20, "warmdown_iters": 400, "weight_decay": 0.0}


def shakespeare_meta(tmp: Path) -> Path:
    """Tokenize tiny Shakespeare (characters) from the shared data into ``tmp``; meta.json."""
    out = tmp / "shakespeare_char"
    subprocess.run([sys.executable, "-m", "workflow.tokenize", "--dataset", "shakespeare_char",
                    "--raw-dir", str(SHARED / "tinyshakespeare"), "--out-dir", str(out)],
                   check=True, capture_output=True, cwd=REPO)
    return out / "meta.json"


def run_trainer(model: dict, train: dict, meta: Path, out_dir: Path, ctx: DistContext | None = None) -> tuple[dict, list[dict]]:
    cfg = {"study": "bench", "stage": "A", "variant": "bench", "seed": 1337, "run_id": 0,
           "dataset": "bench", "model": model, "train": train}
    result = Trainer(cfg, out_dir, meta, ctx or DistContext()).run()
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return result, rows


def plain_loop(meta: Path, iters: int, start: int, total: int, state: dict | None) -> tuple[float, float, dict]:
    """Minimal nanoGPT-style loop of the baby model; returns (wall s, CPU s, state) for
    ``iters`` steps starting at ``start`` of a ``total``-step cosine schedule."""
    if state is None:
        data = np.memmap(meta.parent / "train.bin", dtype=np.uint8, mode="r")
        torch.manual_seed(1337)
        model = GPT(build_model_config(BABY_MODEL, 65))
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.99))
        state = {"data": data, "model": model, "opt": opt, "gen": torch.Generator().manual_seed(1337)}
    data, model, opt, gen = state["data"], state["model"], state["opt"], state["gen"]
    block, batch = 64, 12

    def get_lr(it: int) -> float:  # nanoGPT train.py
        if it < 100:
            return 1e-3 * (it + 1) / 101
        ratio = (it - 100) / (total - 100)
        return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (1e-3 - 1e-4)

    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for it in range(start, start + iters):
        for group in opt.param_groups:
            group["lr"] = get_lr(it)
        ix = torch.randint(len(data) - block, (batch,), generator=gen)
        x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return time.perf_counter() - wall, time.process_time() - cpu, state


def bench_cpu(args) -> dict:
    torch.set_num_threads(args.threads)
    configure_backends(DistContext())
    with tempfile.TemporaryDirectory() as tmp:
        meta = args.meta or shakespeare_meta(Path(tmp))
        half = args.iters // 2
        w1, c1, state = plain_loop(meta, half, 0, args.iters, None)
        cpu0 = time.process_time()
        result, rows = run_trainer(BABY_MODEL, {**BABY_TRAIN, "num_iterations": args.iters, "val_loss_every": 0},
                                   meta, Path(tmp) / "run")
        trainer_cpu = time.process_time() - cpu0
        w2, c2, _ = plain_loop(meta, args.iters - half, half, args.iters, state)
    trainer_s = result["train_time_ms"] / 1000.0
    plain_s = w1 + w2
    return {
        "bench": "cpu", "iters": args.iters, "threads": args.threads,
        "trainer_steps_per_s": round(args.iters / trainer_s, 2),
        "plain_steps_per_s": round(args.iters / plain_s, 2),
        "ratio": round(plain_s / trainer_s, 3),
        "trainer_val_loss": round(result["final_val_loss"], 4),
        "nanogpt_reference_val_loss": 1.88,
        "trainer_cpu_s_incl_eval": round(trainer_cpu, 2), "plain_cpu_s": round(c1 + c2, 2),
        "load_avg": os.getloadavg()[0], "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def time_to_target(rows: list[dict], target: float) -> tuple[float | None, int | None]:
    for row in rows:
        if row["val_loss"] is not None and row["val_loss"] <= target:
            return row["train_time_ms"] / 1000.0, row["step"]
    return None, None


def bench_fast(args) -> dict:
    torch.set_num_threads(args.threads)
    configure_backends(DistContext())
    out = {"bench": "fast", "target": args.target, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        meta = args.meta or shakespeare_meta(Path(tmp))
        for name, model, train, iters in (("baby", BABY_MODEL, BABY_TRAIN, args.iters),
                                          ("fast", FAST_MODEL, FAST_TRAIN, args.fast_iters)):
            result, rows = run_trainer(model, {**train, "num_iterations": iters, "val_loss_every": args.eval_every},
                                       meta, Path(tmp) / name)
            seconds, step = time_to_target(rows, args.target)
            out[name] = {"seconds_to_target": seconds and round(seconds, 2), "step": step,
                         "final_val_loss": round(result["final_val_loss"], 4),
                         "train_seconds": round(result["train_time_ms"] / 1000.0, 2),
                         "step_avg_ms": rows[-1]["step_avg_ms"]}
    fast_s, baby_s = out["fast"]["seconds_to_target"], out["baby"]["seconds_to_target"]
    if fast_s and baby_s:
        out["ratio"] = round(fast_s / baby_s, 3)
    elif fast_s:  # the baby config never got there: its whole run is a lower bound of its time
        out["ratio_upper_bound"] = round(fast_s / out["baby"]["train_seconds"], 3)
    out["load_avg"] = os.getloadavg()[0]
    return out


SPEEDRUN_SIZE = {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128}
SPEEDRUN_COMMON = {"batch_size": 12, "schedule": "trapezoidal", "warmup_iters": 0, "beta1": 0.9, "beta2": 0.95,
                   "weight_decay": 0.0, "device": "cpu", "val_tokens": 65536, "log_every": 100}
#: The record's recipe (modded-nanogpt 2024-10-14) and the GPT-2 AdamW baseline the speedrun study had.
SPEEDRUN_RUNS = {
    "modded": ({"preset": "modded-nanogpt-2024-10", **SPEEDRUN_SIZE},
               {"optimizer": "muon", "lr": 0.0036, "muon_lr": 0.00036, "muon_momentum": 0.95,
                "muon_update_scale": "max_dim", "muon_split_qkv": True, "grad_clip": 0.0}),
    "gpt2": ({"preset": "gpt2-124m", **SPEEDRUN_SIZE}, {"optimizer": "adamw", "lr": 1.8e-3, "grad_clip": 1.0}),
    "modded_arch_adamw": ({"preset": "modded-nanogpt-2024-10", **SPEEDRUN_SIZE},
                          {"optimizer": "adamw", "lr": 1.8e-3, "grad_clip": 1.0}),
}


def interleaved_step_ms(meta: Path, repeats: int, steps: int = 10) -> dict[str, float]:
    """Median ms per training step of each SPEEDRUN_RUNS setup, timed in rotating order."""
    vocab = json.loads(meta.read_text())["vocab_size"]
    info = json.loads(meta.read_text())
    data = torch.from_numpy(np.fromfile(meta.parent / "train.bin", dtype=info.get("dtype", "uint16")).astype(np.int64))
    B, T = SPEEDRUN_COMMON["batch_size"], SPEEDRUN_SIZE["block_size"]
    setups = {}
    for name, (model_cfg, train) in SPEEDRUN_RUNS.items():
        torch.manual_seed(0)
        model = GPT(build_model_config(model_cfg, vocab))
        setups[name] = (model, build_optimizers(model, {**TRAIN_DEFAULTS, **SPEEDRUN_COMMON, **train}))
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in setups}
    names = list(setups)
    for r in range(repeats + 1):  # round 0 warms up
        for name in names[r % len(names):] + names[: r % len(names)]:
            model, optimizers = setups[name]
            start = time.perf_counter()
            for _ in range(steps):
                i = torch.randint(0, len(data) - T - 1, (B,), generator=g)
                x = torch.stack([data[j: j + T] for j in i])
                y = torch.stack([data[j + 1: j + T + 1] for j in i])
                _, loss = model(x, y)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            if r:
                times[name].append((time.perf_counter() - start) * 1e3 / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_speedrun(args) -> dict:
    torch.set_num_threads(args.threads)
    configure_backends(DistContext())
    out = {"bench": "speedrun", "target": args.target, "iters": args.iters, "threads": args.threads}
    tokens = SPEEDRUN_COMMON["batch_size"] * SPEEDRUN_SIZE["block_size"]
    with tempfile.TemporaryDirectory() as tmp:
        meta = args.meta or shakespeare_meta(Path(tmp))
        for name, ms in interleaved_step_ms(meta, args.repeats).items():
            out[name] = {"step_ms": round(ms, 2), "tokens_per_s": round(tokens / ms * 1e3)}
        for name in ("modded", "gpt2"):
            model, train = SPEEDRUN_RUNS[name]
            train = {**SPEEDRUN_COMMON, **train, "num_iterations": args.iters, "val_loss_every": args.eval_every,
                     "warmdown_iters": round(args.iters * 1450 / 5100)}
            result, rows = run_trainer(model, train, meta, Path(tmp) / name)
            seconds, step = time_to_target(rows, args.target)
            out[name].update({"seconds_to_target": seconds and round(seconds, 2), "step_to_target": step,
                              "final_val_loss": round(result["final_val_loss"], 4),
                              "trainer_step_avg_ms": rows[-1]["step_avg_ms"],
                              "train_seconds": round(result["train_time_ms"] / 1000.0, 2)})
    out["step_time_ratio"] = round(out["modded"]["step_ms"] / out["gpt2"]["step_ms"], 3)
    out["arch_step_time_ratio"] = round(out["modded_arch_adamw"]["step_ms"] / out["gpt2"]["step_ms"], 3)
    if out["modded"]["seconds_to_target"] and out["gpt2"]["seconds_to_target"]:
        out["time_to_target_ratio"] = round(out["modded"]["seconds_to_target"] / out["gpt2"]["seconds_to_target"], 3)
    elif out["modded"]["seconds_to_target"]:  # GPT-2 never got there: its whole run bounds its time
        bound = out["modded"]["seconds_to_target"] / out["gpt2"]["train_seconds"]
        out["time_to_target_ratio_upper_bound"] = round(bound, 3)
    out["load_avg"] = os.getloadavg()[0]
    return out


def newton_schulz_plain(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Keller Jordan's quintic Newton-Schulz as first written: one matrix, plain matmuls."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.mT if G.size(0) > G.size(1) else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if G.size(0) > G.size(1) else X


@torch.no_grad()
def muon_reference_step(params: list, bufs: list, lr: float, momentum: float, ns_steps: int) -> None:
    """Muon's update one matrix at a time with the plain iteration (Nesterov, no weight decay)."""
    for p, buf in zip(params, bufs):
        buf.lerp_(p.grad, 1 - momentum)
        update = p.grad.lerp(buf, momentum).reshape(p.size(0), -1)
        ortho = newton_schulz_plain(update, ns_steps)
        p.add_(ortho.view_as(p), alpha=-lr * max(1.0, update.size(0) / update.size(1)) ** 0.5)


def bench_muon(args) -> dict:
    from workflow.optim.optimizers import Muon, split_muon_params

    torch.set_num_threads(args.threads)
    configure_backends(DistContext())
    iters = args.iters if args.iters != 2000 else 200  # this mode's default
    half = iters // 2
    step_ms = {"adamw": [], "muon": []}
    cpu_ms = {"adamw": [], "muon": []}  # process CPU time per step (run set-up and final eval included)
    with tempfile.TemporaryDirectory() as tmp:
        meta = args.meta or shakespeare_meta(Path(tmp))
        for repeat in range(2):  # adamw, muon, adamw, muon: the machine's load hits both alike
            for name in ("adamw", "muon"):
                train = {**BABY_TRAIN, "optimizer": name, "num_iterations": half, "val_loss_every": 0}
                cpu0 = time.process_time()
                result, rows = run_trainer(BABY_MODEL, train, meta, Path(tmp) / f"{name}{repeat}")
                cpu_ms[name].append((time.process_time() - cpu0) * 1000.0 / half)
                step_ms[name].append(result["train_time_ms"] / half)
        # The optimizer step alone, on real gradients of the baby model.
        torch.manual_seed(0)
        model = GPT(build_model_config(BABY_MODEL, 65))
        data = np.memmap(meta.parent / "train.bin", dtype=np.uint8, mode="r")
        x = torch.from_numpy(data[: 12 * 65].astype(np.int64)).view(12, 65)
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
    hidden = split_muon_params(model)["muon"]
    muon = Muon(hidden, lr=0.02, momentum=0.95)
    adamw = torch.optim.AdamW(hidden, lr=1e-3)
    bufs = [torch.zeros_like(p) for p in hidden]
    times = {"muon": [], "reference": [], "adamw": []}
    steps = {"muon": muon.step, "adamw": adamw.step,
             "reference": lambda: muon_reference_step(hidden, bufs, 0.02, 0.95, 5)}
    for _ in range(args.opt_repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    shapes = sorted({tuple(p.shape) for p in hidden})
    return {
        "bench": "muon", "iters_per_optimizer": 2 * half, "threads": args.threads,
        "trainer_step_ms_adamw": round(sum(step_ms["adamw"]) / 2, 3),
        "trainer_step_ms_muon": round(sum(step_ms["muon"]) / 2, 3),
        "muon_adamw_step_ratio": round(sum(step_ms["muon"]) / sum(step_ms["adamw"]), 3),
        "muon_adamw_cpu_ratio": round(sum(cpu_ms["muon"]) / sum(cpu_ms["adamw"]), 3),
        "hidden_matrices": len(hidden), "hidden_shapes": [list(s) for s in shapes],
        "optimizer_step_ms": {k: round(v, 3) for k, v in med.items()},
        "muon_vs_per_matrix_reference": round(med["muon"] / med["reference"], 3),
        "load_avg": os.getloadavg()[0], "torch": torch.__version__,
    }


def synthetic_meta(folder: Path, tokens: int, vocab: int = 50257) -> Path:
    """Random uint16 tokens in the meta.json layout (docs/architecture.md)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", tokens), ("val", max(tokens // 20, 1 << 20))):
        rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(folder / f"{split}.bin")
        splits[split] = {"tokens": n, "files": [{"path": f"{split}.bin", "header_bytes": 0, "tokens": n}]}
    meta = {"dataset": "synthetic", "tokenizer": {"kind": "gpt2", "vocab": None, "bos_id": None},
            "vocab_size": vocab, "dtype": "uint16", "splits": splits}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


def _gpu_run(args, compiled: bool, meta: Path, out_dir: Path, ctx: DistContext) -> dict:
    """One GPT-2 124M run of ``args.steps`` steps (bf16 autocast); numbers over the steps after
    the first 10 (compilation, cuDNN / cuBLAS autotuning and allocator warm-up are left out)."""
    cuda = ctx.device.type == "cuda"
    train = {"batch_size": args.batch_size, "device_batch_size": args.device_batch_size,
             "num_iterations": args.steps, "device": ctx.device.type, "dtype": "bfloat16", "compile": compiled,
             "optimizer": args.optimizer, "lr": 6e-4, "schedule": "constant", "val_loss_every": 0,
             "val_tokens": args.val_tokens, "log_every": 10}
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    result, rows = run_trainer({"preset": args.preset}, train, meta, out_dir, ctx)
    steady = [r for r in rows if r["step"] >= 10]
    first, last = steady[0], steady[-1]
    tokens = last["tokens_seen"] - first["tokens_seen"]
    ms = last["train_time_ms"] - first["train_time_ms"]
    mfus = [r["mfu"] for r in steady[1:] if r["mfu"] is not None]
    return {
        "compile": compiled,
        "step_ms": round(ms / (last["step"] - first["step"]), 2),
        "tokens_per_s": round(tokens / (ms / 1000.0), 1),
        "mfu": round(float(np.mean(mfus)), 4) if mfus else None,
        "first_10_steps_s": round(first["train_time_ms"] / 1000.0, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2) if cuda else None,
        "tokens_per_step": tokens // (last["step"] - first["step"]),
        "final_train_loss": result["final_train_loss"],
        "compile_stats": result.get("compile"),
    }


def bench_gpu(args) -> dict:
    """GPT-2 124M on one CUDA GPU, bf16 autocast, eager and then compiled (``--compile both``,
    the default) in this process, on the same data and seed. Per mode: step_ms and tokens_per_s
    over steps 10..steps (tokens = batch_size x 1024 per step), MFU = achieved model FLOP/s
    (6 N + 12 L T C per token, nanoGPT's estimate; workflow.model.flops) over the GPU's
    dense bf16 peak, first_10_steps_s (includes compilation), peak_memory_gib. Skipped (with the
    reason) without CUDA. ``--device cpu`` (with a small ``--preset``) runs the same code on the
    CPU: a check of this benchmark itself (tests/integration/test_bench_gpu_check.py), not a measurement."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return {"bench": "gpu", "skipped": "torch.cuda.is_available() is False"}
    ctx = init_distributed(args.device)
    configure_backends(ctx)
    modes = {"both": (False, True), "on": (True,), "off": (False,)}["off" if args.no_compile else args.compile]
    device_name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else platform.machine()
    out = {"bench": "gpu", "device": device_name, "preset": args.preset, "steps": args.steps, "dtype": "bfloat16",
           "optimizer": args.optimizer, "batch_size": args.batch_size,
           "device_batch_size": args.device_batch_size, "torch": torch.__version__, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(args.data) if args.data != "synthetic" else synthetic_meta(Path(tmp), 1 << 25)
        for compiled in modes:
            name = "compiled" if compiled else "eager"
            out["runs"][name] = _gpu_run(args, compiled, meta, Path(tmp) / name, ctx)
            out[f"tokens_per_s_{name}"] = out["runs"][name]["tokens_per_s"]
            out[f"mfu_{name}"] = out["runs"][name]["mfu"]
    out["peak_flops"] = peak_flops(out["device"])
    if len(out["runs"]) == 2:
        out["compile_speedup"] = round(out["tokens_per_s_compiled"] / out["tokens_per_s_eager"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["cpu", "fast", "muon", "gpu", "speedrun"])
    parser.add_argument("--repeats", type=int, default=7, help="speedrun: interleaved rounds of the step timing")
    parser.add_argument("--opt-repeats", type=int, default=50, help="muon: repeats of the optimizer-only timing")
    parser.add_argument("--iters", type=int, default=2000, help="cpu/fast: iterations of the baby config (muon: 200)")
    parser.add_argument("--fast-iters", type=int, default=1000, help="fast: iterations of the fast config")
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--meta", type=Path, help="cpu/fast: meta.json of shakespeare_char (default: tokenize the shared data)")
    parser.add_argument("--steps", type=int, default=40, help="gpu: training steps (the first 10 are warmup)")
    parser.add_argument("--data", default="synthetic", help="gpu: 'synthetic' or a meta.json (e.g. shakespeare_gpt2)")
    parser.add_argument("--batch-size", type=int, default=64, help="gpu: global sequences per step")
    parser.add_argument("--device-batch-size", type=int, default=16, help="gpu: sequences per micro-step")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    parser.add_argument("--preset", default="gpt2-124m", help="gpu: model preset")
    parser.add_argument("--val-tokens", type=int, default=65536, help="gpu: tokens of the final evaluation")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="gpu: cpu runs the same code on the CPU (checks the benchmark, measures nothing)")
    parser.add_argument("--compile", default="both", choices=["both", "on", "off"],
                        help="gpu: eager then compiled (both), or one of them")
    parser.add_argument("--no-compile", action="store_true", help="gpu: same as --compile off")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true",
                        help="seconds: 10 iterations, target val_loss 4.0 (gpu: 12 steps, eager; on the CPU without CUDA, a tiny model); "
                             "checks that the benchmark runs, the numbers mean little")
    args = parser.parse_args(argv)
    if args.quick:
        args.iters, args.fast_iters, args.eval_every, args.opt_repeats, args.target = 10, 10, 5, 3, 4.0
        args.steps, args.compile = 12, "off"
        if args.mode == "gpu" and args.device == "cuda" and not torch.cuda.is_available():
            args.device, args.preset, args.batch_size, args.device_batch_size, args.val_tokens = "cpu", "nanogpt-small", 8, 4, 256
    out = {"cpu": bench_cpu, "fast": bench_fast, "muon": bench_muon, "gpu": bench_gpu,
           "speedrun": bench_speedrun}[args.mode](args)
    line = json.dumps(out)
    print(line, flush=True)
    if args.json:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
