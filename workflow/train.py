"""The command ``torchrun`` (or ``python``) launches: one seeded run of one variant in one stage.

Usage (what rules/train.smk runs)::

    torchrun --standalone --nproc_per_node N -m workflow.train \
        --run-config '<json>' --out-dir results/<study>/stage_A/<variant>/seed_1337

Outputs in ``--out-dir`` (rank 0 writes, all atomically):

- ``metrics.jsonl``: one row per log step: step, train_loss, val_loss (null between
  evaluations), val_loss_workers and consensus_distance (strategies whose workers differ),
  lr, tokens_seen, flops, train_time_ms, step_avg_ms, tokens_per_s, comm_calls, comm_bytes;
  with ``train.compile`` also compiled_frames (dynamo frames compiled so far, recompilations
  included: constant once the first train step and evaluation have compiled).
- ``result.json``: final_val_loss, final_train_loss, time_seconds, final_step, success,
  reason, seed, config_hash, communication (calls and bytes per worker and kind,
  bytes_per_token), git commit (+ ``git_diff.patch`` when the tree is dirty), torch version,
  device, world_size, num_parameters, compile (with ``train.compile``: frames, graphs and
  graph_breaks of torch.compile in this run; else null), ...
- ``model.pt``: the finished run's scored model (for samples), ``weights_only``-loadable.
- ``checkpoint/{a,b}/rank-<r>.pt`` while the run is unfinished: every rank's state, written
  every ``train.checkpoint_every`` steps and on SIGTERM/SIGUSR1 (workflow.training.checkpoint).

Exit codes: 0 finished (also when the run diverged: ``success: false`` with the reason, so
the DAG goes on), :data:`EXIT_PREEMPTED` (75) after a preemption signal (the checkpoint is
saved; re-running the same command resumes from it), 1 on errors.

The trainer itself is ``workflow.training`` (see its package docstring for the parts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from workflow.core.exits import EXIT_PREEMPTED  # noqa: F401 (re-exported)
from workflow.core.io import DiskFullError
from workflow.data.registry import tokens_dir
from workflow.parallel.process_groups import DistContext, init_distributed, shutdown
from workflow.study.schema import validate_section
from workflow.training.trainer import Trainer

__all__ = ["EXIT_PREEMPTED", "Trainer", "configure_backends", "main"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workflow.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-config", required=True, help="run config as JSON text, or @path/to/file.json")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--meta", type=Path, help="dataset meta.json (default: {data_dir}/tokens/{dataset}[-{options hash}]/meta.json)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    return parser.parse_args(argv)


def configure_backends(ctx: DistContext) -> None:
    """Numerics of this process.

    CPU: deterministic algorithms (same config + seed -> same losses), but without
    ``fill_uninitialized_memory`` (NaN-filling every ``torch.empty``: ~5 % of a small
    model's step on CPU and not needed for determinism). CUDA: TF32 matmuls and cuDNN
    convolutions (Ampere+; bf16 autocast covers the rest), no deterministic algorithms
    (they would force slow kernels or fail without CUBLAS_WORKSPACE_CONFIG).
    """
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parse_args(argv)
    text = Path(args.run_config[1:]).read_text() if args.run_config.startswith("@") else args.run_config
    try:
        run_cfg = json.loads(text)
    except json.JSONDecodeError as err:
        print(f"--run-config: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", file=sys.stderr)
        return 1
    meta = args.meta or Path(tokens_dir(run_cfg["dataset"], str(args.data_dir), run_cfg.get("dataset_options"))) / "meta.json"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(validate_section(run_cfg.get("train"), "train", "train")["device"])
    configure_backends(ctx)
    try:
        Trainer(run_cfg, args.out_dir, meta, ctx).run()
    except DiskFullError as err:  # the folder and its free space, not a trace through torch.save
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
