"""DAG overhead benchmark (not a test): stagerun's `snakemake -n` and no-op rerun against bare
Snakemake workflows with the same number of jobs, measured in the same run.

    .venv/bin/python bench/bench_dag.py [--runs 100 1000] [--large] [--repeat 1] [--json out.json]
    .venv/bin/python bench/bench_dag.py --quick     # seconds: one 15-run study (CI checks it finishes)

For each size N (training runs in the first stage; ``--large`` adds 5,000):

1. A study with N/5 variants x 5 seeds in stage A (gate top_k k=2) and a stage B with
   5 seeds (the verdict), nanogpt-small on ``custom_text`` over a folder of generated
   arithmetic documents (no download, no mirror: the data is this script's own).
2. ``snakemake -n`` of that study (parse, validation, DAG of stage A's N training jobs plus the
   data, summary and gate jobs) against ``snakemake -n`` of a bare workflow with the same job
   count (one rule ``touch {output}`` with a wildcard, and ``rule all``).
3. A no-op rerun (``snakemake --cores 1`` when every output exists and is up to date: the
   stage B jobs are in the DAG too, as the gates have decided) against the bare workflow's
   no-op rerun with the same job count. The data jobs really run (``snakemake`` tokenizes the
   generated documents: meta.json is read when the Snakefile is parsed, so it must be real);
   the other outputs are created by this script, not by running the jobs: the jobs a dry run
   lists (and the gate decisions that open stage B, with real content) are written in
   topological order with increasing modification times, so Snakemake finds them complete (no
   metadata records: the params trigger has nothing to compare).

Prints one line per size and measurement with the wall and CPU seconds (user + system of the
snakemake process) and the ratios study / bare, the marginal cost per training run between
sizes (linear growth: similar slopes), then one JSON line. Target: ratio <= 1.5 at
1,000 runs. The load average is printed: on a shared machine compare ratios (the CPU ratio is
the steadier one), not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SEEDS = 5
DATA_DIR = "data"  # the schema's default data_dir, relative to the working folder

BARE_SNAKEFILE = """\
N = int(config["jobs"])

rule all:
    input: expand("out/{i}.txt", i=range(N))

rule job:
    output: "out/{i}.txt"
    shell: "touch {output}"
"""


def write_documents(folder: Path, documents: int = 400) -> Path:
    """Arithmetic documents in custom_text's default charset (``0123456789+-HBL.``), two files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for part in ("a", "b"):
        docs = []
        for _ in range(documents // 2):
            x, y = rng.randrange(1000), rng.randrange(1000)
            docs.append(f"{x}+{y}\nH{x + y}.\nB{x - y}L\n")
        (folder / f"{part}.txt").write_text("\n".join(docs))
    return folder


def study_config(runs: int, documents: Path) -> dict:
    """A study with ``runs`` training runs in stage A: runs/5 variants (learning rates) x 5 seeds,
    on ``custom_text`` over ``documents``."""
    variants = {"baseline": {}}
    for i in range(1, runs // SEEDS):
        variants[f"v{i:04d}"] = {"train": {"lr": round(1e-3 * (1 + i / runs), 8)}}
    return {
        "study": f"dag{runs}",
        "dataset": "custom_text",
        "datasets": {"custom_text": {"folder": str(documents)}},
        "baseline": "baseline",
        "model": {"preset": "nanogpt-small"},
        "train": {"batch_size": 8, "lr": 1e-3, "val_loss_every": 0},
        "variants": variants,
        "stages": {
            "A": {"seeds": SEEDS, "train": {"num_iterations": 10}, "gate": {"rule": "top_k", "k": 2}},
            "B": {"seeds": SEEDS, "train": {"num_iterations": 20}},
        },
    }


def snakemake(workdir: Path, snakefile: Path, *args: str) -> tuple[float, str]:
    """Run snakemake in ``workdir``; ((wall seconds, CPU seconds), stdout + stderr). Raises on failure."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir), *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return (seconds, cpu), out


def job_count(output: str) -> int:
    """The ``total`` row of Snakemake's job stats table."""
    match = re.search(r"^total\s+(\d+)", output, flags=re.M)
    if not match:
        raise RuntimeError(f"no job stats in snakemake's output:\n{output[-3000:]}")
    return int(match.group(1))


def listed_outputs(output: str, keys: tuple[str, ...] = ("output", "log")) -> list[list[str]]:
    """Output (and log) files of each job of a dry run, in the printed (topological) order."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        files = []
        for key in keys:
            for line in re.findall(rf"^\s+{key}: (.+)$", block, flags=re.M):
                files += [f.strip() for f in line.split(", ") if f.strip()]
        if files:
            jobs.append(files)
    return jobs


def complete_study(workdir: Path, snakefile: Path, configfile: Path) -> int:
    """Write every output of the study's DAG (gate decisions with real content) so that a rerun
    has nothing to do; returns the job count of the complete DAG.

    Each pass writes the outputs of the jobs a dry run lists (missing ones, and those whose
    inputs are newer), in the printed topological order with increasing modification times;
    a pass may open a stage (gate decisions are checkpoints). Stops when nothing is left."""
    variants = list(yaml.safe_load(configfile.read_text())["variants"])
    args = ("--cores", "1", "--configfile", str(configfile))
    # the data jobs for real: the Snakefile reads meta.json when it is parsed
    _, out = snakemake(workdir, snakefile, "-n", *args)
    data = [files for files in listed_outputs(out, ("output",)) if files[0].startswith(f"{DATA_DIR}/")]
    if not any(f.endswith("/meta.json") for files in data for f in files):
        raise RuntimeError(f"the dry run lists no data job writing meta.json:\n{out[-3000:]}")
    snakemake(workdir, snakefile, *[f for files in data for f in files], *args)  # targets first: --configfile takes a list
    jobs: set[str] = {files[0] for files in data}  # jobs with outputs, by their first output
    stamp = time.time()  # placeholders are newer than the real data files, in the DAG's order
    for _ in range(10):
        _, out = snakemake(workdir, snakefile, "-n", *args)
        if "Nothing to be done" in out:
            return len(jobs) + 1  # + rule all
        for files in listed_outputs(out):
            jobs.add(files[0])
            stamp += 0.001
            for name in files:
                path = workdir / name
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if re.search(r"gates/gate_\w+\.json$", name):
                        path.write_text(json.dumps({"advanced": variants[1:3], "ranking": [], "failed_runs": {}}))
                    else:
                        path.write_text("")
                os.utime(path, (stamp, stamp))
    raise RuntimeError(f"the study's outputs did not converge to a complete DAG:\n{out[-3000:]}")


def complete_bare(workdir: Path, jobs: int) -> None:
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(jobs - 1):
        (out / f"{i}.txt").write_text("")


def measure(runs: int, repeat: int, tmp: Path) -> dict:
    folder = tmp / f"n{runs}"
    study_dir, bare_dir = folder / "study", folder / "bare"
    study_dir.mkdir(parents=True)
    bare_dir.mkdir(parents=True)
    configfile = folder / "study.yaml"
    configfile.write_text(yaml.safe_dump(study_config(runs, write_documents(folder / "documents")), sort_keys=False))
    bare_snakefile = folder / "Snakefile"
    bare_snakefile.write_text(BARE_SNAKEFILE)
    snakefile = REPO / "Snakefile"
    study_args = ("--cores", "1", "--configfile", str(configfile))

    result = {"runs": runs}
    dry_study, dry_bare = [], []
    for _ in range(repeat):  # interleaved: the machine's load hits both alike
        seconds, out = snakemake(study_dir, snakefile, "-n", *study_args)
        dry_study.append(seconds)
        jobs = job_count(out)
        seconds, bare_out = snakemake(bare_dir, bare_snakefile, "-n", "--cores", "1", "--config", f"jobs={jobs - 1}")
        dry_bare.append(seconds)
        assert job_count(bare_out) == jobs, (job_count(bare_out), jobs)
    result["dry_run"] = summarize(jobs, dry_study, dry_bare)

    all_jobs = complete_study(study_dir, snakefile, configfile)
    complete_bare(bare_dir, all_jobs)
    noop_study, noop_bare = [], []
    for _ in range(repeat):
        seconds, out = snakemake(study_dir, snakefile, *study_args)
        if "Nothing to be done" not in out:
            raise RuntimeError(f"the study's rerun was not a no-op:\n{out[-3000:]}")
        noop_study.append(seconds)
        seconds, out = snakemake(bare_dir, bare_snakefile, "--cores", "1", "--config", f"jobs={all_jobs - 1}")
        if "Nothing to be done" not in out:
            raise RuntimeError(f"the bare rerun was not a no-op:\n{out[-3000:]}")
        noop_bare.append(seconds)
    result["noop_rerun"] = summarize(all_jobs, noop_study, noop_bare)
    return result


def summarize(jobs: int, study: list[tuple[float, float]], bare: list[tuple[float, float]]) -> dict:
    """Minimum wall and CPU seconds over the repeats, and the ratios study / bare."""
    study_s, bare_s = min(w for w, _ in study), min(w for w, _ in bare)
    study_cpu, bare_cpu = min(c for _, c in study), min(c for _, c in bare)
    return {"jobs": jobs, "study_s": round(study_s, 3), "bare_s": round(bare_s, 3), "ratio": round(study_s / bare_s, 3),
            "study_cpu_s": round(study_cpu, 3), "bare_cpu_s": round(bare_cpu, 3),
            "cpu_ratio": round(study_cpu / bare_cpu, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000], help="training runs in stage A (multiples of 5)")
    parser.add_argument("--large", action="store_true", help="add the 5,000-run study (minutes on 2 cores)")
    parser.add_argument("--repeat", type=int, default=1, help="repeats per measurement (the minimum counts)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true",
                        help="seconds: one 15-run study, once (checks that the benchmark runs; the numbers mean little)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.large, args.repeat = [15], False, 1  # 3 variants: top_k k=2 must leave one out
    sizes = sorted(set(args.runs) | ({5000} if args.large else set()))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        for runs in sizes:
            res = measure(runs, args.repeat, Path(tmp))
            results.append(res)
            for kind in ("dry_run", "noop_rerun"):
                r = res[kind]
                print(f"{runs:>5} runs  {kind:<10} {r['jobs']:>5} jobs: stagerun {r['study_s']:6.2f} s "
                      f"(CPU {r['study_cpu_s']:6.2f} s), bare snakemake {r['bare_s']:6.2f} s (CPU {r['bare_cpu_s']:6.2f} s), "
                      f"ratio {r['ratio']:.2f} (CPU {r['cpu_ratio']:.2f})", flush=True)
    slopes = {}
    for kind in ("dry_run", "noop_rerun"):
        pairs = list(zip(results, results[1:]))
        slopes[kind] = [
            {"from": a["runs"], "to": b["runs"],
             "study_ms_per_run": round(1000 * (b[kind]["study_s"] - a[kind]["study_s"]) / (b["runs"] - a["runs"]), 3),
             "bare_ms_per_run": round(1000 * (b[kind]["bare_s"] - a[kind]["bare_s"]) / (b["runs"] - a["runs"]), 3),
             "study_cpu_ms_per_run": round(1000 * (b[kind]["study_cpu_s"] - a[kind]["study_cpu_s"]) / (b["runs"] - a["runs"]), 3),
             "bare_cpu_ms_per_run": round(1000 * (b[kind]["bare_cpu_s"] - a[kind]["bare_cpu_s"]) / (b["runs"] - a["runs"]), 3)}
            for a, b in pairs
        ]
        for s in slopes[kind]:
            print(f"{kind:<10} marginal cost {s['from']}->{s['to']} runs: stagerun {s['study_ms_per_run']} ms/run "
                  f"(CPU {s['study_cpu_ms_per_run']}), bare {s['bare_ms_per_run']} ms/run (CPU {s['bare_cpu_ms_per_run']})",
                  flush=True)
    out = {"bench": "dag", "results": results, "marginal": slopes, "load_avg": os.getloadavg()[0]}
    line = json.dumps(out)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
