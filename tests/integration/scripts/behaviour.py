"""A tiny training script for the script-runner tests (tests/integration/test_jobs_script_runner.py): no data, no model, a fake loss curve
that depends on the seed, in whatever output format and failure mode the test asks for.

    python behaviour.py --mode=MODE --seed=S --steps=N [--format=nanogpt|modded|jsonl|custom]

Modes: ok (a curve), crash (exits 3 after a traceback-like line), silent (prints no val loss,
exits 0), nan (val loss nan at the last step), ignore_seed (the same curve for every seed),
env (prints the environment it got as JSON lines: STAGE_*, STAGERUN_*, SECRET_TOKEN).
"""

import json
import math
import os
import sys

args = dict(a.removeprefix("--").split("=", 1) for a in sys.argv[1:])
mode, fmt = args.get("mode", "ok"), args.get("format", "nanogpt")
seed, steps = int(args.get("seed", 0)), int(args.get("steps", 10))
if mode == "ignore_seed":
    seed = 0
if mode == "env":
    for key in sorted(os.environ):
        if key.startswith(("STAGE_", "STAGERUN_", "SECRET_")):
            print("ENV " + json.dumps({key: os.environ[key]}))
metrics = os.environ.get("STAGERUN_METRICS")


def val_loss(step):
    return 4.0 * math.exp(-step / 20) + 1.0 + (seed % 97) * 1e-3


for step in range(0, steps + 1):
    train = val_loss(step) + 0.05
    val = val_loss(step)
    if mode == "nan" and step == steps:
        val = float("nan")
    last = step == steps
    if step % 5 == 0 or last:
        if mode == "silent":
            print(f"evaluating at step {step}")
        elif fmt == "nanogpt":
            print(f"step {step}: train loss {train:.4f}, val loss {val:.4f}")
        elif fmt == "modded":
            print(f"step:{step}/{steps} val_loss:{val:.4f} train_time:{step * 10}ms step_avg:10.00ms")
        elif fmt == "custom":
            print(f"[eval] it={step} | validation={val:.6f}")
        elif fmt == "jsonl":
            with open(metrics, "a") as handle:
                handle.write(json.dumps({"step": step, "val_loss": val, "tokens_seen": step * 128}) + "\n")
    if fmt == "nanogpt" and mode != "silent":
        print(f"iter {step}: loss {train:.4f}, time 1.00ms, mfu 0.50%")
    elif fmt == "modded" and not (step % 5 == 0 or last):
        print(f"step:{step}/{steps} train_loss:{train:.4f} train_time:{step * 10}ms step_avg:10.00ms")
if mode == "crash":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: boom at the end", file=sys.stderr)
    sys.exit(3)
