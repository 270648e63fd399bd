"""A run's resumable state (:class:`RunState`), the preemption flag and per-step seeds.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import numpy as np


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed derived from (seed, step, stream): pure, identical on every rank."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class PreemptionFlag:
    """Set by SIGTERM / SIGUSR1; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        self.signal = signum


@dataclass
class RunState:
    """The counters and history of a run that are not a pure function of the step."""

    step: int = 0
    train_time_ms: float = 0.0
    tokens_seen: int = 0
    flops: float = 0.0
    val_history: list = field(default_factory=list)  # (step, val_loss) of every evaluation
    window_losses: list = field(default_factory=list)  # train losses since the last metrics row
    last_train_loss: float = float("nan")
    last_val_loss: float | None = None
    last_val_loss_workers: float | None = None  # mean of the workers' own models' (models_differ)
    lr_mult: float = 0.0
    seq_len: int = 0
    schedule_ms: float = 0.0  # training time the schedules follow: the workers' mean, identical on every rank
    # tensor-parallel collectives of the training passes (workflow.model.tp_blocks)
    tp_passes: int = 0
    tp_forward_calls: int = 0
    tp_backward_calls: int = 0
    # a continued run (stages.<S>.continue_from): what its source run trained before the branch
    continued: dict | None = None
