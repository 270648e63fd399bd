"""The command of a training job whose variant is the user's own script (torch-free).

CLI (what rules/train.smk runs for a run whose resolved ``trainer`` has a script or command)::

    python -m workflow.jobs.script_runner [--nproc-per-node N] [--nodes M --cpus-per-proc C] [--gpus G]
        --log results/.../train.log --run-config '<json>' --out-dir DIR --meta META [--threads T]

``--run-config`` is the run's resolved config (workflow.study.resolve.run_config) with its ``trainer``
paths absolute (rules/checks.smk). What it does:

1. **Log**: every attempt writes its own ``train.attempt-N.log``; ``train.log`` links to the
   latest (workflow.jobs.job_common.open_attempt_log). The script's stdout and stderr go into it whole,
   in the order written (one pipe).
2. **Start**: ``python script args`` (launcher python), ``torchrun --standalone --nproc_per_node
   N script args`` (torchrun), or the ``command`` line (command), in ``trainer.workdir``, never
   through a shell. Several nodes: ``srun`` with one task per process (python) or one torchrun
   per node with a c10d rendezvous on the first node (torchrun). Placeholders are expanded
   (workflow.study.trainer_section); the environment gets ``STAGE_<KEY>``, ``STAGERUN_*`` and
   ``trainer.env``; ``PYTHONUNBUFFERED=1`` (so lines arrive while they are printed) and
   ``OMP_NUM_THREADS`` = ``--threads`` unless the job's environment sets them.
3. **Capture** (workflow.jobs.capture): every output line and every row appended to
   ``$STAGERUN_METRICS`` as they come; rows go to ``metrics.partial.jsonl`` while the script runs.
4. **Signals**: SIGTERM, SIGUSR1 and SIGINT are forwarded, as received, to the script's
   process group (it runs in a session of its own). After such a signal, or when the script
   exits 75 by itself, the job exits **75 (preempted)** and writes no result: the captured rows
   and the attempt's time are kept (``script_state.json``), and the rerun continues them
   (a script that checkpoints in ``{out_dir}`` resumes; the first row it logs again replaces the
   earlier attempts' rows from that step on).
5. **Result**: ``metrics.jsonl`` (the built-in trainer's schema) and ``result.json`` with
   ``success`` and ``reason``. Failures are results (the job exits 0 so the DAG goes on, as for a
   diverged run): the script exited non-zero (its status and the log's last lines), it exited 0
   but no val_loss was captured (the preset or patterns and the log's last lines), or a captured
   loss is NaN/inf. result.json also records ``final_val_loss`` (the last captured val_loss),
   ``final_step``, ``time_seconds`` (wall time, summed over attempts), the script's and the
   inputs' sha256, the exact command, the environment's *names* (never values), the git commit of
   the script's repository and its diff (``script_git_diff.patch``), and FLOPs only where the
   script reports tokens or flops (or the study gives ``tokens_per_step`` / ``flops_per_token``):
   otherwise ``flops`` is None ("unknown").

Warm start (workflow.jobs.warm_client) never applies to scripts. Exit status: 0 (a result was written),
75 (preempted), 2 (bad arguments or a run config that cannot start the script).
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from workflow.jobs.capture import LiveRows, MetricsCapture
from workflow.jobs.job_common import srun_prefix
from workflow.study.script_files import placeholder_values, split_files  # noqa: F401 (the job's API)
from workflow.study.trainer_section import (
    TrainerConfigError,
    command_line,
    expand,
    stage_env,
    stagerun_env,
)

FORWARD_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
TAIL_LINES = 20
STATE_FILE = "script_state.json"
PARTIAL_FILE = "metrics.partial.jsonl"
SCRIPT_METRICS_FILE = "script_metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
RDZV_PORT = 29400
#: seconds between SIGTERM and SIGKILL when a script reaches its time limit
KILL_GRACE_S = 10.0
#: seconds the runner keeps reading after the script exited, while its children hold the output pipe
PIPE_GRACE_S = 3.0
#: seconds the runner lets a script's output gather before reading it (capture latency; one wake-up
#: per batch instead of per line keeps the capture's cost per line small: bench/bench_script_capture.py)
BATCH_S = 0.02


#: a captured output line (and each line a failure reason quotes) is cut to this many characters
LINE_CHARS = 1000
#: an output line without end longer than this is cut while it is read (bounded memory)
PENDING_BYTES = 1 << 16
_LINE_END = re.compile(rb"\r\n|\r|\n")
_CUT_BYTES = b" [... cut]"


def cut_line(line: str, limit: int = LINE_CHARS) -> str:
    """``line`` cut to ``limit`` characters with a marker saying how many more there were."""
    if len(line) <= limit:
        return line
    if line.endswith(_CUT_BYTES.decode()):
        return line[:limit] + f" [... line cut at {limit} characters]"
    return line[:limit] + f" [... {len(line) - limit} more characters cut]"


# --------------------------------------------------------------------------- the command

def launch_prefix(launcher: str, python: str, res: dict) -> list[str]:
    """What comes before the script (launchers python / torchrun):

    - python, one node: nothing (the command starts with the interpreter);
    - python, several nodes: ``srun`` with one task per process (workflow.jobs.job_common.srun_prefix);
    - torchrun, one node: ``python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node N``;
    - torchrun, several nodes: ``srun`` with one task per node, each a torchrun with a c10d
      rendezvous on the allocation's first node (``SLURM_JOB_NODELIST`` via ``scontrol``).

    Raises:
        TrainerConfigError: launcher python with several processes per node; several nodes
            outside a SLURM allocation.
    """
    nproc, nodes = res["nproc_per_node"], res["nodes"]
    if launcher == "python":
        if nproc > 1 and nodes == 1:
            raise TrainerConfigError(
                f"launcher python runs one process, but the stage asks for nproc_per_node {nproc}: use launcher torchrun")
        return [] if nodes == 1 else srun_prefix(nodes, nproc, res["cpus_per_proc"], bool(res["gpus"]))
    torchrun = [python, "-m", "torch.distributed.run"]
    if nodes == 1:
        return [*torchrun, "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc)]
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise TrainerConfigError(f"torchrun on {nodes} nodes needs a SLURM allocation (SLURM_JOB_NODELIST is not set)")
    head = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                          check=True, timeout=60).stdout.split()[0]
    job = os.environ.get("SLURM_JOB_ID", "stagerun")
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={nproc * res['cpus_per_proc']}",
            "--kill-on-bad-exit=1", *torchrun, "--nnodes", str(nodes), "--nproc_per_node", str(nproc),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{head}:{RDZV_PORT}", "--rdzv_id", job]


def full_command(run_cfg: dict, values: dict, res: dict) -> list[str]:
    """The whole command line of the run (launcher prefix + the script's own command)."""
    trainer = run_cfg["trainer"]
    python = trainer.get("python") or sys.executable
    launcher = trainer.get("launcher", "python")
    own = command_line(trainer, values, python)
    if launcher == "command":
        return own
    prefix = launch_prefix(launcher, python, res)
    if launcher == "torchrun":
        return [*prefix, *own[1:]]  # torchrun takes the script, not the interpreter
    return [*prefix, *own]


def script_env(run_cfg: dict, values: dict, threads: int) -> tuple[dict, list[str]]:
    """(the script's environment, the names stagerun set in it, sorted): the job's environment,
    ``STAGE_<KEY>``, ``STAGERUN_*``, ``trainer.env`` expanded (later wins), ``PYTHONUNBUFFERED``
    and ``OMP_NUM_THREADS`` unless already set."""
    trainer = run_cfg["trainer"]
    own = {**stage_env(run_cfg["train"]), **stagerun_env(values)}
    for key, value in (trainer.get("env") or {}).items():
        own[key] = expand(value, values) if isinstance(value, str) else str(value)
    env = {**os.environ, **own}
    env.pop("STAGERUN_EXIT_DIR", None)  # the built-in launcher's, not the script's
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads > 0:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env, sorted(own)


# --------------------------------------------------------------------------- running

def fresh_run_dir(out_dir: Path, log: Path | None, attempt: int) -> None:
    """Prepare the run folder for ``attempt``. A fresh run (attempt 1) keeps nothing of an
    earlier (finished or abandoned) run: its rows, metrics file, checkpoints and attempt logs
    (``{stem}.attempt-N.log``) go, so the logs and result.json's ``attempts`` agree. A resumed
    attempt keeps them (the script's rows of earlier attempts are in the partial file already)."""
    (out_dir / SCRIPT_METRICS_FILE).unlink(missing_ok=True)
    if attempt == 1:
        (out_dir / PARTIAL_FILE).unlink(missing_ok=True)
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        if log is not None:
            log = Path(log)
            for stale in log.parent.glob(f"{log.stem}.attempt-*{log.suffix}"):
                stale.unlink(missing_ok=True)
    (out_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)


class Forwarder:
    """Forwards SIGTERM / SIGUSR1 / SIGINT to the script's process group (each as received).
    Signals before the script starts are recorded (the job then ends with 75 at once)."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.received: list[int] = []
        for sig in FORWARD_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.pgid is None:
            print(f"script_runner: {name} before the script started", file=sys.stderr, flush=True)
            return
        print(f"script_runner: {name}: forwarded to the script's process group {self.pgid}", file=sys.stderr, flush=True)
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            pass

    @property
    def preempted(self) -> bool:
        return any(s in (*PREEMPT_SIGNALS, signal.SIGINT) for s in self.received)


def _die_with_parent() -> None:
    """preexec: the script's session gets SIGKILL when this process dies (Linux prctl)."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Limits:
    """The local limits of a script run: ``time_limit_s`` (None: none) of wall time, after which
    the script's process group gets SIGTERM, then SIGKILL after ``grace_s``; after the script
    exits, its children holding the output pipe get ``pipe_grace_s`` before they are killed.
    ``reached`` is set when the time limit ended the script."""

    def __init__(self, time_limit_s: float | None = None, grace_s: float = KILL_GRACE_S,
                 pipe_grace_s: float = PIPE_GRACE_S) -> None:
        self.time_limit_s, self.grace_s, self.pipe_grace_s = time_limit_s, grace_s, pipe_grace_s
        self.reached = False
        self.children_killed = False

    def check(self, proc: subprocess.Popen, start: float, exited_at: float | None) -> tuple[bool, float | None]:
        """Act on the limits now; (stop reading the pipe, the time the script exited or None)."""
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None:
            if now - exited_at >= self.pipe_grace_s:  # children keep the pipe open: end them
                self.children_killed = _killpg(proc.pid, signal.SIGKILL)
                return True, exited_at
            return False, exited_at
        if self.time_limit_s is not None and now - start >= self.time_limit_s:
            if not self.reached:
                self.reached = True
                print(f"script_runner: time limit of {self.time_limit_s / 60:g} min reached: SIGTERM to the script's "
                      f"process group (SIGKILL in {self.grace_s:g} s)", file=sys.stderr, flush=True)
                _killpg(proc.pid, signal.SIGTERM)
            elif now - start >= self.time_limit_s + self.grace_s:
                _killpg(proc.pid, signal.SIGKILL)
        return False, exited_at


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def run_script(cmd: list[str], cwd: str, env: dict, capture: MetricsCapture, metrics_file: Path,
               live: LiveRows, forwarder: Forwarder, tail: collections.deque, limits: Limits | None = None) -> int:
    """Run ``cmd`` in its own session, copy its output to this process's stdout (the attempt
    log) and feed the capture; returns its exit status (negative: killed by that signal).
    ``limits``: the time limit and the grace for children that hold the output pipe (:class:`Limits`)."""
    limits = limits or Limits()
    start, exited_at = time.monotonic(), None
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    forwarder.pgid = proc.pid
    for signum in forwarder.received:  # came while it was starting
        os.killpg(proc.pid, signum)
    out_fd, pipe = sys.stdout.fileno(), proc.stdout.fileno()
    os.set_blocking(pipe, False)
    pending = b""
    metrics_pos, metrics_pending = 0, b""
    next_tail = 0.0
    busy = False

    metrics_inode, metrics_head = None, b""

    def read_metrics_file() -> None:
        nonlocal metrics_pos, metrics_pending, metrics_inode, metrics_head
        try:
            with open(metrics_file, "rb") as handle:
                stat = os.fstat(handle.fileno())
                # replaced (another inode), truncated (shorter) or rewritten (its first bytes differ):
                # read it again from its start
                if (stat.st_ino != metrics_inode or stat.st_size < metrics_pos
                        or handle.read(len(metrics_head)) != metrics_head):
                    if metrics_inode is not None:
                        print("script_runner: $STAGERUN_METRICS was truncated or replaced: read again from its start",
                              file=sys.stderr, flush=True)
                        capture.restart_source("json")
                    metrics_inode, metrics_pos, metrics_pending, metrics_head = stat.st_ino, 0, b"", b""
                handle.seek(metrics_pos)
                data = handle.read()
                metrics_pos += len(data)
                if len(metrics_head) < 256:
                    handle.seek(0)
                    metrics_head = handle.read(min(256, metrics_pos))
        except FileNotFoundError:
            return
        lines = (metrics_pending + data).split(b"\n")
        metrics_pending = lines.pop()
        for line in lines:
            warning = capture.feed_json(line.decode("utf-8", "replace"))
            if warning:
                print(f"script_runner: {warning}", file=sys.stderr, flush=True)

    while True:
        try:
            ready, _, _ = select.select([pipe], [], [], 0.5)
        except InterruptedError:
            ready = []
        eof = False
        if ready:
            if not busy:
                time.sleep(BATCH_S)  # let lines gather: one wake-up per batch, not per printed line
            chunks = []
            while True:
                try:
                    chunk = os.read(pipe, 1 << 16)
                except BlockingIOError:
                    break
                if chunk == b"":
                    eof = True
                    break
                chunks.append(chunk)
            busy = sum(map(len, chunks)) >= 1 << 15  # a burst: read again at once, the pipe is filling
            if chunks:
                data = b"".join(chunks)
                view = memoryview(data)
                while view:  # the attempt log keeps the output whole
                    view = view[os.write(out_fd, view):]
                lines = _LINE_END.split(pending + data)  # \r too: progress bars redraw one line
                pending = lines.pop()
                if len(pending) > PENDING_BYTES:  # a line without end: keep its start, bounded
                    pending = pending[:LINE_CHARS * 4] + _CUT_BYTES
                for raw in lines:
                    line = cut_line(raw.decode("utf-8", "replace"))
                    tail.append(line)
                    capture.feed_line(line)
        stop, exited_at = limits.check(proc, start, exited_at)
        eof = eof or stop
        now = time.monotonic()
        if eof or now >= next_tail:
            read_metrics_file()
            live.flush()
            next_tail = now + 0.5
        if eof:
            break
    if pending:
        line = cut_line(pending.decode("utf-8", "replace"))
        tail.append(line)
        capture.feed_line(line)
    status = proc.wait()
    read_metrics_file()
    if metrics_pending.strip():  # a last row without its newline
        capture.feed_json(metrics_pending.decode("utf-8", "replace"))
    return status
