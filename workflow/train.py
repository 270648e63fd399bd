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
import dataclasses
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


def slurm_job_id() -> str | None:
    """The SLURM job id when running under SLURM (``SLURM_JOB_ID``), else None.

    Recorded in result.json and train.log so a run's SLURM log
    (``.snakemake/slurm_logs/rule_train/<stage>_<variant>_<seed>/<jobid>.log``) can be found
    from its results folder."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")


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

    Variants the trainer carries (all from the run config):

    - ``train.optimizer: muon`` (workflow.optim.build_optimizers: AdamW + Muon).
    - Sequence-length curriculum (``train.curriculum_*``): every step samples the same
      full ``block_size + 1`` windows (a pure function of (seed, step), independent of the
      world size, workflow.data) and crops them to the first
      ``curriculum_block_size(step, train, val_history)`` tokens. Evaluation always uses the
      full block_size, so val_loss values stay comparable.
    - DepthWarm (``model.depth_warm*``): before every step the model gets
      ``depth_warm_state(step)``; the stochastic-depth draws use a CPU generator re-seeded
      from (seed, step) before every micro-step, so all micro-steps and all ranks skip the same
      layers (the result does not depend on world size or grad accumulation). DDP then needs
      ``find_unused_parameters=True``. Evaluation runs the active layers of the current step.
    - ``train.training_hours``: a wall-clock budget on training time (evaluations excluded,
      summed over resumes); when it is spent the run stops after the current step with a
      final evaluation (``result.json``: ``stopped_early: "training_hours"``, success).
    - GPU fast path: bf16 autocast (``train.dtype``), ``torch.compile`` (``train.compile``),
      TF32 matmuls, pinned host memory with non-blocking copies, the next step's batch read
      while the GPU works; metrics get ``mfu`` (None on CPU).

    Args:
        run_cfg: resolved run config (see workflow.config.run_config); ``model`` and
            ``train`` are validated against the schema here, so the trainer also works
            standalone.
        out_dir: folder of the run's outputs.
        meta_path: the dataset's meta.json.
        ctx: the process's :class:`DistContext`.
    Raises:
        workflow.config.ConfigError: invalid ``train`` keys (named).
        ValueError: ``batch_size`` not divisible by ``world_size * device_batch_size``; a
            curriculum rung longer than ``model.block_size`` (names the keys).
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
        self.num_train_windows = self.train_split.num_windows(self.block_size)

        ladder = tc.get("curriculum_block_sizes")
        if ladder:
            curriculum_block_size(0, tc, [])  # validates the ladder and the steps (names the key)
            if max(ladder) > self.block_size:
                raise ValueError(
                    f"train.curriculum_block_sizes {ladder}: longest rung exceeds model.block_size {self.block_size}"
                )

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
        self.depth_generator = torch.Generator(device="cpu")
        # Forward passes run through the compiled model when train.compile (same parameters).
        self.fwd_model = torch.compile(self.model) if tc["compile"] else self.model
        self.strategy = STRATEGIES[tc["strategy"]](ctx)
        self.module = self.strategy.wrap(self.fwd_model, find_unused_parameters=self.model_config.depth_warm)
        self.optimizers = build_optimizers(self.model, tc)
        self.autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if tc["dtype"] == "bfloat16" and ctx.device.type == "cuda"
            else torch.autocast(device_type=ctx.device.type, enabled=False)
        )
        self.device_name = (
            torch.cuda.get_device_name(ctx.device)
            if ctx.device.type == "cuda"
            else platform.processor() or platform.machine()
        )
        self.peak_flops = peak_flops(self.device_name) if ctx.device.type == "cuda" else None
        self.matmul_params = self.model.num_parameters(exclude_embeddings=True) + self.model.lm_head.weight.numel()

        self.step = 0
        self.train_time_ms = 0.0
        self.tokens_seen = 0
        self.val_history: list[tuple[int, float]] = []  # (step, val_loss) of every evaluation
        self.window_losses: list[float] = []  # train losses since the last metrics row
        self.last_train_loss = float("nan")
        self.last_val_loss: float | None = None
        self.lr_mult = 0.0
        self.seq_len = self.block_size
        self._window_flops = 0.0
        self._window_time_ms = 0.0
        self._prefetched: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.partial_metrics = self.out_dir / "metrics.partial.jsonl"

    # ----- checkpoints -------------------------------------------------------------
    def state_dict(self, finished: bool = False) -> dict:
        """Everything a resumed run needs to continue bit-identically on CPU.

        Schedule state that is a pure function of the step (lr, DepthWarm, step-based
        curriculum, data order) is recomputed; state that depends on history is stored:
        ``val_history`` (plateau curriculum), the open log window's train losses, the
        last losses, RNG states. ``finished`` marks the final checkpoint of a completed run
        (not resumed from: re-running a finished job trains afresh).
        """
        active, drop = depth_warm_state(self.step, self.model_config)
        return {
            "version": CHECKPOINT_VERSION,
            "config_hash": self.config_hash,
            "seed": self.seed,
            "step": self.step,
            "finished": finished,
            "train_time_ms": self.train_time_ms,
            "tokens_seen": self.tokens_seen,
            "val_history": list(self.val_history),
            "window_losses": list(self.window_losses),
            "last_train_loss": self.last_train_loss,
            "last_val_loss": self.last_val_loss,
            "lr_mult": self.lr_mult,
            "seq_len": self.seq_len,
            "depth_state": {"active_layers": active, "drop_prob": drop},
            "model_config": dataclasses.asdict(self.model_config),
            "dataset": self.cfg.get("dataset"),
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "strategy": self.strategy.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save_checkpoint(self, finished: bool = False) -> None:
        """Rank 0 writes ``checkpoint.pt`` atomically (temp file + rename); all ranks wait."""
        if self.ctx.is_main:
            with atomic_write(self.checkpoint_path, "wb") as handle:
                torch.save(self.state_dict(finished), handle)
        if self.ctx.distributed:
            torch.distributed.barrier()

    def try_resume(self) -> bool:
        """Load ``checkpoint.pt`` if it is an unfinished checkpoint of this exact config and
        seed; True if resumed. Other checkpoints are ignored (and logged), never deleted."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.ctx.device, weights_only=False)
        if state.get("config_hash") != self.config_hash or state.get("seed") != self.seed:
            self.log(f"ignoring {self.checkpoint_path}: it belongs to another config or seed")
            return False
        if state.get("version") != CHECKPOINT_VERSION:
            self.log(f"ignoring {self.checkpoint_path}: checkpoint version {state.get('version')} != {CHECKPOINT_VERSION}")
            return False
        if state.get("finished"):
            self.log(f"ignoring {self.checkpoint_path}: it is the final checkpoint of a finished run; training afresh")
            return False
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step, self.train_time_ms, self.tokens_seen = state["step"], state["train_time_ms"], state["tokens_seen"]
        self.val_history = [(int(s), float(v)) for s, v in state["val_history"]]
        self.window_losses = list(state["window_losses"])
        self.last_train_loss, self.last_val_loss = state["last_train_loss"], state["last_val_loss"]
        self.lr_mult, self.seq_len = state["lr_mult"], state["seq_len"]
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

    # ----- data --------------------------------------------------------------------
    def _load_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's full-length windows of ``step``: (x, y) int64 ``[B_local, block_size]``
        on the device (pinned host memory and an asynchronous copy on CUDA)."""
        window_ids = train_window_ids(self.seed, step, self.train_cfg["batch_size"], self.num_train_windows)
        local_ids = rank_slice(window_ids, self.ctx.rank, self.ctx.world_size)
        x, y = self.train_split.read(local_ids, self.block_size)
        if self.ctx.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
            return x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
        return x, y

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._prefetched is not None and self._prefetched[0] == step:
            _, x, y = self._prefetched
            self._prefetched = None
            return x, y
        return self._load_batch(step)

    def _apply_depth_state(self, step: int) -> tuple[int, float]:
        active, drop = depth_warm_state(step, self.model_config)
        self.model.set_depth_schedule_state(active, drop, self.depth_generator)
        return active, drop

    # ----- steps -------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step over the global batch; returns the global mean train loss.

        Also decides, in the same all-reduce as the loss, whether any rank got a
        preemption signal (``self.preempt_requested``) or the time budget is spent
        (``self.budget_spent``), so every rank stops at the same step.
        """
        tc = self.train_cfg
        step_start = time.perf_counter()
        lr_mult = set_lr(self.optimizers, self.step, tc)
        seq_len = curriculum_block_size(self.step, tc, self.val_history) or self.block_size
        _, drop = self._apply_depth_state(self.step)
        depth_seed = _step_seed(self.seed, self.step, 1) if drop > 0 else None
        x_all, y_all = self._batch(self.step)
        if seq_len < self.block_size:  # curriculum: crop the sampled windows
            x_all, y_all = x_all[:, :seq_len], y_all[:, :seq_len]
        self.module.train()
        loss_sum = torch.zeros((), device=self.ctx.device)
        for micro in range(self.grad_accum_steps):
            rows = slice(micro * self.device_batch_size, (micro + 1) * self.device_batch_size)
            x, y = x_all[rows], y_all[rows]
            if depth_seed is not None:  # the same layers are dropped on every micro-step and rank
                self.depth_generator.manual_seed(depth_seed)
            last = micro == self.grad_accum_steps - 1
            with self.strategy.micro_step_context(self.module, last=last):
                with self.autocast:
                    _, loss = self.module(x, y)
                (loss / self.grad_accum_steps).backward()
            loss_sum += loss.detach()
        if self.ctx.device.type == "cuda" and self.step + 1 < tc["num_iterations"]:
            # Read and copy the next batch while the GPU works through this step's kernels.
            self._prefetched = (self.step + 1, *self._load_batch(self.step + 1))
        if tc["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.strategy.after_optimizer_step(self.model, self.step)
        self.lr_mult = lr_mult
        self.seq_len = seq_len
        # Mean over micro-steps and ranks, the preemption flag and the time-budget flag: one collective.
        flags = [1.0 if self.preemption.signal is not None else 0.0, 0.0]
        if tc["training_hours"] is not None:
            elapsed_ms = self.train_time_ms + (time.perf_counter() - step_start) * 1000.0
            flags[1] = 1.0 if elapsed_ms >= tc["training_hours"] * 3.6e6 else 0.0
        packed = torch.cat([(loss_sum / self.grad_accum_steps).reshape(1),
                            torch.tensor(flags, dtype=loss_sum.dtype, device=loss_sum.device)])
        packed = all_reduce_sum(packed, self.ctx).tolist()
        self.preempt_requested = packed[1] > 0
        self.budget_spent = packed[2] > 0
        return packed[0] / self.ctx.world_size

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy (nats/token) over the fixed validation windows (full block_size),
        all ranks combined, with the DepthWarm layers active at the current step."""
        self._apply_depth_state(self.step)
        self.fwd_model.eval()
        window_ids = val_window_ids(
            self.val_split.num_windows(self.block_size), self.block_size, self.train_cfg["val_tokens"]
        )
        local_ids = rank_slice(window_ids, self.ctx.rank, self.ctx.world_size)
        totals = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for start in range(0, len(local_ids), self.device_batch_size):
            x, y = self.val_split.read(local_ids[start : start + self.device_batch_size], self.block_size)
            with self.autocast:
                _, loss = self.fwd_model(x.to(self.ctx.device), y.to(self.ctx.device))
            totals[0] += loss.double() * y.numel()
            totals[1] += y.numel()
        totals = all_reduce_sum(totals, self.ctx)
        val_loss = float(totals[0] / totals[1])
        self.val_history.append((self.step, val_loss))
        return val_loss

    # ----- the loop ----------------------------------------------------------------
    def run(self) -> dict:
        """Train to ``num_iterations`` (or the time budget); returns the result dict (also
        written by rank 0). Raises SystemExit(EXIT_PREEMPTED) after a preemption signal,
        once the checkpoint is saved."""
        tc = self.train_cfg
        self.preemption = _PreemptionFlag()
        self.preempt_requested = False
        self.budget_spent = False
        wall_start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if not resumed and self.ctx.is_main and self.partial_metrics.exists():
            self.partial_metrics.unlink()
        num_params = self.model.num_parameters()
        self.tracker = Tracker(self.cfg, self.out_dir, is_main=self.ctx.is_main)
        self.log(
            f"run {self.cfg.get('study')}/{self.cfg.get('stage')}/{self.cfg.get('variant')} seed {self.seed}: "
            f"{num_params:,} parameters, world_size {self.ctx.world_size} ({self.ctx.launcher}, {self.ctx.backend}), "
            f"device {self.ctx.device} ({self.device_name}), batch {tc['batch_size']} x {self.block_size} tokens, "
            f"grad_accum_steps {self.grad_accum_steps}, optimizer {tc['optimizer']}, dtype {tc['dtype']}, "
            f"compile {tc['compile']}"
        )
        if slurm_job_id():
            self.log(f"SLURM job {slurm_job_id()} on {platform.node()}")
        reason: str | None = None
        stopped_early: str | None = None
        if tc["val_loss_every"] > 0 and self.step == 0:
            self.last_val_loss = self.evaluate()
            self._emit_row(train_loss=None, val_loss=self.last_val_loss)
        while self.step < tc["num_iterations"]:
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_loss = self.train_step()
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            step_ms = (time.perf_counter() - t0) * 1000.0
            self.train_time_ms += step_ms
            self._window_time_ms += step_ms
            step_tokens = tc["batch_size"] * self.seq_len
            self._window_flops += flops_per_token(self.model_config, self.seq_len, self.matmul_params) * step_tokens
            self.step += 1
            self.tokens_seen += step_tokens
            self.window_losses.append(train_loss)
            self.last_train_loss = train_loss
            if not math.isfinite(train_loss):
                reason = f"diverged: train_loss is {train_loss} at step {self.step}"
                self._emit_row(train_loss=None, val_loss=None)
                break
            last = self.step == tc["num_iterations"]
            if self.budget_spent and not last:
                stopped_early, last = "training_hours", True
                self.log(f"training_hours budget ({tc['training_hours']} h) spent at step {self.step}")
            do_eval = last or (tc["val_loss_every"] > 0 and self.step % tc["val_loss_every"] == 0)
            if do_eval or self.step % tc["log_every"] == 0:
                val_loss = self.evaluate() if do_eval else None
                if val_loss is not None:
                    self.last_val_loss = val_loss
                self._emit_row(train_loss=float(np.mean(self.window_losses)), val_loss=val_loss)
                self.window_losses = []
                if val_loss is not None and not math.isfinite(val_loss):
                    reason = f"diverged: val_loss is {val_loss} at step {self.step}"
                    break
            if last:
                break
            if self.preempt_requested:
                self.save_checkpoint()
                self.log(f"PREEMPTED by signal at step {self.step}: checkpoint saved to {self.checkpoint_path}")
                self.tracker.finish(exit_code=EXIT_PREEMPTED)
                raise SystemExit(EXIT_PREEMPTED)
            if tc["checkpoint_every"] and self.step % tc["checkpoint_every"] == 0:
                self.save_checkpoint()
        success = reason is None
        if success:
            self.save_checkpoint(finished=True)
        result = self._finish(success, reason, stopped_early, num_params, time.perf_counter() - wall_start)
        self.tracker.finish(
            {k: result[k] for k in ("final_val_loss", "final_train_loss", "final_step", "success", "mfu")}
        )
        return result

    def _emit_row(self, train_loss: float | None, val_loss: float | None) -> None:
        seconds = self.train_time_ms / 1000.0
        mfu = None
        if self.peak_flops and self._window_time_ms > 0:
            achieved = self._window_flops / (self._window_time_ms / 1000.0)
            mfu = round(achieved / (self.peak_flops * self.ctx.world_size), 5)
        self._window_flops = self._window_time_ms = 0.0
        row = {
            "step": self.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.lr_mult * self.train_cfg["lr"],
            "tokens_seen": self.tokens_seen,
            "train_time_ms": round(self.train_time_ms, 3),
            "step_avg_ms": round(self.train_time_ms / self.step, 3) if self.step else None,
            "tokens_per_s": round(self.tokens_seen / seconds, 1) if seconds > 0 else None,
            "seq_len": self.seq_len,
            "active_layers": depth_warm_state(self.step, self.model_config)[0],
            "mfu": mfu,
        }
        self.write_metrics_row(row)
        self.tracker.log(row)
        parts = [f"step {self.step}/{self.train_cfg['num_iterations']}"]
        if train_loss is not None:
            parts.append(f"train_loss {train_loss:.4f}")
        if val_loss is not None:
            parts.append(f"val_loss {val_loss:.4f}")
        if row["step_avg_ms"] is not None:
            parts.append(f"step_avg {row['step_avg_ms']:.1f} ms")
        if mfu is not None:
            parts.append(f"mfu {100 * mfu:.1f}%")
        self.log(" ".join(parts))

    def _finish(self, success, reason, stopped_early, num_params, wall_seconds) -> dict:
        git = git_state()
        train_loss = self.last_train_loss
        seconds = self.train_time_ms / 1000.0
        mfu = None
        if self.peak_flops and seconds > 0:
            # Average over the run at the final sequence length (exact without a curriculum).
            fpt = flops_per_token(self.model_config, self.seq_len, self.matmul_params)
            mfu = round(fpt * self.tokens_seen / seconds / (self.peak_flops * self.ctx.world_size), 5)
        result = {
            "study": self.cfg.get("study"),
            "stage": self.cfg.get("stage"),
            "variant": self.cfg.get("variant"),
            "seed": self.seed,
            "run_id": self.cfg.get("run_id"),
            "dataset": self.cfg.get("dataset"),
            "success": success,
            "reason": reason,
            "stopped_early": stopped_early,
            "final_step": self.step,
            "final_val_loss": self.last_val_loss if success else None,
            "final_train_loss": train_loss if math.isfinite(train_loss) else None,
            "time_seconds": round(wall_seconds, 3),
            "train_time_ms": round(self.train_time_ms, 3),
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": round(self.tokens_seen / seconds, 1) if seconds > 0 else None,
            "mfu": mfu,
            "peak_flops": self.peak_flops,
            "num_parameters": num_params,
            "world_size": self.ctx.world_size,
            "slurm_job_id": slurm_job_id(),
            "hostname": platform.node(),
            "device": str(self.ctx.device),
            "device_name": self.device_name,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "communication": self.strategy.state_dict()["communication"],
            "config_hash": self.config_hash,
            "config": {"model": self.cfg.get("model"), "train": self.train_cfg},
            "checkpoint": self.checkpoint_path.name if success else None,
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
    meta = args.meta or Path(args.data_dir) / "tokens" / run_cfg["dataset"] / "meta.json"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(validate_section(run_cfg.get("train"), "train", "train")["device"])
    configure_backends(ctx)
    try:
        Trainer(run_cfg, args.out_dir, meta, ctx).run()
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
