"""The plan printed at every start: per stage, its runs, steps and seeds (torch-free).
"""

from __future__ import annotations

import json

from workflow.study.model_config import build_model_config
from workflow.study.resolve import run_config, stage_order, stage_seeds
from workflow.study.resources import stage_resources

# ---- the plan up front ------------------------------------------------------------------


def _block_size(model: dict) -> int | None:
    try:

        return build_model_config(dict(model), 256).block_size
    except (ValueError, TypeError, KeyError):
        return None


def stage_plan(config: dict) -> list[dict]:
    """The most each stage can run: one dict per stage with ``stage``, ``variants`` (the most
    that can run: all in the first stage; after a ``top_k`` gate k + the baseline, ties at
    the cut aside; after ``beats_baseline`` every variant of the previous stage), ``seeds``,
    ``runs``, ``procs_per_run``, ``gpus_per_run``, ``steps`` (min, max over variants) and
    ``tokens`` (the most tokens the stage trains: steps x batch_size x block_size per run)."""
    stages = stage_order(config)
    n_variants = len(config["variants"])
    block_sizes = {}
    plan = []
    previous = n_variants
    for index, stage in enumerate(stages):
        if index == 0:
            most, rule = n_variants, "all variants"
        else:
            gate = config["stages"][stages[index - 1]]["gate"]
            if gate["rule"] == "top_k":
                most = min(previous, gate.get("k", 2) + 1)
                rule = f"baseline + top {gate.get('k', 2)} of {stages[index - 1]}"
            else:
                most, rule = previous, f"baseline + those of {stages[index - 1]} that pass {gate['rule']}"
        seeds = config["stages"][stage]["seeds"]
        res = stage_resources(config, stage)
        steps, tokens = [], []
        for variant in config["variants"]:
            cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
            train = cfg["train"]
            key = json.dumps(cfg["model"], sort_keys=True)
            if key not in block_sizes:
                block_sizes[key] = _block_size(cfg["model"])
            steps.append(train["num_iterations"])
            if block_sizes[key] is not None:
                tokens.append(train["num_iterations"] * train["batch_size"] * block_sizes[key])
        plan.append({
            "stage": stage,
            "variants": most,
            "which": rule,
            "seeds": seeds,
            "runs": most * seeds,
            "procs_per_run": res["nproc_per_node"] * res["nodes"],
            "gpus_per_run": res["gpus"] * res["nodes"],
            "steps": (min(steps), max(steps)),
            "tokens": max(tokens) * most * seeds if tokens else None,
        })
        previous = most
    return plan


def format_plan(config: dict) -> str:
    """The plan as a few lines of text (what the Snakefile prints once at the start)."""
    plan = stage_plan(config)
    runs = sum(p["runs"] for p in plan)
    lines = [f"stagerun plan for study {config['study']!r}: {len(config['variants'])} variants, "
             f"at most {runs} training runs (later stages run only what the gates advance)"]
    for p in plan:
        steps = f"{p['steps'][0]}" if p["steps"][0] == p["steps"][1] else f"{p['steps'][0]}-{p['steps'][1]}"
        tokens = f", <= {p['tokens']:,} tokens" if p["tokens"] else ""
        gpus = f"{p['gpus_per_run']} GPU(s)" if p["gpus_per_run"] else "CPU"
        lines.append(f"  stage {p['stage']}: <= {p['variants']} variants ({p['which']}) x {p['seeds']} seeds = "
                     f"<= {p['runs']} runs of {steps} steps, {p['procs_per_run']} process(es) and {gpus} each"
                     f"{tokens}")
    gpu_runs = sum(p["runs"] * p["gpus_per_run"] for p in plan)
    if gpu_runs:
        lines.append(f"  GPUs: at most {gpu_runs} GPU-run slots over the study (runs x GPUs per run)")
    return "\n".join(lines)
