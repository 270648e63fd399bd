"""What a run records: metrics rows, communication totals, the tensor-parallel record, result.json.

:class:`RunRecords` is a mixin of :class:`workflow.training.trainer.Trainer` (it reads the
trainer's attributes: ``state``, ``comm``, ``ctx``, ``model``, ``run_cfg``, ``out_dir``, ...);
it holds everything the trainer writes about a run, apart from the loop that produces it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform

import torch
import torch.distributed as dist

from workflow.core.io import write_json_atomic, write_text_atomic
from workflow.model import depth_warm_state
from workflow.model.parallelize import full_state_dict, tp_comm_counts
from workflow.parallel.comm import summarize
from workflow.parallel.tp_spec import analytic_tp_syncs
from workflow.optim.schedules import schedule_progress
from workflow.training import checkpoint
from workflow.training.metrics import compile_counts, log_line
from workflow.training.provenance import git_state, slurm_job_id


class RunRecords:
    """The recording half of the trainer (metrics rows, comm totals, result.json)."""

    def _record_tp_comm(self, training: bool) -> None:
        """Move the model's tensor-parallel counts (tp_comm_counts: measured at every sync point;
        simulated: what one tp rank of a real run sends) into the run's CommCounter: kinds
        ``tp_forward``, ``tp_backward``, ``tp_grad`` for training steps, ``eval`` for evaluation."""
        counts = tp_comm_counts(self.model)
        if counts is None:
            return
        if not training:
            calls = sum(counts[p]["calls"] for p in ("forward", "backward", "grad"))
            if calls:
                self.comm.record("eval", calls, sum(counts[p]["bytes"] for p in ("forward", "backward", "grad")))
            return
        for phase in ("forward", "backward", "grad"):
            if counts[phase]["calls"]:
                self.comm.record(f"tp_{phase}", counts[phase]["calls"], counts[phase]["bytes"])
        self.state.tp_passes += counts["passes"]
        self.state.tp_forward_calls += counts["forward"]["calls"]
        self.state.tp_backward_calls += counts["backward"]["calls"]

    def tp_syncs_per_pass(self) -> tuple[float | None, float | None]:
        """Measured tensor-parallel all-reduces per training forward and backward pass (None
        without tensor-parallel blocks)."""
        st = self.state
        if self.model.tp is None or not st.tp_passes:
            return None, None
        return st.tp_forward_calls / st.tp_passes, st.tp_backward_calls / st.tp_passes

    def _emit_row(self, train_loss: float | None, evaluation: dict | None) -> None:
        st = self.state
        seconds = st.train_time_ms / 1000.0
        mfu = None
        if self.peak_flops and self._window_time_ms > 0:
            achieved = self._window_flops / (self._window_time_ms / 1000.0)
            mfu = round(achieved / (self.peak_flops * self.ctx.world_size), 5)
        self._window_flops = self._window_time_ms = 0.0
        evaluation = evaluation or {}
        comm_calls, comm_bytes = self.comm.sent()
        row = {
            "step": st.step,
            "train_loss": train_loss,
            "val_loss": evaluation.get("val_loss"),
            "val_loss_workers": evaluation.get("val_loss_workers"),
            "consensus_distance": evaluation.get("consensus_distance"),
            "lr": st.lr_mult * self.train_cfg["lr"],
            "tokens_seen": st.tokens_seen,
            "flops": st.flops,
            "train_time_ms": round(st.train_time_ms, 3),
            "step_avg_ms": round(st.train_time_ms / st.step, 3) if st.step else None,
            "tokens_per_s": round(st.tokens_seen / seconds, 1) if seconds > 0 else None,
            "seq_len": st.seq_len,
            "active_layers": depth_warm_state(st.step, self.model_config)[0],
            "mfu": mfu,
            "comm_calls": comm_calls,  # sent so far by this worker (rank 0), checkpoints excluded
            "comm_bytes": comm_bytes,
        }
        if self._compile_base is not None:  # torch.compile work of this run so far (recompiles show here)
            row["compiled_frames"] = self.compile_stats()["frames"]
        if self.model.tp is not None:  # measured tensor-parallel all-reduces per pass, run so far
            row["tp_syncs_forward"], row["tp_syncs_backward"] = self.tp_syncs_per_pass()
        self.metrics.write(row)
        self.tracker.log(row)
        self.log(log_line(row, self.train_cfg["num_iterations"]))

    def compile_stats(self) -> dict[str, int] | None:
        """``torch.compile`` work since this trainer was built (``metrics.compile_counts``
        differences: frames compiled incl. recompilations, graphs, graph breaks); None without
        ``train.compile``. A run that compiles nothing after its first train step and first
        evaluation has a constant ``frames`` from then on (metrics.jsonl ``compiled_frames``)."""
        if self._compile_base is None:
            return None
        now = compile_counts()
        return {key: now[key] - self._compile_base[key] for key in now}

    def _gather_comm(self) -> tuple[list[dict], list[str]]:
        """Every worker's communication snapshot and host name (rank order). The gather itself is
        the last counted message (kind ``metrics``)."""
        if not self.ctx.distributed:
            return [self.comm.snapshot()], [platform.node()]
        self.comm.record("metrics", 1, 0)
        gathered: list = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, (self.comm.snapshot(), platform.node()))
        return [snap for snap, _ in gathered], [host for _, host in gathered]

    def _tensor_parallel_record(self) -> dict | None:
        """result.json ``tensor_parallel``: pattern, tp_size, tp_mode, parallel_merge, sync counts
        per pass (nominal = the seed write-up's rule, reference_code = what NanoTransformer's
        tensor_parallel_model.py runs for the pattern, analytic = this run's merge rule, measured
        = counted while training) and parameters; None without tensor-parallel blocks."""
        c = self.model_config
        if self.model.tp is None:
            return None
        syncs = c.tp_syncs()
        forward, backward = self.tp_syncs_per_pass()
        return {"tp_size": c.tp_size, "tp_mode": c.tp_mode, "pattern": list(c.layer_block_types),
                "parallel_merge": c.parallel_merge, "syncs_nominal": syncs["nominal"],
                "syncs_reference_code": analytic_tp_syncs(c.layer_block_types, c.tp_size, "reference")["forward"],
                "syncs_analytic": syncs["forward"],
                "syncs_analytic_backward": syncs["backward"], "syncs_measured": forward,
                "syncs_measured_backward": backward, "training_passes": self.state.tp_passes,
                "num_parameters": self.model.num_parameters()}

    def _finish(self, reason: str | None, stopped_early: str | None, wall_seconds: float) -> dict:
        st = self.state
        success = reason is None
        snapshots, hostnames = self._gather_comm()
        communication = summarize(snapshots, st.tokens_seen)
        if success:
            with self.strategy.scored_model(self.model) as scored:
                # real tensor parallelism: every rank sends its shards, rank 0 writes the whole model
                model_state = full_state_dict(self.model, lambda calls, nbytes: self.comm.record("checkpoint", calls, nbytes))
                if self.ctx.is_main:
                    checkpoint.save_final_model(
                        self.final_model_path, model_state, dataclasses.asdict(self.model_config),
                        {"scored_model": scored, "step": st.step, "seed": self.seed, "config_hash": self.config_hash,
                         "active_layers": depth_warm_state(st.step, self.model_config)[0]},
                    )
        git = git_state()
        seconds = st.train_time_ms / 1000.0
        mfu = None
        if self.peak_flops and seconds > 0:
            mfu = round(st.flops / seconds / (self.peak_flops * self.ctx.world_size), 5)
        result = {
            "study": self.cfg.get("study"),
            "stage": self.cfg.get("stage"),
            "variant": self.cfg.get("variant"),
            "seed": self.seed,
            "run_id": self.cfg.get("run_id"),
            "stage_seed_offset": self.cfg.get("stage_seed_offset"),
            "dataset": self.cfg.get("dataset"),
            "success": success,
            "reason": reason,
            "stopped_early": stopped_early,
            "final_step": st.step,
            "num_iterations": self.train_cfg["num_iterations"],
            "num_tokens": self.train_cfg.get("num_tokens"),
            "schedule_progress": schedule_progress(st.step, self.train_cfg["num_iterations"], st.schedule_ms / 1000.0,
                                                   self.budget_s),
            "final_val_loss": st.last_val_loss if success else None,
            "final_val_loss_workers": st.last_val_loss_workers if success else None,
            "final_train_loss": st.last_train_loss if math.isfinite(st.last_train_loss) else None,
            "time_seconds": round(wall_seconds, 3),
            "train_time_ms": round(st.train_time_ms, 3),
            "tokens_seen": st.tokens_seen,
            "flops": st.flops,
            "tokens_per_s": round(st.tokens_seen / seconds, 1) if seconds > 0 else None,
            "mfu": mfu,
            "peak_flops": self.peak_flops,
            "num_parameters": self.model.num_parameters(),
            "world_size": self.ctx.world_size,
            "strategy": self.train_cfg["strategy"]["name"],
            "communication": communication,
            "bytes_per_token": communication["bytes_per_token"],
            "tensor_parallel": self._tensor_parallel_record(),
            "compile": self.compile_stats(),
            "slurm_job_id": slurm_job_id(),
            "hostname": platform.node(),
            "hostnames": hostnames,  # of every rank, in rank order (a multi-node run names each node)
            "device": str(self.ctx.device),
            "device_name": self.device_name,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "config_hash": self.config_hash,
            "config": {"model": self.cfg.get("model"), "train": self.train_cfg},
            "model_file": self.final_model_path.name if success else None,
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
            "end_time": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        if st.continued is not None:  # only continued runs (stages.<S>.continue_from) have the key
            result["continued_from"] = st.continued
        if self.ctx.is_main:  # (the gather above means every rank is past its last checkpoint)
            if git["diff"]:
                write_text_atomic(self.out_dir / "git_diff.patch", git["diff"])
            self.metrics.finish()
            write_json_atomic(self.out_dir / "result.json", result)
            checkpoint.remove(self.out_dir)  # a finished run's rerun trains afresh
            status = "finished" if success else f"FAILED ({reason})"
            self.log(f"{status}: final val_loss {result['final_val_loss']}, {wall_seconds:.1f} s")
        return result
