"""The compute plan of a study, before any training: FLOPs, GPU-hours and dollars per stage
against the naive plan (every variant with the last stage's seeds and length).

The library part; the CLI is ``python -m workflow.compute_plan`` (workflow/compute_plan.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from workflow.core.io import read_json
from workflow.data.registry import DATASETS, study_meta_path
from workflow.data.tokenizers import TOKENIZERS
from workflow.study.gate_rules import most_advancing
from workflow.study.length import run_steps, study_train_tokens
from workflow.model.spec import build_model_config
from workflow.study.resolve import run_config, stage_order, stage_seeds
from workflow.study.resources import stage_resources
from workflow.optim.schedules import curriculum_marks, resolve_depth_warm
from workflow.model.flops import flops_per_token, peak_flops
from workflow.study.staging import continued_seeds, source_stage



def planning_vocab_size(config: dict) -> tuple[int, str]:
    """The study dataset's vocab_size and where it came from (``meta.json`` or ``estimate``)."""

    meta = Path(study_meta_path(config))  # the folder the study's dataset options name
    if meta.is_file():
        return int(read_json(meta)["vocab_size"]), str(meta)
    dataset = DATASETS[config["dataset"]]
    options = {**dataset.defaults, **((config.get("datasets") or {}).get(config["dataset"]) or {})}
    return TOKENIZERS[dataset.tokenizer].planned_vocab(options)


_MATMUL_PARAMS: dict[str, int] = {}


def _matmul_params(model_cfg) -> int:
    """Parameters that take part in matmuls (blocks + lm_head), as the trainer counts them for
    ``flops_per_token``; the model is built on the meta device (no memory), once per config."""
    import torch  # deferred heavy import: torch, only to count a model's parameters on the meta device

    from workflow.model import GPT  # deferred heavy import: torch (the model)

    key = json.dumps(dataclasses.asdict(model_cfg), sort_keys=True)
    if key not in _MATMUL_PARAMS:
        with torch.device("meta"):
            model = GPT(model_cfg)
        _MATMUL_PARAMS[key] = model.num_parameters(exclude_embeddings=True) + model.lm_head.weight.numel()
    return _MATMUL_PARAMS[key]


def script_run_estimate(cfg: dict) -> dict:
    """:func:`run_estimate` of a run of the user's own script: tokens = ``num_iterations`` x
    ``trainer.tokens_per_step`` and FLOPs = tokens x ``trainer.flops_per_token`` where the study
    gives them, otherwise None ("unknown": never the built-in model's numbers)."""
    n = cfg["train"]["num_iterations"]
    per_step, per_token = cfg["trainer"].get("tokens_per_step"), cfg["trainer"].get("flops_per_token")
    tokens = n * per_step if per_step else None
    flops = tokens * per_token if tokens is not None and per_token else None
    return {"num_iterations": n, "tokens": tokens, "flops": flops, "flops_per_token": per_token if flops else None}


def run_estimate(config: dict, stage: str, variant: str, vocab_size: int) -> dict:
    """Tokens and FLOPs of one run of ``variant`` in ``stage``.

    Returns:
        ``{"num_iterations", "tokens", "flops", "flops_per_token"}`` (FLOPs forward + backward,
        summed over the steps at their sequence lengths; all None when the run length needs the
        data's token count: ``num_epochs``).
    Raises:
        ValueError: a plateau curriculum (its sequence lengths are not known ahead).
    """

    cfg = run_config(config, stage, variant, stage_seeds(config, stage)[0])
    train = cfg["train"]
    if "trainer" in cfg:  # a script run's cost is known only from what the study says about it
        return script_run_estimate(cfg)
    model_cfg = build_model_config(resolve_depth_warm(cfg["model"], None), vocab_size)
    n = run_steps(cfg, study_train_tokens(study_meta_path(config)))
    if n is None:  # in epochs, before tokenization
        return {"num_iterations": None, "tokens": None, "flops": None, "flops_per_token": None}
    train = {**train, "num_iterations": n}
    matmul = _matmul_params(model_cfg)
    ladder = train.get("curriculum_block_sizes")
    if ladder and train["curriculum_advance"] != "steps":
        raise ValueError(f"variants.{variant}: a plateau curriculum's tokens are not known ahead")
    lengths = [int(x) for x in ladder] if ladder else [model_cfg.block_size]
    bounds = [0, *[min(m, n) for m in curriculum_marks(train)], n] if ladder else [0, n]
    tokens, flops = 0, 0.0
    for length, start, end in zip(lengths, bounds, bounds[1:]):
        rung_tokens = train["batch_size"] * length * (end - start)
        tokens += rung_tokens
        flops += flops_per_token(model_cfg, length, matmul) * rung_tokens
    return {"num_iterations": n, "tokens": tokens, "flops": flops, "flops_per_token": flops / tokens}


def stage_hardware(config: dict, stage: str) -> dict:
    """GPUs per run, GPU model, its planning peak FLOP/s and price of ``stage``.

    Returns:
        ``{"gpus", "gpu_model", "peak_flops", "hour_usd", "unit"}``: ``unit`` is ``"gpu"``
        (``hour_usd`` per GPU-hour) or ``"process"`` on CPU stages (``cost.cpu_hour_usd``).
    Raises:
        ValueError: a GPU stage whose gpu_model has no price in ``cost.gpu_hour_usd`` (when any
            price is set) or no known peak FLOP/s. A GPU stage without a gpu_model plans FLOPs
            only (``peak_flops`` None: GPU-hours and dollars unknown).
    """

    res = stage_resources(config, stage)
    cost = config["cost"]
    gpus = res["gpus"] * res["nodes"]
    if not gpus:
        return {"gpus": 0, "processes": res["nproc_per_node"] * res["nodes"], "gpu_model": None, "peak_flops": None,
                "hour_usd": cost["cpu_hour_usd"], "unit": "process"}
    model = res["gpu_model"]
    prices = cost["gpu_hour_usd"]
    if prices and model not in prices:
        raise ValueError(f"cost.gpu_hour_usd: no price for stages.{stage}.resources.gpu_model {model!r} "
                         f"(priced: {', '.join(prices)})")
    peak = cost["peak_tflops"][model] * 1e12 if model in cost["peak_tflops"] else peak_flops(model)
    if peak is None and model is not None:  # (no gpu_model: GPU-hours of the plan stay unknown)
        raise ValueError(f"stages.{stage}.resources.gpu_model {model!r}: peak FLOP/s unknown; set cost.peak_tflops.{model}")
    return {"gpus": gpus, "processes": gpus, "gpu_model": model, "peak_flops": peak,
            "hour_usd": prices.get(model, 0.0), "unit": "gpu"}


def _expected_advancing(config: dict) -> dict[str, int]:
    """Non-baseline variants expected to run in each stage (the most each gate advances:
    :func:`workflow.study.gate_rules.most_advancing`)."""
    stages = stage_order(config)
    n = len([v for v in config["variants"] if v != config["baseline"]])
    out = {stages[0]: n}
    for prev, stage in zip(stages, stages[1:]):
        n = most_advancing(config["stages"][prev]["gate"], n)
        out[stage] = n
    return out


def compute_plan(config: dict, vocab_size: int, vocab_source: str = "") -> dict:
    """The study's compute plan (see the module docstring).

    Args:
        config: the study, validated with defaults (:func:`workflow.study.resolve.study_with_defaults`).
        vocab_size: the dataset's vocabulary size.
    Returns:
        ``{"study", "vocab_size", "stages": [{stage, hardware, seeds, variants (non-baseline),
        runs, baseline_runs, per_run: {variant: run_estimate}, flops, gpu_hours, usd,
        usd_variants, usd_baseline, usd_per_run}], "pivots": [{gate, usd}], "reserve_usd",
        "budget_usd", "staged": {flops, gpu_hours, usd, runs}, "naive": {...}, "savings": {flops,
        gpu_hours, usd} (1 - staged / naive; dollars with the reserve), "seed001": {stages, flops,
        gpu_hours, usd, runs, naive, savings} (seed 001's accounting: every run at the baseline's
        cost, no baseline after the first stage), "warnings": [str]}``.
    """
    stages = stage_order(config)
    baseline = config["baseline"]
    others = [v for v in config["variants"] if v != baseline]
    advancing = _expected_advancing(config)
    mfu = config["cost"]["planning_mfu"]
    rows = []

    def hours(flops: float | None, hw: dict) -> float | None:
        if flops is None or hw["peak_flops"] is None:
            return None
        return flops / (hw["peak_flops"] * mfu) / 3600.0

    for index, stage in enumerate(stages):
        hw = stage_hardware(config, stage)
        seeds = config["stages"][stage]["seeds"]
        per_run = {v: run_estimate(config, stage, v, vocab_size) for v in config["variants"]}
        k = advancing[stage]

        def mean_other(key: str) -> float | None:
            values = [per_run[v][key] for v in others]
            return None if not values or any(x is None for x in values) else sum(values) / len(values)

        run_flops_other = mean_other("flops")
        base_flops = per_run[baseline]["flops"]
        # continued runs train only the steps after the branch; a sequential last stage runs at
        # least its first look's seeds per variant (all decided there) and at most all of them
        shared, branch = continued_seeds(config, stage), 0
        if shared:
            branch = run_config(config, stage, baseline, stage_seeds(config, stage)[0])["continue_from"]["step"]
        steps_total = run_config(config, stage, baseline, stage_seeds(config, stage)[0])["train"]["num_iterations"]
        run_equivalents = seeds - shared * branch / steps_total  # runs' worth of steps per variant
        seq = (config["verdict"].get("sequential") or {}) if index == len(stages) - 1 else {}
        least = (seq["looks"][0] if seq else seeds) / seeds  # the fewest runs as a fraction of the most
        flops_variants = None if run_flops_other is None else k * run_equivalents * run_flops_other
        flops_base = None if base_flops is None else run_equivalents * base_flops
        gh_v, gh_b = hours(flops_variants, hw), hours(flops_base, hw)
        usd_v = None if gh_v is None else gh_v * hw["hour_usd"]
        usd_b = None if gh_b is None else gh_b * hw["hour_usd"]
        rows.append({
            "stage": stage,
            "hardware": hw,
            "seeds": seeds,
            "variants": k,
            "runs": (k + 1) * seeds,
            "baseline_runs": seeds,
            "per_run": per_run,
            "flops_variants": flops_variants,
            "flops": None if flops_variants is None or flops_base is None else flops_variants + flops_base,
            "gpu_hours_variants": gh_v,
            "gpu_hours": None if gh_v is None else gh_v + gh_b,
            "usd_variants": usd_v,
            "usd_baseline": usd_b,
            "usd": None if usd_v is None else usd_v + usd_b,
            "usd_per_run": None if usd_b is None else usd_b / seeds,
            "first": index == 0,
            "continued_runs": shared * (k + 1),
            "steps_saved": shared * branch * (k + 1),
            "looks": seq.get("looks"),
            "runs_min": round((k + 1) * seeds * least),
            "flops_min": None if flops_variants is None or flops_base is None else (flops_variants + flops_base) * least,
            "gpu_hours_min": None if gh_v is None else (gh_v + gh_b) * least,
            "usd_min": None if usd_v is None else (usd_v + usd_b) * least,
        })

    final = rows[-1]
    naive_flops = sum(final["seeds"] * final["per_run"][v]["flops"] for v in config["variants"])         if all(final["per_run"][v]["flops"] is not None for v in config["variants"]) else None
    naive_gh = hours(naive_flops, final["hardware"])
    naive = {"flops": naive_flops, "gpu_hours": naive_gh,
             "usd": None if naive_gh is None else naive_gh * final["hardware"]["hour_usd"],
             "runs": final["seeds"] * len(config["variants"])}

    add = lambda xs: None if any(x is None for x in xs) else sum(xs)  # noqa: E731
    staged = {unit: add([r[unit] for r in rows]) for unit in ("flops", "gpu_hours", "usd")}
    staged["runs"] = sum(r["runs"] for r in rows)
    fewest = {unit: add([r[f"{unit}_min"] for r in rows]) for unit in ("flops", "gpu_hours", "usd")}
    fewest["runs"] = sum(r["runs_min"] for r in rows)
    reserve, budget = config["cost"]["reserve_usd"], config["cost"]["budget_usd"]

    # Seed 001's accounting: every run at the baseline's cost, no baseline after the first stage.
    seed = {"stages": []}
    for r in rows:
        n_runs = (r["variants"] + 1 if r["first"] else r["variants"]) * r["seeds"]
        base = r["per_run"][baseline]["flops"]
        flops = None if base is None else n_runs * base
        gh = hours(flops, r["hardware"])
        seed["stages"].append({"stage": r["stage"], "runs": n_runs, "flops": flops, "gpu_hours": gh,
                               "usd": None if gh is None else gh * r["hardware"]["hour_usd"]})
    for unit in ("flops", "gpu_hours", "usd"):
        seed[unit] = add([x[unit] for x in seed["stages"]])
    seed["runs"] = sum(x["runs"] for x in seed["stages"])
    final_base = final["per_run"][baseline]["flops"]
    seed_naive_flops = None if final_base is None else naive["runs"] * final_base
    seed_naive_gh = hours(seed_naive_flops, final["hardware"])
    seed["naive"] = {"flops": seed_naive_flops, "gpu_hours": seed_naive_gh, "runs": naive["runs"],
                     "usd": None if seed_naive_gh is None else seed_naive_gh * final["hardware"]["hour_usd"]}

    def saving(part: dict, reference: dict) -> dict:
        """1 - part / reference per unit; dollars with the reserve (it must be set aside)."""
        out = {}
        for unit in ("flops", "gpu_hours", "usd"):
            value = part[unit]
            if value is not None and unit == "usd":
                value += reserve
            out[unit] = None if value is None or not reference[unit] else 1.0 - value / reference[unit]
        return out

    # One pivot per gate that allows it: the next-best variant runs that gate's stage.
    pivots, warnings = [], []
    for i, stage in enumerate(stages[:-1]):
        if config["stages"][stage]["gate"].get("pivot"):
            row = rows[i]
            usd = None if row["usd_variants"] is None or not row["variants"] else row["usd_variants"] / row["variants"]
            pivots.append({"gate": stage, "usd": usd})
            if usd is not None and usd > reserve + 1e-9:
                warnings.append(
                    f"gate {stage} may pivot to one more variant at stage {stage} (~${usd:.2f}), but cost.reserve_usd is "
                    f"${reserve:.2f}: the pivot would not run"
                )
    dearer = [
        f"{unit} {staged[unit]:.4g} vs {naive[unit]:.4g}"
        for unit in ("flops", "gpu_hours", "usd")
        if staged[unit] is not None and naive[unit] and staged[unit] > naive[unit]
    ]
    if dearer:
        warnings.append(
            "staging costs MORE than running every variant at the last stage (" + "; ".join(dearer) + "): few variants, "
            "early stages long or with many seeds, the baseline re-run at every stage, or slower GPUs in early stages "
            "(docs/statistics.md, 'When staging pays off')"
        )
    if budget is not None and staged["usd"] is not None and staged["usd"] + reserve > budget + 1e-9:
        warnings.append(
            f"the staged plan with the baseline's reference runs (${staged['usd']:.2f}) plus the reserve "
            f"(${reserve:.2f}) exceeds cost.budget_usd ${budget:.2f}"
        )
    return {
        "study": config["study"],
        "vocab_size": vocab_size,
        "vocab_source": vocab_source,
        "planning_mfu": mfu,
        "stages": rows,
        "pivots": pivots,
        "reserve_usd": reserve,
        "budget_usd": budget,
        "staged": staged,
        "naive": naive,
        "savings": saving(staged, naive),
        "staged_min": fewest,  # a sequential last stage deciding every variant at its first look
        "savings_max": saving(fewest, naive),
        "seed001": {**seed, "savings": saving(seed, seed["naive"])},
        "warnings": warnings,
    }


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def plan_frame(plan: dict) -> pd.DataFrame:
    """The plan as a table: one row per stage, then reserve, staged totals, budget, naive and
    savings (FLOPs, GPU-hours, dollars)."""
    rows = []
    for r in plan["stages"]:
        hw = r["hardware"]
        where = f"{hw['gpus']} x {hw['gpu_model'] or 'GPU'}" if hw["gpus"] else f"{hw['processes']} CPU process(es)"
        rows.append({
            "row": f"stage {r['stage']}",
            "hardware": where,
            "runs": f"{r['variants'] if not r['first'] else r['variants'] + 1} variant(s) x {r['seeds']} seeds"
                    + ("" if r["first"] else f" + baseline x {r['seeds']}")
                    + (f"; {r['continued_runs']} continued ({r['steps_saved']:,} steps saved)" if r.get("continued_runs") else "")
                    + (f"; sequential looks {r['looks']}: {r['runs_min']}-{r['runs']} runs, FLOPs "
                       f"{_num(r['flops_min'], '.3g')}-{_num(r['flops'], '.3g')}" if r.get("looks") else ""),
            "FLOPs": _num(r["flops"], ".3g"),
            "GPU-hours": _num(r["gpu_hours"], ".2f"),
            "$/run": _num(r["usd_per_run"], ".2f"),
            "$ variants": _num(r["usd_variants"] if not r["first"] else r["usd"], ".2f"),
            "$ baseline": "(in variants)" if r["first"] else _num(r["usd_baseline"], ".2f"),
            "$ total": _num(r["usd"], ".2f"),
        })
    blank = {"hardware": "", "runs": "", "FLOPs": "", "GPU-hours": "", "$/run": "", "$ variants": "", "$ baseline": ""}
    reserve = plan["reserve_usd"]
    rows.append({**blank, "row": "reserve (pivot)", "$ total": f"{reserve:.2f}"})

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def totals(label: str, part: dict, naive: dict, saving: dict) -> None:
        usd = None if part["usd"] is None else part["usd"] + reserve
        rows.append({**blank, "row": label, "runs": f"{part['runs']} runs", "FLOPs": _num(part["flops"], ".3g"),
                     "GPU-hours": _num(part["gpu_hours"], ".2f"), "$ total": _num(usd, ".2f")})
        rows.append({**blank, "row": "  naive: every variant at the last stage", "runs": f"{naive['runs']} runs",
                     "FLOPs": _num(naive["flops"], ".3g"), "GPU-hours": _num(naive["gpu_hours"], ".2f"),
                     "$ total": _num(naive["usd"], ".2f")})
        rows.append({**blank, "row": "  saving vs naive (dollars: staged + reserve)", "FLOPs": pct(saving["flops"]),
                     "GPU-hours": pct(saving["gpu_hours"]), "$ total": pct(saving["usd"])})

    totals("staged + reserve: every run, baseline in every stage", plan["staged"], plan["naive"], plan["savings"])
    if any(r.get("looks") for r in plan["stages"]):
        totals("  fewest: the sequential last stage decides every variant at its first look", plan["staged_min"],
               plan["naive"], plan["savings_max"])
    seed = plan["seed001"]
    costs = (" + ".join(f"{x['stage']} {x['usd']:.0f}" for x in seed["stages"]) + f" + reserve {reserve:.0f} "
             if seed["usd"] is not None else "")
    totals(f"seed 001's accounting: {costs}(every run at the baseline's cost, no baseline after the first stage)",
           seed, seed["naive"], seed["savings"])
    if plan["budget_usd"] is not None:
        rows.append({**blank, "row": "budget", "$ total": f"{plan['budget_usd']:.2f}"})
    return pd.DataFrame(rows)


def plan_markdown(plan: dict) -> str:
    """The plan as Markdown: the table, the assumptions and the warnings."""
    lines = [
        f"# Compute plan: {plan['study']}",
        "",
        plan_frame(plan).to_markdown(index=False),
        "",
        f"FLOPs = tokens x 6N + 12LHQT per token (the trainer's flops_per_token); GPU-hours = FLOPs / (peak x "
        f"planning_mfu {plan['planning_mfu']}); vocab_size {plan['vocab_size']} ({plan['vocab_source']}). After a "
        "top_k gate k variants run on, after other gates every variant that reached them (an upper bound), at the "
        "mean cost of the non-baseline variants; the baseline runs in every stage.",
    ]
    if plan["warnings"]:
        lines += ["", *[f"**WARNING**: {w}" for w in plan["warnings"]]]
    return "\n".join(lines) + "\n"
