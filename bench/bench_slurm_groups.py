"""Job-group benchmark on a SLURM cluster (not a test): a 40-run screen through
``snakemake --profile profiles/slurm-ci``, ungrouped (one sbatch per run) and grouped
(``stages.A.resources.group_runs: 8``: one sbatch per 8 runs), back to back in the same run.

    .venv/bin/python bench/bench_slurm_groups.py [--runs 40] [--group-runs 8] [--json out.json]
                                                 [--profile profiles/slurm-ci] [--workdir DIR]
    .venv/bin/python bench/bench_slurm_groups.py --quick     # 4 runs in groups of 2; skips without a cluster

Needs a cluster whose partitions and account the profile names (CI: ``.ci/slurm/setup.sh``).

1. Serves the shared data (``$STAGERUN_SHARED_DATA`` or ``../shared/data``) on the controller's
   address (the CI nodes live in their own network namespaces) and tokenizes tiny Shakespeare
   once, locally (not counted).
2. Writes a one-stage CPU study of ``runs / 2`` learning-rate variants x 2 seeds, a few steps
   each (short runs: the case grouping is for), and runs its training jobs twice with the
   profile, each into its own results folder: ``group_runs: 1`` and ``group_runs: N``.
3. Counts the sbatch submissions of each (``sacct --name <Snakemake's run id>``: one job id per
   submission; requeues are not submissions), times each ``snakemake`` call (wall seconds, from
   its start to its exit: scheduling, queueing and the runs), and checks that every run's
   ``metrics.jsonl`` losses are identical in both.

Prints one line per mode and one JSON line: ``{"runs", "group_runs", "ungrouped": {"sbatch",
"wall_s", "states"}, "grouped": {...}, "identical_results"}``. :func:`screen` is what
tests/integration/test_slurm.py runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
LOSS_KEYS = ("step", "train_loss", "val_loss")


def screen_study(path: Path, *, runs: int, group_runs: int, results_dir: Path, data_dir: Path, mirror: str,
                 extra_variants: dict | None = None) -> Path:
    """Write a one-stage screen of ``runs`` tiny CPU runs (``runs // 2`` variants x 2 seeds).

    Raises:
        ValueError: ``runs`` is not an even number >= 2.
    """
    if runs < 2 or runs % 2:
        raise ValueError(f"--runs {runs}: an even number >= 2 (variants x 2 seeds)")
    variants = {"baseline": {}}
    for i in range(1, runs // 2):
        variants[f"lr-{i:02d}"] = {"train": {"lr": round(2.0e-3 * (1 + 0.1 * i), 6)}}
    variants.update(extra_variants or {})
    study = {
        "study": "screen", "dataset": "shakespeare_char", "base_seed": 1337, "baseline": "baseline",
        "results_dir": str(results_dir), "data_dir": str(data_dir), "mirror": mirror,
        "model": {"preset": "nanogpt-small", "n_layer": 1, "n_embd": 32, "n_head": 4, "block_size": 16},
        "train": {"device": "cpu", "batch_size": 8, "lr": 2.0e-3, "warmup_iters": 1, "num_iterations": 4,
                  "val_loss_every": 4, "log_every": 2, "val_tokens": 512},
        "variants": variants,
        "stages": {"A": {"seeds": 2, "resources": {"mem_mb": 500, "runtime": 10, "group_runs": group_runs}}},
        "verdict": {"alpha": 0.01},
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_results(results_dir: Path, study: Path) -> list[Path]:
    """result.json of every run of the screen's stage A (targets of the training jobs)."""
    cfg = yaml.safe_load(study.read_text())
    return [results_dir / "screen" / "stage_A" / v / f"seed_{cfg['base_seed'] + s}" / "result.json"
            for v in cfg["variants"] for s in range(cfg["stages"]["A"]["seeds"])]


def snakemake_env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(SNAKEMAKE.parent), os.environ.get("PATH", "")])}
    env.pop("SLURM_JOB_ID", None)
    return env


def run_profile(workdir: Path, study: Path, targets: list, profile: Path, log: Path,
                timeout: float = 1800, extra: tuple = ()) -> tuple[subprocess.CompletedProcess, float]:
    """``snakemake --profile PROFILE`` on ``targets`` in ``workdir``; (process, wall seconds)."""
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), *map(str, targets), "--directory", str(workdir),
           "--profile", str(profile), "--slurm-logdir", str(workdir / "slurm_logs"), *extra, "--configfile", str(study)]
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=snakemake_env(), cwd=workdir,
                              timeout=timeout)
    return proc, time.monotonic() - started


def slurm_run_id(log: Path) -> str:
    found = re.findall(r"SLURM run ID: (\S+)", log.read_text())
    if not found:
        raise RuntimeError(f"no 'SLURM run ID' in {log}: the SLURM executor did not start")
    return found[0]


def sacct_jobs(run_id: str, duplicates: bool = False) -> list[dict]:
    """The SLURM jobs of one Snakemake run (sbatch --job-name is its run id): one row per
    submission, or per attempt of each (requeues) with ``duplicates``."""
    fields = ["JobIDRaw", "State", "NNodes", "NodeList", "Comment", "Elapsed"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", *(["--duplicates"] if duplicates else []), "--starttime",
                          "now-1days", "--name", run_id, "-o", ",".join(fields)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def losses(result: Path) -> list[dict]:
    rows = [json.loads(line) for line in (result.parent / "metrics.jsonl").read_text().splitlines()]
    return [{k: row[k] for k in LOSS_KEYS if k in row} for row in rows]


def prepare_data(workdir: Path, study: Path) -> None:
    """Download and tokenize the screen's dataset locally (not part of what is measured)."""
    data = yaml.safe_load(study.read_text())["data_dir"]
    meta = Path(data) / "tokens" / "shakespeare_char" / "meta.json"
    subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), str(meta), "--directory", str(workdir),
                    "--cores", "2", "--configfile", str(study)], check=True, capture_output=True, env=snakemake_env(),
                   cwd=workdir, timeout=600)


def screen(workdir: Path, mirror: str, runs: int = 40, group_runs: int = 8,
           profile: Path = REPO / "profiles" / "slurm-ci") -> dict:
    """Run the screen ungrouped, then grouped; returns the numbers (see the module docstring).

    Raises:
        RuntimeError: a snakemake call failed (names its log).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    out: dict = {"runs": runs, "group_runs": group_runs}
    results = {}
    for mode, group in (("ungrouped", 1), ("grouped", group_runs)):
        results_dir = workdir / f"results_{mode}"
        study = screen_study(workdir / f"{mode}.yaml", runs=runs, group_runs=group, results_dir=results_dir,
                             data_dir=data_dir, mirror=mirror)
        if mode == "ungrouped":
            prepare_data(workdir, study)
        targets = run_results(results_dir, study)
        log = workdir / f"snakemake_{mode}.out"
        proc, wall = run_profile(workdir, study, targets, profile, log)
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake ({mode}) exited {proc.returncode}; log: {log}")
        jobs = sacct_jobs(slurm_run_id(log))
        results[mode] = {t: losses(t) for t in targets}
        out[mode] = {"sbatch": len(jobs), "wall_s": round(wall, 1),
                     "states": sorted({j["State"] for j in jobs}),
                     "runs_done": sum(t.exists() for t in targets), "log": str(log)}
    pairs = zip(results["ungrouped"].values(), results["grouped"].values())
    out["identical_results"] = all(a == b and a for a, b in pairs)
    return out


def _serve_shared_data():
    """A server of the shared data on the SLURM controller's address (for the nodes)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import controller_address, shared_data_dir, start_file_server

    return start_file_server(shared_data_dir(), host=controller_address())


def cluster_problem() -> str | None:
    """Why no SLURM cluster answers here (None: ``sinfo`` lists partitions)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo / sbatch not found (no SLURM client)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s (no controller)"
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"sinfo failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[:200]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--group-runs", type=int, default=8)
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "slurm-ci")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--quick", action="store_true",
                        help="a 4-run screen in groups of 2; without a SLURM cluster it says so and exits 0")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.group_runs = 4, 2
    problem = cluster_problem()
    if problem:
        print(f"bench_slurm_groups: skipped, no SLURM cluster here: {problem}" if args.quick else
              f"bench_slurm_groups needs a SLURM cluster ({problem}); CI starts one with .ci/slurm/setup.sh")
        return 0 if args.quick else 2
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-slurm-groups-"))
    server = _serve_shared_data()
    try:
        numbers = screen(workdir, server.url, args.runs, args.group_runs, args.profile)
    finally:
        server.stop()
    for mode in ("ungrouped", "grouped"):
        m = numbers[mode]
        print(f"{mode:>9}: {numbers['runs']} runs, {m['sbatch']} sbatch submissions, {m['wall_s']:.0f} s wall "
              f"(states {', '.join(m['states'])})")
    ungrouped, grouped = numbers["ungrouped"], numbers["grouped"]
    print(f"grouped / ungrouped: sbatch submissions {grouped['sbatch'] / max(ungrouped['sbatch'], 1):.3f}, "
          f"wall {grouped['wall_s'] / ungrouped['wall_s']:.3f}")
    print(f"identical results: {numbers['identical_results']}")
    print(json.dumps(numbers))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0 if numbers["identical_results"] else 1


if __name__ == "__main__":
    sys.exit(main())
