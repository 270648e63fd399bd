"""Warm start: training jobs start as forks of one process that has already imported torch.

Why: before its first step, every training process pays ~2 s for ``import torch`` and ~2 s
more for torch's first optimizer (torch.optim imports ``torch._dynamo`` in torch 2.13), on
the 2-core machine of docs/performance.md. One fresh process per job cannot go below that
floor, and short screening jobs spend most of their time there. A warm server pays it once per
``snakemake`` invocation; each training job then asks it to ``fork(2)``: a copy-on-write clone
with torch, the trainer and every strategy imported, which runs the job's trainer.

This is the zygote or fork-server pattern: Python's ``multiprocessing`` "forkserver" start
method (a server that preloads modules and forks on request), Android's zygote, Mercurial's
``chg``. Python's forkserver serves only the process that started it, and every Snakemake job is
a process of its own, so the protocol here is small and explicit: one Unix socket; per job one
request (JSON: the trainer's arguments, working folder, environment, umask) with the job's
stdin, stdout and stderr passed as file descriptors (``SCM_RIGHTS``, :func:`socket.send_fds`);
the server answers one JSON line with the trainer's pid, and one with its exit status.

**Lifecycle** (``Snakefile``: ``onstart`` / ``onsuccess`` / ``onerror``): with ``warm_start:
auto`` (the default) the server runs for a ``snakemake`` invocation that executes jobs locally
(not with ``--executor slurm``: there each job runs on its own node, inside SLURM's accounting),
has training jobs (or gates that add them) to run and no NVIDIA GPU; ``on`` also with a GPU
(the server never initializes CUDA, so its children may); ``off`` never. :func:`start_server`
sets :data:`SOCKET_ENV` and :data:`PID_ENV` in Snakemake's environment, which its jobs inherit.

**Client** (:func:`run_trainer`, called by ``workflow.launch`` for the single process of a job
and for each worker torchrun starts): when :data:`SOCKET_ENV` is set, it waits for the server
to be ready, sends the request and then forwards
SIGTERM, SIGUSR1 and SIGINT to the trainer (same signal: a preemption checkpoints and exits 75
as in a fresh process). It returns the trainer's exit status (128 + s when signal s killed it).
It returns ``None`` (the launcher then runs the trainer in its own process, as without a
server) when there is no server, the server is gone, or it refuses the request.

**Same results as a fresh process.** The server computes a fingerprint before it imports
anything: the interpreter, the ``workflow`` package's folder and every ``.py`` file's path,
size and modification time in it, and the environment variables torch reads at import time
(``TORCH_*``, ``TORCHDYNAMO_*``, ``TORCHINDUCTOR_*``, ``PYTORCH_*``, ``KMP_*``,
``CUDA_VISIBLE_DEVICES``, ``LD_PRELOAD``, ``LD_LIBRARY_PATH``, ``PYTHONHASHSEED``; not
``TORCH_NCCL_*``, ``TORCH_DISTRIBUTED_*``, ``TORCHELASTIC_*``, which torch reads when the
process group starts, after the fork, and which torchrun sets for its workers), and
``SLURM_JOB_ID``: a trainer stays inside the SLURM job of the launcher that asked for it, so a
server started inside an ``salloc`` serves that allocation's jobs only. A request
whose fingerprint differs (the code was edited while Snakemake ran, another checkout, another
environment) is refused, and that job starts fresh. A child replaces its environment, working
folder and umask by the job's, sets torch's threads from ``OMP_NUM_THREADS`` (what a fresh
process would have read at import; ``--threads`` still wins), runs ``python -m
workflow.train`` exactly as the launcher does, and runs the ``atexit`` handlers at the end as
an interpreter would. The server itself runs no torch operation (so no OpenMP pool exists to
break in a fork). Tests check identical losses warm and fresh (one process; DiLoCo and gossip
with 2 gloo workers; real tensor parallelism with 4), and across a SIGTERM and a resume.

**Nothing is left behind.** A child is its own session (``setsid``). When a job's client dies
(SIGKILL: its connection closes), the server kills the child's process group at once; when the
server dies, every client kills its child. The server stops on SIGTERM (``onsuccess`` /
``onerror``) or when Snakemake, its parent, is gone: it accepts no more requests and exits once
its children have ended. The socket lives in a private ``mkdtemp`` folder (mode 0700), and the
server accepts only connections from its own user (``SO_PEERCRED``).

CLI: ``python -m workflow.warm serve --socket PATH [--parent PID]`` (what :func:`start_server`
runs; its output is the server's log).
"""

from __future__ import annotations

import argparse
import sys

from workflow.jobs.warm_server import Server


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``serve``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workflow.warm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the warm server (Snakefile's onstart does this)")
    serve.add_argument("--socket", required=True, help="Unix socket path (created when ready)")
    serve.add_argument("--parent", type=int, help="pid of the process the server serves (default: its parent); "
                       "the server stops when that process is gone")
    args = parser.parse_args(argv)
    return Server(args.socket, args.parent).serve()


if __name__ == "__main__":
    sys.exit(main())
