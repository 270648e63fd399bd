"""Warm start, the Snakemake and launcher side: start / stop the server, ask it for a trainer.

The Snakefile's ``onstart`` calls :func:`start_server` (when :func:`why_not_start` says yes);
each job's launcher calls :func:`run_trainer`, which sends its arguments, environment and
stdio file descriptors over a Unix socket and forwards signals to the forked trainer.
Torch-free (the Snakemake process imports it). The server is :mod:`workflow.jobs.warm_server`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workflow.core.steps import WARM_STEP
from workflow.jobs.fingerprint import fingerprint

SOCKET_ENV = "STAGERUN_WARM_SOCKET"
PID_ENV = "STAGERUN_WARM_PID"
READY_WAIT_S = 120.0  # longest a client waits for a server that is still importing torch
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
REQUEST_HEADER = struct.Struct("!Q")  # length of the JSON request that follows the header
MAX_REQUEST_BYTES = 64 << 20


# --------------------------------------------------------------------------- Snakemake's side

class ServerHandle:
    """A running warm server (:func:`start_server`); :meth:`stop` ends it and removes its socket."""

    def __init__(self, proc: subprocess.Popen, socket_dir: str, log: Path) -> None:
        self.proc, self.socket_dir, self.log = proc, socket_dir, log
        self.socket = os.path.join(socket_dir, "warm.sock")
        self.environ = {SOCKET_ENV: self.socket, PID_ENV: str(proc.pid)}  # what points a job at it

    def wait_ready(self, timeout_s: float = READY_WAIT_S) -> float:
        """Block until the server listens (its socket exists); returns the seconds waited.

        Raises:
            RuntimeError: the server ended first (its log's tail in the message).
            TimeoutError: not ready within ``timeout_s``.
        """
        start = time.monotonic()
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"warm server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"warm server not ready after {timeout_s:.0f} s (log: {self.log})")
            time.sleep(0.02)
        return time.monotonic() - start

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM the server, wait for it (it waits for running trainers), remove the socket folder.

        Returns the server's exit status (None if it had to be killed after ``timeout_s``).
        """
        status = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        for key, value in self.environ.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        return status


def start_server(log: str | os.PathLike, python: str = sys.executable, export: bool = True) -> ServerHandle:
    """Start ``python -m workflow.warm serve`` and point this process's future children at it.

    Does not wait for it: it imports torch in the background, and the first client waits for
    its socket.

    Args:
        log: the server's log (created; its folder too).
        python: the interpreter (the one running Snakemake).
        export: set :data:`SOCKET_ENV` and :data:`PID_ENV` in ``os.environ`` (Snakemake's jobs
            inherit them); otherwise give :attr:`ServerHandle.environ` to the jobs yourself.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    # A socket's path is at most 107 bytes: a long $TMPDIR (cluster scratch) gives way to /tmp.
    socket_dir = tempfile.mkdtemp(prefix="stagerun-warm-", dir="/tmp" if len(tempfile.gettempdir()) > 60 else None)
    sock = os.path.join(socket_dir, "warm.sock")
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "-m", WARM_STEP, "serve", "--socket", sock, "--parent", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=package_root, start_new_session=True)
    handle = ServerHandle(proc, socket_dir, log)
    if export:
        os.environ.update(handle.environ)
    return handle


def why_not_start(mode: str, local_exec: bool, has_training: bool, has_gpu: bool) -> str | None:
    """Why a ``snakemake`` invocation starts no warm server (None: it starts one).

    Args:
        mode: the study's ``warm_start``: ``auto``, ``on`` or ``off`` (YAML may give ``on`` and
            ``off`` as booleans: True is on, False is off).
        local_exec: Snakemake runs jobs on this machine (``workflow.local_exec``).
        has_training: training jobs, or gates that add them, are among the jobs to run.
        has_gpu: this machine has an NVIDIA GPU.
    """
    if mode in ("off", False):
        return "the study sets warm_start: off"
    if not local_exec:
        return "jobs run through a cluster executor"
    if not has_training:
        return "no training job to run"
    if mode not in ("on", True) and has_gpu:
        return "an NVIDIA GPU is present (warm_start: on forks CUDA trainers too)"
    return None


# --------------------------------------------------------------------------- client

def _server_alive() -> bool:
    try:
        os.kill(int(os.environ[PID_ENV]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _connect(path: str, wait_s: float) -> socket.socket | None:
    """Connect to the server's socket, waiting up to ``wait_s`` while the server starts."""
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline or not _server_alive():
                return None
            time.sleep(0.05)
        except OSError:
            sock.close()
            return None


def _say(message: str) -> None:
    print(f"launch: warm start: {message}", file=sys.stderr, flush=True)


def run_trainer(trainer_argv: list[str], early=None, wait_s: float = READY_WAIT_S) -> int | None:
    """Run ``python -m workflow.train *trainer_argv`` as a fork of the warm server, if there is one.

    Args:
        trainer_argv: the trainer's arguments.
        early: the launcher's :class:`workflow.jobs.trainer_process.EarlySignals` (a preemption signal that
            came before: 75 at once); None if there is none.
        wait_s: longest wait for a server that is still starting.
    Returns:
        The trainer's exit status (0, 1, 75; 128 + s when signal s killed it), or None when
        there is no usable server (then the caller runs the trainer itself; the reason is in the
        log when a server was meant to be there).
    """
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _say(f"file descriptor {fd} is closed; starting fresh")
            return None
    conn = _connect(path, wait_s)
    if conn is None:
        _say(f"no server at {path}; starting fresh")
        return None
    request = json.dumps({"argv": list(trainer_argv), "cwd": os.getcwd(), "env": dict(os.environ),
                          "umask": _umask(), "fingerprint": fingerprint()}).encode()
    try:
        socket.send_fds(conn, [REQUEST_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        replies = conn.makefile("rb")
        reply = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError) as err:
        conn.close()  # (the reply file, if any, goes with this frame)
        _say(f"request failed ({err}); starting fresh")
        return None
    if "pid" not in reply:
        replies.close()
        conn.close()
        _say(f"server refused ({reply.get('refused', 'no answer')}); starting fresh")
        return None
    pid = int(reply["pid"])
    _say(f"trainer is pid {pid}, forked by the server (pid {os.environ.get(PID_ENV)})")

    def forward(signum, frame=None):  # noqa: ARG001 (signal handler signature)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    if early is not None and early.signum is not None:  # came while the request was on its way
        forward(early.signum)
    try:
        line = replies.readline()
        status = json.loads(line)["exit"] if line else None
    except (OSError, ValueError, KeyError):
        status = None
    finally:
        replies.close()
        conn.close()
    if status is None:  # the server died: the trainer must not outlive this job
        kill_trainer(pid)
        _say(f"the server ended before trainer pid {pid}; killed it")
        return 1
    return int(status)


def kill_trainer(pid: int) -> None:
    """SIGKILL a forked trainer: its process group (it is a session leader), and the process
    itself in case it has not called ``setsid`` yet."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
