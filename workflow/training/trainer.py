"""The trainer: one seeded run of one variant in one stage (what ``python -m workflow.train`` runs).

Reading order: :class:`Trainer.__init__` builds data, model, strategy and optimizers;
:meth:`Trainer.train_step` is one optimizer step (nanoGPT's micro-step loop);
:meth:`Trainer.run` is the outer loop (evaluate, log, checkpoint, stop). Everything a resumed
run needs lives in :class:`RunState` plus the model, optimizers, strategy and RNG.

Variants the trainer carries (all from the run config):

- strategies (``train.strategy``, workflow/strategies/): DDP, DiLoCo, gossip;
- ``train.optimizer``: adamw, muon (AdamW + Muon), sgd (workflow.optim.optimizers);
- a sequence-length curriculum (``train.curriculum_*``): every step samples the same full
  ``block_size + 1`` windows (a pure function of (seed, step), independent of the world size)
  and crops them; evaluation always uses the full block_size;
- DepthWarm (``model.depth_warm*``): the stochastic-depth draws use a CPU generator re-seeded
  from (seed, step) before every micro-step, so all micro-steps and ranks skip the same layers;
- ``train.training_hours``: a wall-clock budget on training time (evaluations excluded, summed
  over resumes); when spent the run stops with a final evaluation;
- the GPU path: bf16 autocast, ``torch.compile``, TF32, pinned memory with the next step's batch
  copied while the GPU works, MFU in the metrics.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from workflow.core.exits import EXIT_PREEMPTED
from workflow.data.loader import TokenSplit, rank_slice, train_window_ids
from workflow.model import GPT, depth_warm_state
from workflow.model.gpt import compile_gpt
from workflow.model.parallelize import parallelize_gpt
from workflow.parallel.comm import CommCounter
from workflow.parallel.process_groups import DistContext, init_tensor_parallel
from workflow.strategies import build_strategy
from workflow.study.length import model_block_size, run_steps
from workflow.model.spec import build_model_config
from workflow.study.resolve import config_hash
from workflow.optim.schedules import (
    check_curriculum,
    curriculum_block_size,
    resolve_depth_warm,
    schedule_progress,
    set_lr,
)
from workflow.study.schema import validate_section
from workflow.training import checkpoint
from workflow.training.evaluation import Evaluator
from workflow.training.metrics import MetricsLog, compile_counts
from workflow.model.flops import flops_per_token, peak_flops
from workflow.training.provenance import slurm_job_id
from workflow.training.records import RunRecords
from workflow.training.state import PreemptionFlag, RunState, step_seed
from workflow.training.tracking import Tracker


class Trainer(RunRecords):
    """One training run. Build it, then call :meth:`run`.

    Args:
        run_cfg: resolved run config (workflow.study.resolve.run_config); ``train`` is validated
            against the schema here, so the trainer also works standalone.
        out_dir: folder of the run's outputs.
        meta_path: the dataset's meta.json.
        ctx: the process's :class:`DistContext`.
    Raises:
        workflow.study.schema.ConfigError: invalid ``train`` keys (named).
        ValueError: ``batch_size`` not divisible by ``dp_size * device_batch_size``; a
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
        model_cfg = dict(run_cfg.get("model", {}))
        # the one source of block size and run length (workflow.study.length): the plans use it too
        self.block_size = model_block_size(model_cfg)
        tc["num_iterations"] = run_steps({"train": tc, "model": model_cfg}, self.train_split.num_tokens)
        # DepthWarm fractions of the run -> steps of this run's length
        self.model_config = build_model_config(resolve_depth_warm(model_cfg, tc["num_iterations"]),
                                               self.train_split.vocab_size)
        if self.model_config.tensor_parallel and self.model_config.tp_mode == "real":
            if tc["strategy"]["name"] != "ddp":
                raise ValueError(f"model.tp_mode 'real' runs with train.strategy ddp only, not {tc['strategy']['name']!r}")
            if tc["optimizer"] == "muon":  # Newton-Schulz of a shard is not that of the whole matrix
                raise ValueError("model.tp_mode 'real' runs with train.optimizer adamw or sgd, not muon "
                                 "(Muon would orthogonalize each shard separately); use tp_mode 'simulated'")
            # tp_size processes per replica on a (dp, tp) DeviceMesh; data parallelism over dp only
            self.ctx = ctx = init_tensor_parallel(ctx, self.model_config.tp_size)
        self.num_train_windows = self.train_split.num_windows(self.block_size)
        check_curriculum(tc, self.block_size)  # last rung = block_size, reached before the end (names the key)
        self.budget_s = tc["training_hours"] * 3600.0 if tc["training_hours"] is not None else None

        per_step = tc["batch_size"]
        device_batch = tc["device_batch_size"] or per_step // ctx.dp_size
        if device_batch < 1 or per_step % (ctx.dp_size * device_batch):
            raise ValueError(
                f"train.batch_size={per_step} must be a multiple of the data-parallel workers ({ctx.dp_size}) x "
                f"train.device_batch_size ({device_batch})"
            )
        self.device_batch_size = device_batch
        self.grad_accum_steps = per_step // (ctx.dp_size * device_batch)

        torch.manual_seed(self.seed)
        self.model = GPT(self.model_config).to(ctx.device)
        if ctx.mesh is not None:  # real tensor parallelism: keep this rank's shards
            parallelize_gpt(self.model, ctx.mesh["tp"])
        self.depth_generator = torch.Generator(device="cpu")
        # Forward passes run through the compiled model when train.compile (same parameters;
        # whole model, or block by block with DepthWarm: workflow.model.gpt.compile_gpt).
        self._compile_base = compile_counts() if tc["compile"] else None
        self.fwd_model = compile_gpt(self.model) if tc["compile"] else self.model
        self.comm = CommCounter(enabled=ctx.distributed)
        self.strategy = build_strategy(tc, ctx, self.comm)
        self.module = self.strategy.wrap(self.fwd_model, find_unused_parameters=self.model_config.depth_warm)
        self.optimizers = self.strategy.build_optimizers(self.model)
        self.strategy.setup(self.model)

        # bf16 autocast on CUDA and on CPU alike (on CPU it checks the numerics, it is not faster)
        use_bf16 = tc["dtype"] == "bfloat16"
        self.autocast = lambda: torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.device_name = (
            torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda"
            else platform.processor() or platform.machine()
        )
        self.peak_flops = peak_flops(self.device_name) if ctx.device.type == "cuda" else None
        self.matmul_params = self.model.num_parameters(exclude_embeddings=True) + self.model.lm_head.weight.numel()
        self.evaluator = Evaluator(self.val_split, self.block_size, tc["val_tokens"], device_batch, ctx, self.comm,
                                   self.autocast)
        self.state = RunState(seq_len=self.block_size)
        self.metrics = MetricsLog(self.out_dir, ctx.is_main)
        self.log = self.metrics.log
        self._window_flops = 0.0
        self._window_time_ms = 0.0
        self._prefetched: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.final_model_path = self.out_dir / "model.pt"
        # continued runs (workflow.study.staging): keep a checkpoint at branch_at; resume a source run's
        self.branch_at = run_cfg.get("branch_at")
        self.continue_from = run_cfg.get("continue_from")

    # ----- checkpoints -------------------------------------------------------------
    def _identity(self) -> dict:
        return {"config_hash": self.config_hash, "seed": self.seed, "step": self.state.step}

    def state_dict(self) -> dict:
        """This rank's state: everything a resumed run needs to continue bit-identically on CPU
        (tensors, plain containers, numbers and strings only: loadable with weights_only=True).
        Schedule state that is a pure function of the step (lr, DepthWarm, step-based
        curriculum, data order) is recomputed, not stored."""
        return {
            "run": dataclasses.asdict(self.state),
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "strategy": self.strategy.state_dict(),
            "comm": self.comm.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save_checkpoint(self) -> None:
        """Every rank writes its state into the next checkpoint slot (workflow.training.checkpoint)."""
        checkpoint.save(self.out_dir, self.ctx.rank, self.ctx.world_size, self.state_dict(), self._identity(),
                        barrier=lambda: self.comm.barrier("checkpoint"))

    def _all_ranks_ok(self, ok: bool) -> bool:
        flag = torch.tensor([1.0 if ok else 0.0], device=self.ctx.device)
        self.comm.all_reduce(flag, "checkpoint", op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def try_resume(self) -> bool:
        """Load the newest checkpoint every rank can read (this config and seed); True if resumed."""
        state = checkpoint.load(self.out_dir, self.ctx.rank, self.ctx.world_size, self._identity(), self.ctx.device,
                                all_ok=self._all_ranks_ok, log=self.log)
        if state is None:
            return False
        self._load_state(state)
        self.log(f"resumed from {checkpoint.checkpoint_dir(self.out_dir)} at step {self.state.step}")
        return True

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.strategy.load_state_dict(state["strategy"])
        self.comm.load_state_dict(state["comm"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        run = dict(state["run"])
        run["val_history"] = [(int(s), float(v)) for s, v in run["val_history"]]
        self.state = RunState(**run)

    def source_branch_dir(self) -> Path:
        """The branch checkpoint of the run this one continues: the same variant and seed in the
        source stage (``<results>/stage_<R>/<variant>/seed_<seed>/branch``)."""
        stage_dir = self.out_dir.parent.parent.parent / f"stage_{self.continue_from['stage']}"
        return stage_dir / self.out_dir.parent.name / self.out_dir.name / "branch"

    def try_continue(self) -> bool:
        """A continued run without its own checkpoint starts from its source run's checkpoint at
        the branch step (same seed; the source's config hash). A missing or unreadable one is
        logged and the run trains from step 0 (the same result, without the saving)."""
        source = self.source_branch_dir()
        identity = {"config_hash": self.continue_from["config_hash"], "seed": self.seed}
        state = checkpoint.load(source, self.ctx.rank, self.ctx.world_size, identity, self.ctx.device,
                                all_ok=self._all_ranks_ok, log=self.log)
        if state is None or int(state["run"]["step"]) != int(self.continue_from["step"]):
            self.log(f"no branch checkpoint at step {self.continue_from['step']} in {source}: training from step 0")
            return False
        self._load_state(state)
        st = self.state
        st.continued = {"stage": self.continue_from["stage"], "step": st.step, "flops": st.flops,
                        "tokens_seen": st.tokens_seen, "train_time_ms": st.train_time_ms}  # kept by its own checkpoints
        self.log(f"continued from {source} at step {st.step} (stage {self.continue_from['stage']}'s run)")
        return True

    # ----- data --------------------------------------------------------------------
    def _load_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's full-length windows of ``step``: (x, y) int64 ``[B_local, block_size]``
        on the device (pinned host memory and an asynchronous copy on CUDA). The global batch is
        a pure function of (seed, step); data-parallel worker k takes its k-th slice."""
        window_ids = train_window_ids(self.seed, step, self.train_cfg["batch_size"], self.num_train_windows)
        local_ids = rank_slice(window_ids, self.ctx.dp_rank, self.ctx.dp_size)
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

    # ----- the step -----------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step over the global batch; returns the mean train loss over workers.

        Also decides, in the same all-reduce as the loss (kind ``metrics``), whether any rank
        got a preemption signal (``self.preempt_requested``) or the time budget is spent
        (``self.budget_spent``), so every rank stops at the same step.
        """
        tc, st = self.train_cfg, self.state
        step_start = time.perf_counter()
        # With a time budget the schedule follows max(step / N, elapsed / budget) (the same on every rank).
        progress = (schedule_progress(st.step, tc["num_iterations"], st.schedule_ms / 1000.0, self.budget_s)
                    if self.budget_s is not None else None)
        lr_mult = set_lr(self.optimizers, st.step, tc, progress)
        seq_len = curriculum_block_size(st.step, tc, st.val_history) or self.block_size
        _, drop = self._apply_depth_state(st.step)
        depth_seed = step_seed(self.seed, st.step, 1) if drop > 0 else None
        x_all, y_all = self._batch(st.step)
        if seq_len < self.block_size:  # curriculum: crop the sampled windows
            x_all, y_all = x_all[:, :seq_len], y_all[:, :seq_len]
        self.module.train()
        loss_sum = torch.zeros((), device=self.ctx.device)
        for micro in range(self.grad_accum_steps):
            rows = slice(micro * self.device_batch_size, (micro + 1) * self.device_batch_size)
            if depth_seed is not None:  # the same layers are dropped on every micro-step and rank
                self.depth_generator.manual_seed(depth_seed)
            with self.strategy.micro_step_context(self.module, last=micro == self.grad_accum_steps - 1):
                with self.autocast():
                    _, loss = self.module(x_all[rows], y_all[rows])
                (loss / self.grad_accum_steps).backward()
            loss_sum += loss.detach()
        if self.ctx.device.type == "cuda" and st.step + 1 < tc["num_iterations"]:
            self._prefetched = (st.step + 1, *self._load_batch(st.step + 1))
        self.strategy.optimizer_step(self.model, self.optimizers, st.step)
        self._record_tp_comm(training=True)
        st.lr_mult, st.seq_len = lr_mult, seq_len
        flags = [1.0 if self.preemption.signal is not None else 0.0, 0.0, 0.0]
        if self.budget_s is not None:
            elapsed_ms = st.train_time_ms + (time.perf_counter() - step_start) * 1000.0
            flags[1] = 1.0 if elapsed_ms >= self.budget_s * 1000.0 else 0.0
            flags[2] = elapsed_ms
        packed = torch.cat([(loss_sum / self.grad_accum_steps).reshape(1),
                            torch.tensor(flags, dtype=loss_sum.dtype, device=loss_sum.device)])
        packed = self.comm.all_reduce(packed, "metrics").tolist()
        self.preempt_requested = packed[1] > 0
        self.budget_spent = packed[2] > 0
        if self.budget_s is not None:
            st.schedule_ms = packed[3] / self.ctx.world_size
        return packed[0] / self.ctx.world_size

    def evaluate(self) -> dict:
        """val_loss of the scored model (and the workers' own, and their consensus distance)
        with the DepthWarm layers active at the current step."""
        self._apply_depth_state(self.state.step)
        out = self.evaluator.evaluate(self.fwd_model, self.model, self.strategy)
        self._record_tp_comm(training=False)
        self.state.val_history.append((self.state.step, out["val_loss"]))
        return out

    # ----- the loop -------------------------------------------------------------------
    def run(self) -> dict:
        """Train to ``num_iterations`` (or the time budget); returns the result dict (also
        written by rank 0). Raises SystemExit(EXIT_PREEMPTED) after a preemption signal,
        once the checkpoint is saved."""
        tc, st = self.train_cfg, self.state
        self.preemption = PreemptionFlag()
        self.preempt_requested = self.budget_spent = False
        wall_start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if not resumed and self.continue_from:
            resumed = self.try_continue()
        st = self.state
        self.metrics.start(st.step if resumed else None)
        self.tracker = Tracker(self.cfg, self.out_dir, is_main=self.ctx.is_main)
        self.log(
            f"run {self.cfg.get('study')}/{self.cfg.get('stage')}/{self.cfg.get('variant')} seed {self.seed}: "
            f"{self.model.num_parameters():,} parameters, world_size {self.ctx.world_size} "
            f"({self.ctx.launcher}, {self.ctx.backend}), device {self.ctx.device} ({self.device_name}), "
            f"batch {tc['batch_size']} x {self.block_size} tokens, grad_accum_steps {self.grad_accum_steps}, "
            f"num_iterations {tc['num_iterations']}, optimizers {'+'.join(type(o).__name__ for o in self.optimizers)}, {self.strategy.describe()}, "
            f"dtype {tc['dtype']}, compile {tc['compile']}"
        )
        if slurm_job_id():
            self.log(f"SLURM job {slurm_job_id()} on {platform.node()}")
        reason = stopped_early = None
        if tc["val_loss_every"] > 0 and st.step == 0:
            self._emit_row(train_loss=None, evaluation=self._evaluate_and_track())
        while st.step < tc["num_iterations"]:
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_loss = self.train_step()
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize()
            step_ms = (time.perf_counter() - t0) * 1000.0
            step_tokens = tc["batch_size"] * st.seq_len
            step_flops = flops_per_token(self.model_config, st.seq_len, self.matmul_params) * step_tokens
            st.train_time_ms += step_ms
            st.flops += step_flops
            self._window_time_ms += step_ms
            self._window_flops += step_flops
            st.step += 1
            st.tokens_seen += step_tokens
            st.window_losses.append(train_loss)
            st.last_train_loss = train_loss
            if not math.isfinite(train_loss):
                reason = f"diverged: train_loss is {train_loss} at step {st.step}"
                self._emit_row(train_loss=None, evaluation=None)
                break
            last = st.step == tc["num_iterations"]
            if self.budget_spent and not last:
                stopped_early, last = "training_hours", True
                self.log(f"training_hours budget ({tc['training_hours']} h) spent at step {st.step}")
            if last:  # e.g. DiLoCo's outer step on a partial last round, before the final evaluation
                self.strategy.end_training(self.model, st.step)
            do_eval = last or (tc["val_loss_every"] > 0 and st.step % tc["val_loss_every"] == 0)
            if do_eval or st.step % tc["log_every"] == 0:
                evaluation = self._evaluate_and_track() if do_eval else None
                self._emit_row(train_loss=float(np.mean(st.window_losses)), evaluation=evaluation)
                st.window_losses = []
                if evaluation is not None and not math.isfinite(evaluation["val_loss"]):
                    reason = f"diverged: val_loss is {evaluation['val_loss']} at step {st.step}"
                    break
            if last:
                break
            if self.preempt_requested:
                self.save_checkpoint()
                self.log(f"PREEMPTED by signal at step {st.step}: checkpoint saved to "
                         f"{checkpoint.checkpoint_dir(self.out_dir)}")
                self.tracker.finish(exit_code=EXIT_PREEMPTED)
                raise SystemExit(EXIT_PREEMPTED)
            if tc["checkpoint_every"] and st.step % tc["checkpoint_every"] == 0:
                self.save_checkpoint()
            if self.branch_at is not None and st.step == self.branch_at:  # a later stage continues from here
                checkpoint.save(self.out_dir / "branch", self.ctx.rank, self.ctx.world_size, self.state_dict(),
                                self._identity(), barrier=lambda: self.comm.barrier("checkpoint"))
        result = self._finish(reason, stopped_early, time.perf_counter() - wall_start)
        self.tracker.finish({k: result[k] for k in ("final_val_loss", "final_train_loss", "final_step", "success", "mfu")})
        return result

    def _evaluate_and_track(self) -> dict:
        evaluation = self.evaluate()
        self.state.last_val_loss = evaluation["val_loss"]
        self.state.last_val_loss_workers = evaluation.get("val_loss_workers")
        return evaluation
