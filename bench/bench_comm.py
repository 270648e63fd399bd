"""Real tensor parallelism benchmark (not a test): tokens/s and the share of step time spent in
collectives for the comm study's block patterns, as ratios against 24comm (12 x tp) measured in
the same run.

    python bench/bench_comm.py [--steps 10] [--rounds 2] [--json out.json]          # CPU: 2 gloo processes
    python bench/bench_comm.py --quick                                              # seconds: 2 patterns, tiny model (CI)
    torchrun --standalone --nproc_per_node 2 bench/bench_comm.py --device cuda      # a node with >= 2 GPUs (NCCL)

CPU (default): spawns tp_size = 2 processes (gloo, 1 thread each) on a (dp=1, tp=2) DeviceMesh.
Every pattern runs the same model size (12 layers, n_embd 128, 4 heads, block 128, batch 8 ->
1024 tokens per step; ``--n-embd`` etc. change it) with AdamW: forward, backward,
``tp_reduce_grads``, optimizer step. Per pattern and round: ``--warmup`` steps, then ``--steps``
timed steps (tokens/s = tokens per step / median step time), then 3 steps under
``torch.profiler`` whose collective time (self CPU time of ``c10d::allreduce_`` and
``_c10d_functional::wait_tensor``: issuing and waiting for all-reduces) over the profiled wall
time is the comm share. Patterns run interleaved for ``--rounds`` rounds (machine load hits all
alike); medians over rounds are reported. Every pattern's measured syncs per forward (model
counters) are printed beside its nominal count.

On GPUs, collectives are asynchronous: the profiler's CPU-side wait is only a proxy there;
tokens/s is the number to read. NCCL cannot place two ranks on one GPU, so real tensor
parallelism on GPUs needs a node with at least 2 GPUs.

Prints one JSON line (and writes it to ``--json``) plus a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from workflow.model import GPT, tp_comm_counts, tp_reduce_grads  # noqa: E402
from workflow.model.parallelize import parallelize_gpt  # noqa: E402
from workflow.parallel.tp_spec import analytic_tp_syncs  # noqa: E402
from workflow.model.spec import build_model_config  # noqa: E402

#: The study's block patterns, read from the study itself (one source): variant -> (block_pattern,
#: parallel_merge); every pattern with parallel blocks also as ``<name>-ref`` under the seed code's
#: merge (model.parallel_merge: reference, docs/tensor_parallel.md).
_STUDY = yaml.safe_load((REPO / "config" / "studies" / "comm_study.yaml").read_text())["variants"]
PATTERNS = {name: (v["model"]["block_pattern"], v["model"].get("parallel_merge", "sum")) for name, v in _STUDY.items()}
PATTERNS.update({f"{name}-ref": (pattern, "reference") for name, (pattern, merge) in list(PATTERNS.items())
                 if "parallel" in pattern and merge == "sum"})
COLLECTIVE_EVENTS = ("c10d::allreduce_", "_c10d_functional::wait_tensor")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_pattern(name: str, args, mesh, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    cfg = build_model_config({"preset": "nanogpt-small", "n_layer": 12, "n_embd": args.n_embd, "n_head": args.n_head,
                              "block_size": args.block_size, "block_pattern": PATTERNS[name][0], "tp_size": 2,
                              "tp_mode": "real", "parallel_merge": PATTERNS[name][1]}, 65)
    torch.manual_seed(0)
    model = parallelize_gpt(GPT(cfg).to(device), mesh["tp"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 65, (args.batch_size, args.block_size + 1), generator=gen).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> None:
        _, loss = model(inputs, targets)
        loss.backward()
        tp_reduce_grads(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    tp_comm_counts(model)  # reset
    times = []
    for _ in range(args.steps):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    counts = tp_comm_counts(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    dist.barrier()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        _sync(device)
        profiled = time.perf_counter() - t0
    comm_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in COLLECTIVE_EVENTS)
    tokens = args.batch_size * args.block_size
    return {
        "tokens_per_s": tokens / statistics.median(times),
        "comm_share": comm_us / 1e6 / profiled,
        "syncs_forward": counts["forward"]["calls"] / counts["passes"],
        "syncs_backward": counts["backward"]["calls"] / counts["passes"],
        "syncs_nominal": cfg.tp_syncs()["nominal"],
        "syncs_reference_code": analytic_tp_syncs(cfg.layer_block_types, 2, "reference")["forward"],
        "syncs_analytic": cfg.tp_syncs()["forward"],
    }


def worker(rank: int, world: int, args, port: int | None) -> None:
    if port is not None:  # spawned here (CPU); under torchrun the env is set already
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.get_world_size() // 2, 2), mesh_dim_names=("dp", "tp"))
    names = args.patterns or list(PATTERNS)
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            rounds[name].append(bench_pattern(name, args, mesh, device))
    if dist.get_rank() == 0:
        report(rounds, args, device)
    dist.destroy_process_group()


def report(rounds: dict[str, list[dict]], args, device: torch.device) -> None:
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rounds.items()}
    ref = med["24comm"]
    out = {
        "bench": "comm", "device": str(device), "tp_size": 2, "rounds": args.rounds, "steps": args.steps,
        "model": {"n_layer": 12, "n_embd": args.n_embd, "n_head": args.n_head, "block_size": args.block_size,
                  "batch_size": args.batch_size},
        "torch": torch.__version__,
        "patterns": {
            name: {**{k: round(v, 4) for k, v in m.items()},
                   "tokens_per_s_vs_24comm": round(m["tokens_per_s"] / ref["tokens_per_s"], 3),
                   "comm_share_vs_24comm": round(m["comm_share"] / ref["comm_share"], 3) if ref["comm_share"] else None}
            for name, m in med.items()
        },
    }
    print(f"{'pattern':18} {'nominal':>7} {'ref code':>8} {'measured f/b':>12} {'tokens/s':>9} {'vs 24comm':>9} "
          f"{'comm share':>10} {'vs 24comm':>9}")
    for name, m in out["patterns"].items():
        print(f"{name:18} {m['syncs_nominal']:7.0f} {m['syncs_reference_code']:8.0f} "
              f"{m['syncs_forward']:5.0f}/{m['syncs_backward']:<6.0f} "
              f"{m['tokens_per_s']:9.0f} {m['tokens_per_s_vs_24comm']:9.3f} {m['comm_share']:10.3f} "
              f"{m['comm_share_vs_24comm'] if m['comm_share_vs_24comm'] is not None else float('nan'):9.3f}")
    line = json.dumps(out, sort_keys=True)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/bench_comm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per pattern and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", help="also write the JSON line here")
    parser.add_argument("--patterns", nargs="+", choices=sorted(PATTERNS), help="only these (24comm is always run)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: 24comm and 6comm-final, a 32-wide model, 1 step, 1 round "
                             "(checks that the benchmark runs; the numbers mean little)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 1, 1, 1
        args.n_embd, args.n_head, args.block_size, args.batch_size = 32, 2, 16, 2
        args.patterns = ["6comm-final"]
    if args.patterns:
        args.patterns = ["24comm", *[p for p in args.patterns if p != "24comm"]]
    if "RANK" in os.environ:  # launched by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, None)
        return 0
    if args.device == "cuda":
        parser.error("on GPUs launch with torchrun --nproc_per_node 2 (or more, a multiple of 2)")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, args, port), nprocs=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
