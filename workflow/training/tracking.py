"""Optional Weights & Biases logging of a training run (``metrics.jsonl`` stays the source of truth).

Config (study ``wandb`` section, copied into every run config by workflow.study.resolve.run_config)::

    wandb: {mode: disabled | offline | online, project: stagerun, entity: null}

- ``disabled`` (default): nothing happens and ``wandb`` is never imported.
- ``offline``: the run is written below ``$WANDB_DIR`` (default: the run's out dir, folder
  ``wandb/``); sync later with ``wandb sync``. No API key is needed; ``WANDB_API_KEY`` is
  removed from the environment of this process before ``wandb.init`` so it cannot end up in
  any file wandb writes.
- ``online``: wandb reads the key from the environment variable ``WANDB_API_KEY`` itself.
  The key is never passed as an argument, never written to a config, log, netrc or report
  (``wandb.login`` is not called: it would store the key in ``~/.netrc``).

Run name ``{study}-{stage}-{variant}-s{seed}``, group ``{study}-{stage}`` (one group per stage,
so the seeds of a stage are aggregated in the W&B UI). Only global rank 0 logs.

Source: https://docs.wandb.ai/ref/python/init (mode, dir, group, name, config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

MODES = ("disabled", "offline", "online")
API_KEY_ENV = "WANDB_API_KEY"


def run_name(run_cfg: Mapping[str, Any]) -> str:
    """``{study}-{stage}-{variant}-s{seed}`` of a resolved run config."""
    return f"{run_cfg.get('study')}-{run_cfg.get('stage')}-{run_cfg.get('variant')}-s{run_cfg.get('seed')}"


def run_group(run_cfg: Mapping[str, Any]) -> str:
    """``{study}-{stage}``: the W&B group of all runs of one stage."""
    return f"{run_cfg.get('study')}-{run_cfg.get('stage')}"


def _scrub(value: Any, secret: str | None) -> Any:
    """Copy of a JSON-like value with any string containing ``secret`` replaced."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "<redacted>")
    if isinstance(value, Mapping):
        return {k: _scrub(v, secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, secret) for v in value]
    return value


class Tracker:
    """W&B run of one training process (a no-op unless ``mode != disabled`` and rank 0).

    Args:
        run_cfg: the resolved run config (its ``wandb`` section selects the mode).
        out_dir: the run's output folder; the default W&B dir is ``out_dir`` (``out_dir/wandb``).
        is_main: only the main process (global rank 0) logs.
    Raises:
        ValueError: ``wandb.mode`` not one of disabled / offline / online (names the key).
        ImportError: mode offline/online but the ``wandb`` package is not installed.
    """

    def __init__(self, run_cfg: Mapping[str, Any], out_dir: str | os.PathLike, is_main: bool = True):
        section = dict(run_cfg.get("wandb") or {})
        self.mode = section.get("mode") or "disabled"
        if self.mode not in MODES:
            raise ValueError(f"wandb.mode: {self.mode!r} is not one of {list(MODES)}")
        self.run = None
        if self.mode == "disabled" or not is_main:
            return
        secret = os.environ.get(API_KEY_ENV)
        if self.mode == "offline":
            os.environ.pop(API_KEY_ENV, None)  # not needed offline; keeps it out of every file
        import wandb  # deferred heavy import: wandb, only now: disabled runs never import it

        wandb_dir = Path(os.environ.get("WANDB_DIR") or out_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        config = _scrub({k: v for k, v in run_cfg.items()}, secret)
        self.run = wandb.init(
            mode=self.mode,
            project=section.get("project") or "stagerun",
            entity=section.get("entity"),
            name=run_name(run_cfg),
            group=run_group(run_cfg),
            job_type=str(run_cfg.get("stage")),
            config=config,
            dir=str(wandb_dir),
            reinit="finish_previous",
        )

    @property
    def active(self) -> bool:
        """True when rows are sent to W&B."""
        return self.run is not None

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one metrics row (``step`` becomes the W&B step; None values are dropped)."""
        if self.run is None:
            return
        data = {k: v for k, v in row.items() if v is not None and k != "step"}
        self.run.log(data, step=int(row["step"]))

    def finish(self, summary: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        """Write scalar entries of ``summary`` to the run summary and close the run."""
        if self.run is None:
            return
        for key, value in (summary or {}).items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        self.run.finish(exit_code=exit_code)
        self.run = None
