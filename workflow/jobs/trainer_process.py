"""The trainer inside the job's own process: signals that arrive while it starts, and running it.

:class:`EarlySignals` records SIGTERM / SIGUSR1 that land before the trainer installs its own
handler (during ``import torch``) and hands them over; :func:`run_trainer_here` runs
``python -m workflow.train`` in this process (runpy). Torch-free at import.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

from workflow.core.steps import TRAIN_STEP

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # the trainer's preemption flag (workflow.training.state.PreemptionFlag)


# --------------------------------------------------------------------------- starting the trainer

class EarlySignals:
    """Preemption signals (SIGTERM, SIGUSR1) that come before the trainer has its own handler.

    Installed first thing: a signal is only recorded (no exception is raised inside an import).
    Before the trainer starts, :attr:`signum` tells the launcher to end at once with 75 (nothing
    to save). Once :meth:`hand_over` was called (the trainer is starting in this process), a
    recorded signal is sent again as soon as the trainer has replaced this handler with its own,
    so the trainer checkpoints and exits 75 as for any preemption.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._hand_over = False
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        if self.signum is None:
            self.signum = signum
            print(f"launch: {signal.Signals(signum).name} while starting", file=sys.stderr, flush=True)
            if self._hand_over:
                self._redeliver()

    def hand_over(self) -> None:
        """From now on a signal goes on to the trainer's own handler once it is installed."""
        self._hand_over = True
        if self.signum is not None:
            self._redeliver()

    def _redeliver(self) -> None:
        def wait_then_send():
            while signal.getsignal(self.signum) == self._handle:  # the trainer installs its handler soon
                time.sleep(0.05)
            os.kill(os.getpid(), self.signum)

        threading.Thread(target=wait_then_send, name="redeliver-signal", daemon=True).start()


def run_trainer_here(trainer_argv: list[str]) -> int:
    """Run ``python -m workflow.train *trainer_argv`` in this process; returns its exit status.

    An exception in the trainer propagates (traceback, exit status 1), as it would there.
    """
    sys.argv = [TRAIN_STEP, *trainer_argv]
    try:
        runpy.run_module(TRAIN_STEP, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0
