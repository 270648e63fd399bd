"""The trainer ``torchrun`` launches: one seeded run of one variant in one stage.

Usage (what rules/train.smk runs)::

    torchrun --standalone --nproc_per_node N -m workflow.train \
        --run-config '<json>' --out-dir results/<study>/stage_A/<variant>/seed_1337

Outputs in ``--out-dir`` (rank 0 writes, all atomically):

- ``metrics.jsonl``: one row per log step: step, train_loss, val_loss (null between
  evaluations), lr, tokens_seen, train_time_ms, step_avg_ms, tokens_per_s. Rows are
  streamed to ``metrics.partial.jsonl`` and renamed when the run ends.
- ``result.json``: final_val_loss, final_train_loss, time_seconds, final_step, success,
  reason, seed, config_hash, git commit (+ ``git_diff.patch`` when the tree is dirty),
  torch version, device, world_size, num_parameters, ...
- ``checkpoint.pt``: model, optimizers, step, RNG states; written every
  ``train.checkpoint_every`` steps, at the end, and on SIGTERM/SIGUSR1 (preemption).

Exit codes: 0 finished (also when the run diverged: ``success: false`` with the reason,
so the DAG goes on), :data:`EXIT_PREEMPTED` after a preemption signal (the checkpoint
is saved; re-running the same command resumes from it), 1 on errors.

The loop follows nanoGPT's ``train.py`` (gradient accumulation, clipping, cosine
schedule, periodic evaluation on a fixed validation set).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workflow.config import config_hash, validate_section
from workflow.data import TokenSplit, rank_slice, train_window_ids, val_window_ids
from workflow.distributed import STRATEGIES, DistContext, all_reduce_sum, init_distributed, shutdown
from workflow.io import atomic_write, write_json_atomic, write_text_atomic
from workflow.model import GPT, GPTConfig, build_model_config, depth_warm_state
from workflow.optim import build_optimizers, curriculum_block_size, set_lr
from workflow.tracking import Tracker

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later
REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_VERSION = 2

# Peak dense bf16 tensor-core FLOP/s per GPU by device-name substring (first match wins, so
# more specific names come first). Vendor datasheets: NVIDIA H100 / H200 / A100 / L40S / L4 / A10.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5 (HBM3)
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of one GPU named ``device_name`` (torch.cuda.get_device_name),
    or None for CPUs and GPUs not in :data:`PEAK_BF16_FLOPS`."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def flops_per_token(cfg: GPTConfig, seq_len: int, n_params_matmul: int) -> float:
    """Training FLOPs per token (forward + backward) of a GPT: ``6 N + 12 L H Q T``.

    N = parameters that take part in matmuls (blocks + lm_head; embeddings are lookups),
    L = n_layer, H = n_head, Q = head dim, T = ``seq_len`` (tokens). The second term is the
    attention score / value matmuls (full, not causal-halved, as in the source).
    Source: PaLM (Chowdhery et al. 2022) appendix B; nanoGPT model.py ``estimate_mfu``.
    """
    return 6.0 * n_params_matmul + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


def _step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed derived from (seed, step, stream): pure, identical on every rank."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def git_state(repo: Path = REPO_ROOT) -> dict:
    """Commit of ``repo`` and, when the tree is dirty, the diff against HEAD.

    Returns ``{"commit": str | None, "dirty": bool | None, "diff": str}`` (None when
    ``repo`` is not a git checkout or git is missing).
    """
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return {"commit": commit, "dirty": dirty, "diff": git("diff", "HEAD") if dirty else ""}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff": ""}


class _PreemptionFlag:
    """Set by SIGTERM / SIGUSR1; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        self.signal = signum


class Trainer:
    """One training run. Build it, then call :meth:`run`.

    Args:
        run_cfg: resolved run config (see workflow.config.run_config); ``model`` and
            ``train`` are validated against the schema here, so the trainer also works
            standalone.
        out_dir: folder of the run's outputs.
        meta_path: the dataset's meta.json.
        ctx: the process's :class:`DistContext`.
    Raises:
        workflow.config.ConfigError: invalid ``train`` keys (named).
        ValueError: ``batch_size`` not divisible by ``world_size * device_batch_size``.
    """

    def __init__(self, run_cfg: dict, out_dir: Path, meta_path: Path, ctx: DistContext):
        self.cfg = run_cfg
        self.train_cfg = tc = validate_section(run_cfg.get("train"), "train", "train")
        self.out_dir = Path(out_dir)
        self.ctx = ctx
        self.seed = int(run_cfg["seed"])
        self.config_hash = config_hash(run_cfg)

        self.train_split = TokenSplit(meta_path, "train")
        self.val_split = TokenSplit(meta_path, "val")
        self.model_config = build_model_config(dict(run_cfg.get("model", {})), self.train_split.vocab_size)
        self.block_size = self.model_config.block_size

        per_step = tc["batch_size"]
        device_batch = tc["device_batch_size"] or per_step // ctx.world_size
        if device_batch < 1 or per_step % (ctx.world_size * device_batch):
            raise ValueError(
                f"train.batch_size={per_step} must be a multiple of world_size ({ctx.world_size}) x "
                f"train.device_batch_size ({device_batch})"
            )
        self.device_batch_size = device_batch
        self.grad_accum_steps = per_step // (ctx.world_size * device_batch)

        torch.manual_seed(self.seed)
        self.model = GPT(self.model_config).to(ctx.device)
        self.strategy = STRATEGIES[tc["strategy"]](ctx)
        self.module = self.strategy.wrap(self.model)
        self.optimizers = build_optimizers(self.model, tc)
        self.autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if tc["dtype"] == "bfloat16" and ctx.device.type == "cuda"
            else torch.autocast(device_type="cpu", enabled=False)
        )

        self.step = 0
        self.train_time_ms = 0.0
        self.tokens_seen = 0
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.partial_metrics = self.out_dir / "metrics.partial.jsonl"

    # ----- checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config_hash": self.config_hash,
            "seed": self.seed,
            "step": self.step,
            "train_time_ms": self.train_time_ms,
            "tokens_seen": self.tokens_seen,
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "strategy": self.strategy.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes ``checkpoint.pt`` atomically (temp file + rename)."""
        if self.ctx.is_main:
            with atomic_write(self.checkpoint_path, "wb") as handle:
                torch.save(self.state_dict(), handle)
        if self.ctx.distributed:
            torch.distributed.barrier()

    def try_resume(self) -> bool:
        """Load ``checkpoint.pt`` if it belongs to this exact config and seed; True if resumed."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.ctx.device, weights_only=False)
        if state.get("config_hash") != self.config_hash or state.get("seed") != self.seed:
            self.log(f"ignoring {self.checkpoint_path}: it belongs to another config or seed")
            return False
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step, self.train_time_ms, self.tokens_seen = state["step"], state["train_time_ms"], state["tokens_seen"]
        self._truncate_partial_metrics(self.step)
        self.log(f"resumed from {self.checkpoint_path} at step {self.step}")
        return True

    def _truncate_partial_metrics(self, step: int) -> None:
        if not self.ctx.is_main or not self.partial_metrics.exists():
            return
        rows = [line for line in self.partial_metrics.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        write_text_atomic(self.partial_metrics, "".join(line + "\n" for line in kept))

    # ----- logging -----------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def write_metrics_row(self, row: dict) -> None:
        if self.ctx.is_main:
            with open(self.partial_metrics, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    # ----- steps -------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step over the global batch; returns the global mean train loss."""
        tc = self.train_cfg
        lr_mult = set_lr(self.optimizers, self.step, tc)
        window_ids = train_window_ids(
            self.seed, self.step, tc["batch_size"], self.train_split.num_windows(self.block_size)
        )
        local_ids = rank_slice(window_ids, self.ctx.rank, self.ctx.world_size)
        self.module.train()
        loss_sum = torch.zeros((), device=self.ctx.device)
        for micro in range(self.grad_accum_steps):
            ids = local_ids[micro * self.device_batch_size : (micro + 1) * self.device_batch_size]
            x, y = self.train_split.read(ids, self.block_size)
            x, y = x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
            with self.strategy.micro_step_context(self.module, last=micro == self.grad_accum_steps - 1):
                with self.autocast:
                    _, loss = self.module(x, y)
                (loss / self.grad_accum_steps).backward()
            loss_sum += loss.detach()
        if tc["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.strategy.after_optimizer_step(self.model, self.step)
        self.lr_mult = lr_mult
        # Mean over micro-steps and ranks, plus the preemption flag, in one collective.
        flag = 1.0 if self.preemption.signal is not None else 0.0
        packed = all_reduce_sum(torch.stack([loss_sum / self.grad_accum_steps, torch.tensor(flag, device=loss_sum.device)]), self.ctx)
        self.preempt_requested = bool(packed[1].item() > 0)
        return float(packed[0].item()) / self.ctx.world_size

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy (nats/token) over the fixed validation windows, all ranks combined."""
        self.module.eval()
        window_ids = val_window_ids(
            self.val_split.num_windows(self.block_size), self.block_size, self.train_cfg["val_tokens"]
        )
        local_ids = rank_slice(window_ids, self.ctx.rank, self.ctx.world_size)
        totals = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for start in range(0, len(local_ids), self.device_batch_size):
            x, y = self.val_split.read(local_ids[start : start + self.device_batch_size], self.block_size)
            with self.autocast:
                _, loss = self.model(x.to(self.ctx.device), y.to(self.ctx.device))
            totals[0] += loss.double() * y.numel()
            totals[1] += y.numel()
        totals = all_reduce_sum(totals, self.ctx)
        return float(totals[0] / totals[1])

    # ----- the loop ----------------------------------------------------------------
    def run(self) -> dict:
        """Train to ``num_iterations``; returns the result dict (also written by rank 0)."""
        tc = self.train_cfg
        self.preemption = _PreemptionFlag()
        self.preempt_requested = False
        self.lr_mult = 0.0
        wall_start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if not resumed and self.ctx.is_main and self.partial_metrics.exists():
            self.partial_metrics.unlink()
        num_params = self.model.num_parameters()
        self.log(
            f"run {self.cfg.get('study')}/{self.cfg.get('stage')}/{self.cfg.get('variant')} seed {self.seed}: "
            f"{num_params:,} parameters, world_size {self.ctx.world_size} ({self.ctx.launcher}, {self.ctx.backend}), "
            f"device {self.ctx.device}, batch {tc['batch_size']} x {self.block_size} tokens, "
            f"grad_accum_steps {self.grad_accum_steps}"
        )
        tokens_per_step = tc["batch_size"] * self.block_size
        train_loss = float("nan")
        window_losses: list[float] = []
        val_loss: float | None = None
        reason: str | None = None
        evaluate_at_start = tc["val_loss_every"] > 0 and self.step == 0
        if evaluate_at_start:
            val_loss = self.evaluate()
            self._emit_row(train_loss=None, val_loss=val_loss)
        while self.step < tc["num_iterations"]:
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_loss = self.train_step()
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            self.train_time_ms += (time.perf_counter() - t0) * 1000.0
            self.step += 1
            self.tokens_seen += tokens_per_step
            window_losses.append(train_loss)
            if not math.isfinite(train_loss):
                reason = f"diverged: train_loss is {train_loss} at step {self.step}"
                self._emit_row(train_loss=None, val_loss=None)
                break
            last = self.step == tc["num_iterations"]
            do_eval = last or (tc["val_loss_every"] > 0 and self.step % tc["val_loss_every"] == 0)
            if do_eval or self.step % tc["log_every"] == 0:
                val_loss = self.evaluate() if do_eval else None
                self._emit_row(train_loss=float(np.mean(window_losses)), val_loss=val_loss)
                window_losses = []
                if val_loss is not None and not math.isfinite(val_loss):
                    reason = f"diverged: val_loss is {val_loss} at step {self.step}"
                    break
            if self.preempt_requested:
                self.save_checkpoint()
                self.log(f"PREEMPTED by signal at step {self.step}: checkpoint saved to {self.checkpoint_path}")
                raise SystemExit(EXIT_PREEMPTED)
            if tc["checkpoint_every"] and self.step % tc["checkpoint_every"] == 0 and not last:
                self.save_checkpoint()
        success = reason is None
        if success:
            self.save_checkpoint()
        return self._finish(success, reason, train_loss, val_loss, num_params, time.perf_counter() - wall_start)

    def _emit_row(self, train_loss: float | None, val_loss: float | None) -> None:
        seconds = self.train_time_ms / 1000.0
        row = {
            "step": self.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.lr_mult * self.train_cfg["lr"],
            "tokens_seen": self.tokens_seen,
            "train_time_ms": round(self.train_time_ms, 3),
            "step_avg_ms": round(self.train_time_ms / self.step, 3) if self.step else None,
            "tokens_per_s": round(self.tokens_seen / seconds, 1) if seconds > 0 else None,
        }
        self.write_metrics_row(row)
        parts = [f"step {self.step}/{self.train_cfg['num_iterations']}"]
        if train_loss is not None:
            parts.append(f"train_loss {train_loss:.4f}")
        if val_loss is not None:
            parts.append(f"val_loss {val_loss:.4f}")
        if row["step_avg_ms"] is not None:
            parts.append(f"step_avg {row['step_avg_ms']:.1f} ms")
        self.log(" ".join(parts))

    def _finish(self, success, reason, train_loss, val_loss, num_params, wall_seconds) -> dict:
        git = git_state()
        result = {
            "study": self.cfg.get("study"),
            "stage": self.cfg.get("stage"),
            "variant": self.cfg.get("variant"),
            "seed": self.seed,
            "run_id": self.cfg.get("run_id"),
            "dataset": self.cfg.get("dataset"),
            "success": success,
            "reason": reason,
            "final_step": self.step,
            "final_val_loss": val_loss if success else None,
            "final_train_loss": train_loss if math.isfinite(train_loss) else None,
            "time_seconds": round(wall_seconds, 3),
            "train_time_ms": round(self.train_time_ms, 3),
            "tokens_seen": self.tokens_seen,
            "num_parameters": num_params,
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "device_name": torch.cuda.get_device_name(self.ctx.device) if self.ctx.device.type == "cuda" else platform.processor() or platform.machine(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "communication": self.strategy.state_dict()["communication"],
            "config_hash": self.config_hash,
            "config": {"model": self.cfg.get("model"), "train": self.train_cfg},
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
        }
        if self.ctx.is_main:
            if git["diff"]:
                write_text_atomic(self.out_dir / "git_diff.patch", git["diff"])
            if self.partial_metrics.exists():
                os.replace(self.partial_metrics, self.out_dir / "metrics.jsonl")
            write_json_atomic(self.out_dir / "result.json", result)
            status = "finished" if success else f"FAILED ({reason})"
            self.log(f"{status}: final val_loss {result['final_val_loss']}, {wall_seconds:.1f} s")
        return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workflow.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-config", required=True, help="run config as JSON text, or @path/to/file.json")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--meta", type=Path, help="dataset meta.json (default: {data_dir}/tokens/{dataset}/meta.json)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parse_args(argv)
    text = Path(args.run_config[1:]).read_text() if args.run_config.startswith("@") else args.run_config
    try:
        run_cfg = json.loads(text)
    except json.JSONDecodeError as err:
        print(f"--run-config: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", file=sys.stderr)
        return 1
    meta = args.meta or Path(args.data_dir) / "tokens" / run_cfg["dataset"] / "meta.json"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    ctx = init_distributed(validate_section(run_cfg.get("train"), "train", "train")["device"])
    try:
        Trainer(run_cfg, args.out_dir, meta, ctx).run()
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
