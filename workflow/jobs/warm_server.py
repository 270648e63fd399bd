"""Warm start, the server: imports torch once, then forks each job's trainer (zygote pattern).

Started by :func:`workflow.jobs.warm_client.start_server` as ``python -m workflow.warm``; the
protocol, safety rules and measurements are in workflow/warm.py and docs/performance.md.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from workflow.jobs.fingerprint import fingerprint, fingerprint_mismatch
from workflow.jobs.trainer_process import EarlySignals, run_trainer_here
from workflow.jobs.warm_client import FORWARDED_SIGNALS, MAX_REQUEST_BYTES, REQUEST_HEADER, kill_trainer

# --------------------------------------------------------------------------- server

def _preload() -> None:
    """Import what every trainer imports (torch, the trainer, the strategies, torch._dynamo)."""
    # deferred heavy imports, the point of the server: what every trainer imports, once
    import torch  # deferred heavy import: torch
    import torch._dynamo  # noqa: F401  # deferred heavy import: what torch.optim's first optimizer imports

    import workflow.training.trainer  # noqa: F401  # deferred heavy import: the trainer, model, strategies

    del torch


def _child(request: dict, fds: list[int], close: list) -> None:
    """In the forked child: become the job's trainer process. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the server's wake-up socket is not this process's
        os.setsid()
        for thing in close:  # the listener, the selector, other jobs' connections and pidfds
            with contextlib.suppress(OSError):
                thing.close() if hasattr(thing, "close") else os.close(thing)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)

        early = EarlySignals()  # SIGTERM / SIGUSR1: recorded, then handed to the trainer
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with contextlib.suppress(OSError):  # `top` and `ps -o comm` show the trainer as one
            Path("/proc/self/comm").write_text("stagerun-train")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # signals forwarded meanwhile arrive now
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = ""  # as for `python -m` in the job's folder
        if os.environ.get("PYTHONUNBUFFERED"):  # what a fresh interpreter would read at start
            sys.stdout.reconfigure(write_through=True)
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            import torch  # deferred heavy import: torch (preloaded in the server; a dict lookup here)

            torch.set_num_threads(int(threads))
        early.hand_over()
        code = run_trainer_here(list(request["argv"]))
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 (a fresh process prints the traceback and exits 1)
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):  # what a fresh interpreter runs at exit (logging, W&B, ...)
            atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never back into the server's frames


class Server:
    """The warm server's event loop (single-threaded: fork from a process with no other Python
    thread). One selector watches the listening socket, each job's connection (EOF: the client
    died, kill its trainer) and each trainer's pidfd (readable: it ended, send its status)."""

    def __init__(self, path: str, parent: int | None = None) -> None:
        self.path = path
        self.fingerprint = fingerprint()  # before the imports: an edit made meanwhile is seen as one
        self.parent = os.getppid() if parent is None else parent  # Snakemake: its pid, given by start_server
        self.stopping = False
        self.children: dict[int, tuple[socket.socket, int]] = {}  # pid -> (connection, pidfd)
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.wake_r, self.wake_w = socket.socketpair()  # signal.set_wakeup_fd: SIGTERM wakes select

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} warm server {os.getpid()}: {message}", flush=True)

    def serve(self) -> int:
        start = time.perf_counter()
        try:  # a child's end is watched through its pidfd (Linux >= 5.3)
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError) as err:
            self.log(f"cannot serve: no pidfd_open on this system ({err}); jobs start fresh")
            return 1
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        signal.signal(signal.SIGTERM, self._on_stop)  # also while importing: then it stops right after
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the jobs; Snakemake then stops us
        _preload()
        if self.stopping:
            self.log("stopped before it was ready")
            return 0
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = f"{self.path}.{os.getpid()}"
        listener.bind(staging)
        listener.listen(64)
        os.rename(staging, self.path)  # the socket appears only once the server is ready
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, ("listener", None))
        self.log(f"ready in {time.perf_counter() - start:.2f} s (torch, trainer and strategies imported); "
                 f"socket {self.path}")
        while True:
            if os.getppid() != self.parent and not self.stopping:
                self.log("Snakemake is gone: stopping")
                self._stop_accepting()
            if self.stopping and not self.children:
                self.log("stopped")
                return 0
            for key, _ in self.selector.select(timeout=1.0):
                kind, pid = key.data
                if kind == "listener":
                    self._accept()
                elif kind == "child":
                    self._reap(pid)
                elif kind == "client":
                    self._client_event(pid)
                elif kind == "wake":
                    with contextlib.suppress(BlockingIOError):
                        self.wake_r.recv(4096)
            if self.stopping and self.listener is not None:
                self._stop_accepting()

    def _on_stop(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        self.stopping = True

    def _stop_accepting(self) -> None:
        self.stopping = True
        if self.listener is not None:
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):  # its private folder (start_server's mkdtemp), if empty now
                os.rmdir(os.path.dirname(self.path))

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(30)
        fds: list[int] = []
        try:
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            header, fds, _, _ = socket.recv_fds(conn, REQUEST_HEADER.size, 3)
            if uid != os.getuid():
                raise ValueError(f"connection from uid {uid}")
            if len(header) != REQUEST_HEADER.size or len(fds) != 3:
                raise ValueError("malformed request header")
            size = REQUEST_HEADER.unpack(header)[0]
            if size > MAX_REQUEST_BYTES:
                raise ValueError(f"request of {size} bytes")
            body = bytearray()
            while len(body) < size:
                chunk = conn.recv(min(1 << 20, size - len(body)))
                if not chunk:
                    raise ValueError("request cut short")
                body += chunk
            request = json.loads(body)
            if not (isinstance(request, dict) and isinstance(request.get("argv"), list)
                    and isinstance(request.get("env"), dict) and isinstance(request.get("cwd"), str)
                    and isinstance(request.get("umask"), int)):
                raise ValueError("malformed request (argv, env, cwd, umask)")
            mismatch = fingerprint_mismatch(self.fingerprint, request.get("fingerprint") or {})
            if mismatch:
                raise ValueError(mismatch)
        except (OSError, ValueError) as err:
            self.log(f"refused a request: {err}")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"refused": str(err)}).encode() + b"\n")
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        self._fork(request, conn, fds)

    def _fork(self, request: dict, conn: socket.socket, fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        pid = os.fork()
        if pid == 0:
            close = [self.selector, self.wake_r, self.wake_w, *([self.listener] if self.listener else []), conn]
            for other_conn, pidfd in self.children.values():
                close += [other_conn, pidfd]
            _child(request, fds, close)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (conn, pidfd)
        conn.settimeout(None)
        self.selector.register(pidfd, selectors.EVENT_READ, ("child", pid))
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        argv = request["argv"]
        out_dir = argv[argv.index("--out-dir") + 1] if "--out-dir" in argv else "?"
        self.log(f"forked trainer {pid} for {out_dir} (rank {request['env'].get('RANK', '0')})")

    def _client_event(self, pid: int) -> None:
        conn, _ = self.children[pid]
        try:
            data = conn.recv(1)
        except OSError:
            data = b""
        if not data:  # the job's client is gone: its trainer must go too
            self.log(f"the client of trainer {pid} is gone: SIGKILL to it")
            self.selector.unregister(conn)
            kill_trainer(pid)

    def _reap(self, pid: int) -> None:
        conn, pidfd = self.children.pop(pid)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        self.selector.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        conn.close()
        self.log(f"trainer {pid} exited {code}")
