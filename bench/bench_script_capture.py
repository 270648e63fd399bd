"""Capture-overhead benchmark (not a test): a training script that prints 10,000 metric
lines, run bare and through stagerun's script runner, in the same run.

    .venv/bin/python bench/bench_script_capture.py [--lines 10000] [--work-us 500] [--repeats 5] [--json out.json]
    .venv/bin/python bench/bench_script_capture.py --quick     # seconds: 200 lines, once (CI)

The script (written to a temporary folder) waits ``--work-us`` microseconds per step
(``time.sleep``: a stand-in for a GPU training step, where the CPU mostly waits for the GPU; a
busy loop would measure the machine's other load, not the capture) and prints one nanoGPT ``iter`` line per step and an
evaluation line (``step N: train loss X, val loss Y``) every 100 steps: 10,100 lines in all.

- **bare**: ``python script.py > file`` (Python's own block buffering: the cheapest way to run it);
- **stagerun**: ``python -m workflow.run_script`` on the same script, as a training job
  runs it: attempt log, ``PYTHONUNBUFFERED=1`` (lines arrive as printed), every line parsed by the
  ``nanogpt`` preset, rows written live to ``metrics.partial.jsonl``, then ``metrics.jsonl`` and
  ``result.json`` (sha256 of the script, git state of its folder).

Runs alternate (bare, stagerun, bare, ...) so both see the same load; the medians are compared.
Also measured: the same pair with no work per step (``--work-us 0``): what capturing costs per
line and the runner's fixed start-up, as absolute numbers. Target: stagerun / bare <= 1.05 with
work per step. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = r'''
import sys, time
lines, work_s = int(sys.argv[1]), float(sys.argv[2]) / 1e6
loss = 4.2
for step in range(lines):
    if work_s:
        time.sleep(work_s)
    loss *= 0.9999
    if step % 100 == 0:
        print(f"step {step}: train loss {loss:.4f}, val loss {loss + 0.05:.4f}")
    print(f"iter {step}: loss {loss:.4f}, time {work_s * 1000:.2f}ms, mfu 1.00%")
print(f"step {lines}: train loss {loss:.4f}, val loss {loss + 0.05:.4f}")
'''


def run_config(script: Path, lines: int, work_us: float) -> dict:
    sys.path.insert(0, str(REPO))
    from workflow.study.schema import validate_section
    from workflow.study.trainer_section import resolve_paths

    trainer = validate_section({"script": script.name, "args": [str(lines), str(work_us)]}, "trainer", "trainer")
    return {"study": "bench", "stage": "A", "variant": "v", "seed": 1, "run_id": 0, "stage_seed_offset": 0,
            "dataset": "shakespeare_char", "model": {}, "train": validate_section({}, "train", "train"),
            "trainer": resolve_paths(trainer, script.parent)}


def time_bare(script: Path, lines: int, work_us: float, out: Path) -> float:
    start = time.perf_counter()
    with open(out, "w") as handle:
        subprocess.run([sys.executable, str(script), str(lines), str(work_us)], stdout=handle, check=True)
    return time.perf_counter() - start


def time_stagerun(cfg: dict, out_dir: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "workflow.run_script", "--log", str(out_dir / "train.log"),
           "--run-config", json.dumps(cfg), "--out-dir", str(out_dir), "--meta", str(out_dir / "none" / "meta.json")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((out_dir / "result.json").read_text())


def measure(folder: Path, lines: int, work_us: float, repeats: int) -> dict:
    script = folder / "print_metrics.py"
    script.write_text(SCRIPT)
    cfg = run_config(script, lines, work_us)
    bare, staged, rows = [], [], None
    for i in range(repeats):
        bare.append(time_bare(script, lines, work_us, folder / f"bare-{work_us}-{i}.log"))
        wall, result = time_stagerun(cfg, folder / f"stagerun-{work_us}-{i}")
        staged.append(wall)
        rows = result["captured_rows"]
        assert result["success"] and result["final_step"] == lines, result
    b, s = statistics.median(bare), statistics.median(staged)
    return {"work_us": work_us, "lines": lines + lines // 100 + 1, "captured_rows": rows, "bare_s": b,
            "stagerun_s": s, "ratio": s / b, "overhead_s": s - b, "overhead_us_per_line": (s - b) / lines * 1e6,
            "bare_all_s": bare, "stagerun_all_s": staged}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10000)
    parser.add_argument("--work-us", type=float, default=500.0, help="time per step (sleep), microseconds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true",
                        help="seconds: 200 lines, one repeat (checks that the benchmark runs; the numbers mean little)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lines, args.repeats = 200, 1
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        results = [measure(Path(tmp), args.lines, args.work_us, args.repeats),
                   measure(Path(tmp), args.lines, 0.0, args.repeats)]
    print(f"{'work/step':>10} {'lines':>7} {'bare s':>8} {'stagerun s':>10} {'ratio':>6} {'overhead ms':>11} {'us/line':>8}")
    for r in results:
        print(f"{r['work_us']:>8.0f}us {r['lines']:>7} {r['bare_s']:>8.3f} {r['stagerun_s']:>10.3f} {r['ratio']:>6.3f} "
              f"{r['overhead_s'] * 1000:>11.0f} {r['overhead_us_per_line']:>8.1f}")
    verdict = ("quick mode: the 1.05 target is for the full run" if args.quick
               else "ok" if results[0]["ratio"] <= 1.05 else "ABOVE the 1.05 target")
    print(f"capture overhead with {args.work_us:.0f} us of work per step: {results[0]['ratio']:.3f}x ({verdict})")
    line = json.dumps({"bench": "script_capture", "results": results, "target_ratio": 1.05})
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
