"""The plan printed at every start: per stage, its runs, steps and seeds (torch-free).
"""

from __future__ import annotations

import json

from workflow.data.registry import study_meta_path
from workflow.study.checks import plan_warnings
from workflow.study.gate_rules import most_advancing
from workflow.study.gate_rules.base import gate_default
from workflow.study.length import model_block_size, run_steps, study_train_tokens
from workflow.study.resolve import run_config, stage_order, stage_seeds
from workflow.study.staging import continued_seeds, source_stage
from workflow.study.resources import stage_resources


def _block_size(model: dict) -> int | None:
    try:
        return model_block_size(model)
    except (ValueError, TypeError, KeyError):
        return None


def printed_plan(config: dict, train_tokens: int | None = None) -> list[dict]:
    """The most each stage can run: one dict per stage with ``stage``, ``variants`` (the most
    that can run: all in the first stage; after a ``top_k`` gate k + the baseline, ties at
    the cut aside; after ``beats_baseline`` every variant of the previous stage), ``seeds``,
    ``runs``, ``procs_per_run``, ``gpus_per_run``, ``steps`` (min, max over variants) and
    ``tokens`` (the most tokens the stage trains: steps x batch_size x block_size per run).

    Steps come from :func:`workflow.study.length.run_steps` (what the trainer runs); a length in
    epochs needs ``train_tokens`` (the training split's tokens; default: from the study's
    meta.json once tokenized): without it its steps are None and ``epochs`` gives the epochs."""
    if train_tokens is None:
        train_tokens = study_train_tokens(study_meta_path(config))
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
            most = 1 + most_advancing(gate, previous - 1)  # the baseline runs every stage
            if gate["rule"] == "top_k":
                rule = f"baseline + top {gate.get('k', gate_default('k'))} of {stages[index - 1]}"
            else:
                rule = f"baseline + those of {stages[index - 1]} that pass {gate['rule']}"
        seeds = config["stages"][stage]["seeds"]
        res = stage_resources(config, stage)
        steps, tokens, epochs = [], [], []
        unknown = False  # a script run that reports no tokens per step: the stage's tokens are unknown
        for variant in config["variants"]:
            cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
            train = cfg["train"]
            key = json.dumps(cfg["model"], sort_keys=True)
            if key not in block_sizes:
                block_sizes[key] = _block_size(cfg["model"])
            n = run_steps(cfg, train_tokens)
            if n is None:
                epochs.append(train["num_epochs"])
                continue
            steps.append(n)
            if "trainer" in cfg:  # the script's own model: only what the study says of its tokens counts
                if cfg["trainer"].get("tokens_per_step"):
                    tokens.append(n * cfg["trainer"]["tokens_per_step"])
                else:
                    unknown = True
            elif block_sizes[key] is not None:
                tokens.append(n * train["batch_size"] * block_sizes[key])
        plan.append({
            "stage": stage,
            "variants": most,
            "which": rule,
            "seeds": seeds,
            "runs": most * seeds,
            "procs_per_run": res["nproc_per_node"] * res["nodes"],
            "gpus_per_run": res["gpus"] * res["nodes"],
            "steps": (min(steps), max(steps)) if steps else None,
            "epochs": (min(epochs), max(epochs)) if epochs else None,
            "tokens": max(tokens) * most * seeds if tokens and not unknown else None,
            "tokens_unknown": unknown,
            **staging_plan(config, stage, most, seeds, index == len(stages) - 1),
        })
        previous = most
    return plan


def staging_plan(config: dict, stage: str, most: int, seeds: int, last: bool) -> dict:
    """``runs_min`` (a sequential last stage: every variant decided at its first look) and
    ``steps_saved`` (continued runs: the steps before the branch they do not train again)."""
    looks = ((config["verdict"].get("sequential") or {}).get("looks") if last else None)
    shared = continued_seeds(config, stage)
    branch = run_config(config, stage, config["baseline"], stage_seeds(config, stage)[0])["continue_from"]["step"] if shared else 0
    return {"runs_min": most * looks[0] if looks else most * seeds, "looks": looks,
            "continued_runs": shared * most, "steps_saved": shared * most * branch}


def format_printed_plan(config: dict) -> str:
    """The plan as a few lines of text (what the Snakefile prints once at the start)."""
    plan = printed_plan(config)
    runs = sum(p["runs"] for p in plan)
    lines = [f"stagerun plan for study {config['study']!r}: {len(config['variants'])} variants, "
             f"at most {runs} training runs (later stages run only what the gates advance)"]
    for p in plan:
        parts = []
        if p["steps"]:
            low, high = p["steps"]
            parts.append(f"{low:,} steps" if low == high else f"{low:,}-{high:,} steps")
        if p["epochs"]:
            low, high = p["epochs"]
            parts.append((f"{low:g}" if low == high else f"{low:g}-{high:g}") + " epochs (steps once tokenized)")
        steps = " / ".join(parts)
        tokens = f", <= {p['tokens']:,} tokens" if p["tokens"] else ""
        if p.get("tokens_unknown"):
            tokens = ", tokens n/a (script runs: give trainer.tokens_per_step to count them)"
        gpus = f"{p['gpus_per_run']} GPU(s)" if p["gpus_per_run"] else "CPU"
        lines.append(f"  stage {p['stage']}: <= {p['variants']} variants ({p['which']}) x {p['seeds']} seeds = "
                     f"<= {p['runs']} runs of {steps}, {p['procs_per_run']} process(es) and {gpus} each"
                     f"{tokens}")
        if p["looks"]:
            lines.append(f"    sequential: looks after {p['looks']} seeds; {p['runs_min']}-{p['runs']} runs "
                         "(fewer when variants are decided at an earlier look)")
        if p["continued_runs"]:
            lines.append(f"    continued: {p['continued_runs']} runs resume stage {source_stage(config, p['stage'])}'s, "
                         f"{p['steps_saved']:,} steps not trained again")
    gpu_runs = sum(p["runs"] * p["gpus_per_run"] for p in plan)
    if gpu_runs:
        lines.append(f"  GPUs: at most {gpu_runs} GPU-run slots over the study (runs x GPUs per run)")
    lines += [f"  WARNING: {warning}" for warning in plan_warnings(config)]  # legal, but probably not meant
    return "\n".join(lines)
