"""Per-job overhead benchmark (not a test): a training job's wall time against the trainer's
own time, for every training job of a stage-A screen, as Snakemake would run them.

    .venv/bin/python bench/bench_job_overhead.py [--configfile config/config.yaml] [--stage A]
                                                 [--jobs N] [--json out.json]
    .venv/bin/python bench/bench_job_overhead.py --quick     # seconds: one job of the tiny test study (CI)

1. Tokenizes the study's dataset with the repository's Snakefile (``--config mirror=`` the
   shared data: ``$STAGERUN_SHARED_DATA`` or ``../shared/data``) in a temporary folder.
2. Takes the shell command of every training job of the stage from ``snakemake -n -p
   stage_<S>`` (whatever launcher the workflow uses: ``torchrun`` or a single process), and
   runs each one as Snakemake does (``bash -c``, from the working folder, this interpreter's
   environment first on PATH), one after the other, timing its wall clock.
3. Reads each run's ``result.json``: ``time_seconds`` (the trainer's wall time from the start
   of ``Trainer.run`` to the result, evaluations included) and ``train_time_ms`` (optimizer
   steps only).

Per job: ``overhead_s`` = job wall - time_seconds (interpreter and launcher start-up, imports,
set-up before the run and teardown after it: what is not the trainer's work) and
``non_training_s`` = job wall - train_time (also evaluations and checkpoints).

Every job runs twice, right after each other (alternating which goes first), so both sides
see the same load: **warm** (what a local ``snakemake`` run does: the job's trainer is a fork
of the warm server, workflow/warm.py, started here as the Snakefile's ``onstart`` starts it)
and **fresh** (the same command without a server: the trainer imports torch in its own
process; ``fresh`` in the JSON). The server's start-up (``warm_server_start_s``, once per
``snakemake`` call, shared by all its jobs) is timed on its own and also reported as part of
the screen (``overhead_share_with_server_start``).

Summary: the overhead's share of the screen's total job time, the mean overhead per job (target
<= 2 s), the ratio warm / fresh, and references measured in the same run: a bare
interpreter start, ``import torch`` in a fresh interpreter, and ``import torch`` plus the first
``torch.optim`` optimizer (which imports ``torch._dynamo`` in torch 2.13): the floor of any
fresh training process.

When the workflow launches single-process jobs through ``torchrun``, every job also runs,
right after, as one plain process (``python -m workflow.train ...``, same arguments, its own
output folder): ``single_process`` in the JSON. With ``--compare-torchrun``, every job also
runs right after through ``torchrun --standalone --nproc_per_node 1 -m workflow.train`` (the
launch before warm starts; ``torchrun`` in the JSON). Prints one line per job and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from workflow.jobs import warm_client as warm  # noqa: E402 (torch-free)

SHARED = Path(os.environ.get("STAGERUN_SHARED_DATA") or REPO.parent / "shared" / "data")
TORCH_AND_OPTIMIZER = "import torch; torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])"


def job_env(extra: dict | None = None) -> dict:
    """The environment Snakemake gives a job: this interpreter's folder first on PATH, the
    repository on PYTHONPATH (rules/env.smk); ``extra``: the warm server's variables."""
    env = {k: v for k, v in os.environ.items() if k not in (warm.SOCKET_ENV, warm.PID_ENV)}
    return {**env, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            **(extra or {})}


def snakemake(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=job_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def train_commands(dry_run: str) -> list[str]:
    """Shell commands of the ``train`` jobs in a ``snakemake -n -p`` output, in order."""
    commands = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", dry_run):
        if not block.startswith("rule train:"):
            continue
        match = re.search(r"^Shell command: (.+)$", block, flags=re.M) or re.search(r"^\s{4}(\S.*-m workflow\.\S+.*)$", block, flags=re.M)
        if not match:
            raise RuntimeError(f"no shell command in the dry run's train job:\n{block[:2000]}")
        commands.append(match.group(1).strip())
    return commands


def timed(cmd: list[str] | str, cwd: Path, shell: bool = False, env: dict | None = None) -> float:
    start = time.perf_counter()
    if shell:
        subprocess.run(["bash", "-c", f"set -euo pipefail; {cmd}"], cwd=cwd, env=env or job_env(), check=True)
    else:
        subprocess.run(cmd, cwd=cwd, env=env or job_env(), check=True, capture_output=True)
    return time.perf_counter() - start


def run_job(cmd: str, work: Path, label: str, env: dict | None = None) -> dict:
    """Run one training job's command as Snakemake does; its wall time against result.json."""
    out_dir = work / re.search(r"--out-dir (\S+)", cmd).group(1)
    out_dir.mkdir(parents=True, exist_ok=True)  # Snakemake creates the output folders
    wall = timed(cmd, work, shell=True, env=env)
    result = json.loads((out_dir / "result.json").read_text())
    row = {
        "run": f"{result.get('variant')}/seed_{result.get('seed')}",
        "wall_s": round(wall, 3),
        "trainer_time_s": result["time_seconds"],
        "train_time_s": round(result["train_time_ms"] / 1000.0, 3),
        "overhead_s": round(wall - result["time_seconds"], 3),
        "non_training_s": round(wall - result["train_time_ms"] / 1000.0, 3),
    }
    print(f"{label:<17} {row['run']:<24} wall {row['wall_s']:6.2f} s  trainer {row['trainer_time_s']:6.2f} s  "
          f"steps {row['train_time_s']:6.2f} s  overhead {row['overhead_s']:5.2f} s", flush=True)
    return row


def screen_summary(jobs: list[dict]) -> dict:
    """Totals of a screen's jobs and the overhead's share of its job time."""
    wall = sum(j["wall_s"] for j in jobs)
    overhead = sum(j["overhead_s"] for j in jobs)
    return {
        "jobs": len(jobs),
        "screen_wall_s": round(wall, 2),
        "screen_trainer_s": round(sum(j["trainer_time_s"] for j in jobs), 2),
        "screen_train_steps_s": round(sum(j["train_time_s"] for j in jobs), 2),
        "overhead_per_job_mean_s": round(overhead / len(jobs), 3),
        "overhead_per_job_median_s": round(statistics.median(j["overhead_s"] for j in jobs), 3),
        "overhead_share_of_screen": round(overhead / wall, 4),
        "non_training_share_of_screen": round(sum(j["non_training_s"] for j in jobs) / wall, 4),
        "per_job": jobs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--stage", default="A")
    parser.add_argument("--jobs", type=int, default=None, help="time only the first N training jobs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compare-torchrun", action="store_true",
                        help="also run every single-process job through torchrun, right after (same run)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: the first training job of tests/configs/tiny.yaml (8 steps) only; "
                             "checks that the benchmark runs, the numbers mean little")
    args = parser.parse_args(argv)
    if args.quick:
        args.configfile, args.stage, args.jobs = REPO / "tests" / "configs" / "tiny.yaml", "A", 1

    with tempfile.TemporaryDirectory(prefix="bench_job_overhead_") as tmp:
        work = Path(tmp)
        config_args = ("--configfile", str(args.configfile.resolve()), "--config", f"mirror={SHARED}")
        # The data first (not timed), then the stage's training jobs as Snakemake would run them.
        dry = snakemake(work, "-n", "-p", "--cores", "1", f"stage_{args.stage}", *config_args)
        meta = re.search(r"(data/tokens/[^/\s]+/meta\.json)", dry)
        if meta:
            snakemake(work, "--cores", "1", meta.group(1), *config_args)
        commands = train_commands(dry)[: args.jobs]
        if not commands:
            raise RuntimeError("no training jobs in the dry run")

        references = {
            "python_start_s": min(timed([sys.executable, "-c", "pass"], work) for _ in range(3)),
            "import_torch_s": min(timed([sys.executable, "-c", "import torch"], work) for _ in range(2)),
            # torch.optim's Optimizer.add_param_group is wrapped by torch._disable_dynamo: the first
            # optimizer imports torch._dynamo (torch 2.13), a floor of every training process
            "import_torch_and_first_optimizer_s": min(timed([sys.executable, "-c", TORCH_AND_OPTIMIZER], work)
                                                      for _ in range(2)),
        }
        launcher = re.match(r"(.*?)\s-m workflow\.", commands[0]).group(1)
        single = "torch.distributed.run" in launcher and "--nproc_per_node 1" in launcher
        in_process = re.search(r"-m workflow\.launch --nproc-per-node 1 (?!.*--nodes)", commands[0]) is not None
        # The warm server, as Snakemake's onstart starts it; its start-up (torch imported once) is
        # timed on its own: once per `snakemake` invocation, shared by all its jobs.
        start = time.perf_counter()
        server = warm.start_server(work / "warm_server.log", export=False)
        try:
            server.wait_ready()
            server_start_s = time.perf_counter() - start
            jobs, fresh_jobs, single_jobs, torchrun_jobs = [], [], [], []
            for i, cmd in enumerate(commands):
                out_dir = re.search(r"--out-dir (\S+)", cmd).group(1)
                fresh = cmd.replace(out_dir, out_dir + "_fresh")
                pair = [("warm", cmd, job_env(server.environ), jobs), ("fresh", fresh, job_env(), fresh_jobs)]
                for label, command, env, rows in (pair if i % 2 == 0 else pair[::-1]):  # alternate who goes first
                    rows.append(run_job(command, work, label, env))
                log = (work / out_dir / "train.log").read_text() if (work / out_dir / "train.log").exists() else ""
                if in_process and "warm start: trainer is pid" not in log:
                    raise RuntimeError(f"the warm job did not start warm:\n{log[-2000:]}")
                if single:  # the same job as one plain process, right after (the same load)
                    plain = cmd.replace(launcher, "python", 1).replace(out_dir, out_dir + "_single")
                    single_jobs.append(run_job(plain, work, "single process"))
                if args.compare_torchrun and in_process:  # the same job through torchrun, right after
                    trainer_args = re.sub(r"^.*?-m workflow\.launch --nproc-per-node 1 (--log \S+ )?", " ", cmd)
                    trainer_args = trainer_args.replace(out_dir, out_dir + "_torchrun")
                    via_torchrun = ("python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 1 "
                                    f"-m workflow.train{trainer_args} > {shlex.quote(out_dir + '_torchrun')}/train.log 2>&1")
                    torchrun_jobs.append(run_job(via_torchrun, work, "torchrun"))
        finally:
            server.stop()

    out = {
        "bench": "job_overhead",
        "study": str(args.configfile),
        "stage": args.stage,
        "launcher": f"{launcher} (warm start)",
        **screen_summary(jobs),
        "target_overhead_per_job_s": 2.0,
        "warm_server_start_s": round(server_start_s, 3),
        **{k: round(v, 3) for k, v in references.items()},
        "load_avg": os.getloadavg()[0],
    }
    wall = out["screen_wall_s"] + server_start_s
    out["overhead_share_with_server_start"] = round(
        (out["overhead_per_job_mean_s"] * out["jobs"] + server_start_s) / wall, 4)
    out["fresh"] = {"launcher": f"{launcher} (no warm server)", **screen_summary(fresh_jobs)}
    out["overhead_ratio_warm_vs_fresh"] = round(out["overhead_per_job_mean_s"] / out["fresh"]["overhead_per_job_mean_s"], 3)
    if single_jobs:
        out["single_process"] = {"launcher": "python", **screen_summary(single_jobs)}
    if torchrun_jobs:
        out["torchrun"] = {"launcher": "torchrun --standalone --nproc_per_node 1", **screen_summary(torchrun_jobs)}
        out["overhead_ratio_vs_torchrun"] = round(out["overhead_per_job_mean_s"] / out["torchrun"]["overhead_per_job_mean_s"], 3)
    for name, summary in (("warm start", out), ("fresh process", out["fresh"]),
                          ("single process", out.get("single_process")), ("torchrun", out.get("torchrun"))):
        if summary:
            print(f"{name}: screen of {summary['jobs']} jobs, {summary['screen_wall_s']:.1f} s of job wall time, "
                  f"{100 * summary['overhead_share_of_screen']:.1f} % overhead, "
                  f"{summary['overhead_per_job_mean_s']:.2f} s per job (target <= 2 s)", flush=True)
    print(f"warm / fresh overhead per job: {out['overhead_ratio_warm_vs_fresh']:.3f}; the server's start-up "
          f"{server_start_s:.2f} s once per snakemake call (with it: {100 * out['overhead_share_with_server_start']:.1f} % "
          "of the screen)", flush=True)
    print(f"references: python start {out['python_start_s']:.2f} s, import torch {out['import_torch_s']:.2f} s, "
          f"import torch + first optimizer {out['import_torch_and_first_optimizer_s']:.2f} s", flush=True)
    line = json.dumps(out)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
