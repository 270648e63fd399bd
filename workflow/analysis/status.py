"""Where a study stands: a table read at a glance (``python -m workflow.status``), like Ray Tune's
progress table.

It reads only what the study leaves on disk and what the scheduler says, never Snakemake's own
state, so it works from another shell while Snakemake runs, after a crash (Snakemake gone, its
jobs gone or orphaned) and on a study not yet started:

- the study's stages, variants and seeds, resolved as the Snakefile resolves them
  (:func:`load_study`: the study file(s), ``--config`` values, :func:`workflow.study.overrides.prepare_study`,
  the schema's defaults; stage order and seeds from :mod:`workflow.study`);
- per run folder ``{results_dir}/{study}/stage_<S>/<variant>/seed_<n>/`` (docs/architecture.md,
  "Results layout"): ``result.json`` (a finished run: ``success`` true = done, false = failed
  with its ``reason``), ``metrics.partial.jsonl`` (the rows of a run still training; renamed to
  ``metrics.jsonl`` when it ends), the latest ``train.attempt-N.log`` (workflow.launch: one per
  attempt; it holds ``PREEMPTED`` after exit 75, a traceback or ``error:`` after a failure, and
  ``SLURM job <id> on <node>`` under SLURM) and ``checkpoint/{a,b}/manifest.json`` (the step a
  preempted run resumes from);
- ``gates/gate_<S>.json`` (+ ``gate_<S>_pivot.json``) and ``verdict.json``;
- in a sequential last stage (``verdict.sequential``), ``looks/look_<k>.json`` (workflow.gates
  ``look``: its ``open`` variants): a variant counts only the seeds it runs
  (:func:`workflow.study.staging.variant_look_seeds`, as rules/common.smk's
  ``run_seeds``): the seeds of a look not written yet are pending, those after the look that
  decided it are not needed (left out of the counts; the stage row says "decided at look k");
- the scheduler: live processes on this machine (``psutil``: a job's ``python -m workflow.launch
  ... --out-dir RUN``, and Snakemake processes working in the study's directory), one ``squeue``
  call for the jobs the executor submitted from that directory (each training job's comment
  names its run: job id, node, state, pending reason and expected start from the moment it is
  queued) and, when the logs name SLURM jobs and ``sacct`` exists, one ``sacct`` call for their
  state and node (jobs that left the queue).

A run's state (:data:`STATES`), first match wins:

1. ``result.json``: ``done`` (success) or ``failed`` (its reason);
2. no attempt log: ``pending`` (``running`` if a process already works in the folder or its
   queued SLURM job runs; a queued job gives its id, reason and expected start);
3. a live process for the folder, or its SLURM job RUNNING: ``running``;
4. the latest attempt log ends in a preemption (``PREEMPTED``, job exit status 75): ``preempted``
   (its step is the checkpoint's it resumes from; with its job back in the queue it shows
   ``requeued`` with SLURM's reason, expected start and, for ``BeginTime``, the ``scontrol`` line
   that starts it now); in a failure (traceback, ``error:``, another exit status): ``failed``
   (``pending`` when the executor's retry is queued); in the trainer's last
   line (``finished:``), although result.json is gone: ``pending`` (Snakemake removed the outputs
   to run it again);
5. its SLURM job ended (sacct FAILED, TIMEOUT, CANCELLED, ...): ``failed`` (``PREEMPTED``:
   ``preempted``); queued again (PENDING, REQUEUED): ``pending``;
6. otherwise the folder's newest write decides: within ``stale_after_s`` (default 300 s) the run
   is ``running`` (on a host whose processes are not visible here), later ``failed`` (stopped
   without a result: killed, or the machine went away).

Stages after a gate list the variants it advanced once the gate ran (the baseline first, then the
advanced ones, plus the gate's pivot variant: exactly ``rules/common.smk``'s ``stage_variants``);
before, they wait ("after gate A") with the most runs they can hold.

Torch-free; the only third-party imports are yaml, psutil (processes) and rich (rendering).
"""

from __future__ import annotations

import datetime
import json
import itertools
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from workflow.study.staging import variant_look_seeds
from workflow.analysis.status_runs import (
    STALE_AFTER_S,
    STATES,
    RunStatus,
    attempt_logs,
    log_slurm_job,
    run_status,
)
from workflow.analysis.status_scheduler import run_comment, sacct_jobs, scan_processes, squeue_jobs
from workflow.analysis.status_view import render
from workflow.data.registry import study_meta_path
from workflow.study.gate_rules import most_advancing
from workflow.study.length import run_steps, study_train_tokens
from workflow.core.io import read_json
from workflow.study.overrides import cli_value, prepare_study
from workflow.study.resolve import deep_merge, run_config, stage_order, stage_seeds, study_with_defaults
from workflow.study.schema import ConfigError
from workflow.study.study_file import load_study_file

__all__ = ["POLL_INTERVAL_S", "StatusFileError", "STALE_AFTER_S", "STATES", "load_study", "parse_config_args", "render", "study_status"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = "config/config.yaml"
#: Default seconds between refreshes of ``--watch`` (each refresh: the run folders + one sacct call).
POLL_INTERVAL_S = 5.0


class StatusFileError(ValueError):
    """A file of the study's results that exists but cannot be what it should be (corrupt JSON,
    wrong types); the message names the file, what is wrong and what to do."""


# --------------------------------------------------------------------------- the study

def parse_config_args(items: Iterable[str]) -> dict:
    """Snakemake's ``--config KEY=VALUE ...``: top-level keys, values read as Snakemake reads them
    (:func:`workflow.study.overrides.cli_value`).

    Raises:
        ValueError: an item without ``=``.
    """
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--config {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        out[key.strip()] = cli_value(text)
    return out


def load_study(configfiles: Iterable[str | os.PathLike] = (), overrides: dict | None = None,
               directory: str | os.PathLike = ".") -> dict:
    """The study as the Snakefile resolves it: the study file(s) (``--configfile``; none: the
    default ``config/config.yaml`` of ``directory``, else of the repository) merged in order,
    ``--config`` values on top (Snakemake merges both recursively), then ``set`` overrides and the
    sweep (:func:`workflow.study.overrides.prepare_study`), the schema checks and its defaults.

    Raises:
        workflow.study.schema.ConfigError: the study is invalid (naming the key), a study file is
            not valid YAML or writes a key twice (naming the file and line), ``directory`` or a
            study file does not exist.
        OSError: a study file cannot be read.
    """
    if not Path(directory).is_dir():
        raise ConfigError(f"--directory {str(directory)!r} does not exist (it is Snakemake's --directory: the "
                          "folder that holds results_dir)")
    files = [Path(f) for f in configfiles]
    for path in files:
        if not path.is_file():
            raise ConfigError(f"--configfile {str(path)!r}: no such file")
    if not files:
        default = Path(directory) / DEFAULT_STUDY
        files = [default if default.is_file() else REPO_ROOT / DEFAULT_STUDY]
    config: dict = {}
    for path in files:
        config = deep_merge(config, load_study_file(path))
    config = deep_merge(config, overrides or {})
    try:
        prepare_study(config)
        return study_with_defaults(config)
    except ConfigError as err:
        raise ConfigError(f"{', '.join(map(str, files))}: {err}") from None


def results_folder(config: dict, directory: str | os.PathLike = ".") -> Path:
    """``{results_dir}/{study}`` (a relative results_dir is relative to Snakemake's ``--directory``)."""
    return Path(directory) / config["results_dir"] / config["study"]


def read_decision(path: Path, what: str) -> dict | None:
    """A gate decision, the verdict or a look (``what`` names it: "look <k>"), None while the file does not exist.

    Raises:
        StatusFileError: the file exists but is not JSON, or not a decision (``advanced`` /
            ``winners`` not a list of names, ``ranking`` / ``results`` not a list of rows; a
            look's ``open`` missing or not a list of names);
            naming the file, what is wrong and how to make it again.
    """
    if not path.is_file():
        return None
    redo = f"delete it and run snakemake again to make the {what} again from its runs"
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise StatusFileError(f"{path}: corrupt, not JSON ({str(err).replace(f'{path}: ', '')}); {redo}") from None
    if not isinstance(data, dict):
        raise StatusFileError(f"{path}: corrupt, a {type(data).__name__}, not the {what}'s JSON object; {redo}")
    if what.startswith("look"):  # looks/look_<k>.json of a sequential last stage: the variants still open
        checks = (("open", str, None),)
    else:
        names, rows = ("winners", "results") if what == "verdict" else ("advanced", "ranking")
        checks = ((names, str, []), (rows, dict, []))
    for key, kind, missing in checks:
        value = data.get(key, missing)
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            expected = "a list of variant names" if kind is str else "a list of rows (JSON objects)"
            raise StatusFileError(f"{path}: corrupt, {key} is {json.dumps(value)[:60]}, not {expected}; {redo}")
    return data


def gate_decision(results: Path, stage: str) -> dict | None:
    """The final decision of ``stage``'s gate (the pivot gate's when the gate pivoted), None until
    it is known (rules/common.smk ``gate_decision``).

    Raises:
        StatusFileError: a gate file exists but is corrupt (:func:`read_decision`).
    """
    decision = read_decision(results / "gates" / f"gate_{stage}.json", f"gate {stage} decision")
    if decision is not None and (decision.get("pivot") or {}).get("run"):
        decision = read_decision(results / "gates" / f"gate_{stage}_pivot.json", f"gate {stage} pivot decision")
    return decision


def stage_pivot(config: dict, results: Path, stage: str) -> str | None:
    """The variant that runs ``stage`` as its gate's pivot, or None (rules/common.smk ``stage_pivot``)."""
    gate = config["stages"][stage].get("gate")
    if not gate or not gate.get("pivot"):
        return None
    pivot = (read_decision(results / "gates" / f"gate_{stage}.json", f"gate {stage} decision") or {}).get("pivot") or {}
    return pivot.get("variant") if pivot.get("run") else None


def stage_variants(config: dict, results: Path, stage: str) -> tuple[list[str] | None, str | None]:
    """(variants that run ``stage``, None) once known, else (None, "gate <previous stage>").

    All variants in the first stage; afterwards the baseline plus those the previous gate
    advanced (none advanced: no runs), plus the stage's pivot variant (rules/common.smk
    ``stage_variants``)."""
    stages = stage_order(config)
    index = stages.index(stage)
    if index == 0:
        variants = list(config["variants"])
    else:
        previous = stages[index - 1]
        decision = gate_decision(results, previous)
        if decision is None:
            return None, f"gate {previous}"
        if not decision.get("advanced"):
            return [], None
        baseline = config["baseline"]
        variants = [baseline] + [v for v in decision["advanced"] if v != baseline]
    pivot = stage_pivot(config, results, stage)
    return variants + ([pivot] if pivot and pivot not in variants else []), None


def most_variants(config: dict, stage: str) -> int:
    """The most variants ``stage`` can run (workflow.study.printed_plan.printed_plan's count, without resolving runs)."""
    stages = stage_order(config)
    most = len(config["variants"])
    for previous, current in itertools.pairwise(stages):
        most = 1 + most_advancing(config["stages"][previous]["gate"], most - 1)  # + the baseline
        if current == stage:
            break
    return most


def variant_seeds(config: dict, results: Path, stage: str, variant: str,
                  problems: list[str]) -> tuple[list[int], int | None]:
    """(seeds ``variant`` runs in ``stage``, the look that decided it or None): every seed of the
    stage, but in a sequential last stage only those of the looks it stays open for (a look not
    written yet, or corrupt (said in ``problems``), counts as open: its seeds stay pending)."""
    seeds = stage_seeds(config, stage)
    sequential = config["verdict"].get("sequential")
    if not sequential or stage != stage_order(config)[-1]:
        return seeds, None

    def look(k: int) -> dict | None:
        try:
            return read_decision(results / "looks" / f"look_{k}.json", f"look {k}")
        except StatusFileError as err:
            if str(err) not in problems:
                problems.append(str(err))
            return None

    return variant_look_seeds(seeds, sequential["looks"], variant, config["baseline"], look)


def _planned_total(config: dict, stage: str, variant: str, train_tokens: int | None) -> int | None:
    """Steps the study gives a run (workflow.study.length.run_steps, the trainer's own count); None
    for a length in epochs before the dataset is tokenized (the trainer's log names it later)."""
    try:
        return run_steps(run_config(config, stage, variant, stage_seeds(config, stage)[0]), train_tokens)
    except (ValueError, KeyError):
        return None


def _gate_entry(results: Path, stage: str, problems: list[str]) -> dict | None:
    try:
        first = read_decision(results / "gates" / f"gate_{stage}.json", f"gate {stage} decision")
        pivot = (first or {}).get("pivot") or {}
        second = None
        if pivot.get("run"):
            second = read_decision(results / "gates" / f"gate_{stage}_pivot.json", f"gate {stage} pivot decision")
    except StatusFileError as err:
        if str(err) not in problems:  # also found while listing the stage's variants
            problems.append(str(err))
        return None
    if first is None:
        return None
    entries = [first] + ([second] if second is not None else [])
    out = []
    for i, decision in enumerate(entries):
        params = decision.get("params") or {}
        rule = decision.get("rule", "?")
        if rule == "top_k" and "k" in params:
            rule += f" k={params['k']}"
        out.append({
            "stage": stage,
            "kind": "pivot" if i else "gate",
            "rule": rule,
            "advanced": list(decision.get("advanced") or []),
            "rows": [{"variant": r.get("variant"), "advanced": bool(r.get("advanced")),
                      "baseline": r.get("variant") == decision.get("baseline"), "mean": r.get("mean"),
                      "reason": r.get("reason", "")} for r in decision.get("ranking") or []],
            "pivot": (pivot.get("variant"), pivot.get("reason")) if i == 0 and pivot else None,
        })
    return {"stage": stage, "decisions": out}


def _verdict_entry(results: Path, problems: list[str]) -> dict | None:
    try:
        verdict = read_decision(results / "verdict.json", "verdict")
    except StatusFileError as err:
        problems.append(str(err))
        return None
    if verdict is None:
        return None
    rule = verdict.get("winners_rule")
    return {
        "winners": list(verdict.get("winners") or []),
        "winners_rule": rule,
        "explanation": verdict.get("explanation", ""),
        "rows": [{"variant": e.get("variant"), "mean": e.get("mean"), "winner": bool(e.get("winner")),
                  # the verdict's "(winners: <rule>)" names the rule: say so, as the verdict line does
                  "verdict": e.get("verdict", "").replace(f"(winners: {rule})", f"(winners rule: {rule})")}
                 for e in verdict.get("results") or []],
    }


def study_status(config: dict, directory: str | os.PathLike = ".", *, scheduler: bool = True,
                 stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> dict:
    """Where the study stands, as a JSON-able dict (what ``--json`` prints and :func:`render` draws).

    Returns:
        ``{"study", "results", "time", "snakemake": [{"pid", "directory"}] | None, "slurm":
        {"sacct": bool, "jobs": n} | None, "totals": {state: n}, "stages": [{"stage", "variants"
        (None: after a gate), "waiting_for", "seeds", "runs", "most_runs", "counts": {state: n},
        "gate", "decided": {variant: {"look", "seeds"}}, "not_needed"}] (a sequential last stage:
        the look after which a variant runs no more seeds, and the runs no variant needs, left out
        of runs and counts), "runs": [RunStatus as dicts, every run of the known stages], "gates": [...],
        "verdict": {...} | None, "problems": [one line per corrupt file or missing folder]}``.
    Args:
        scheduler: also ask the scheduler (processes of this machine, sacct); False: files only.
    """
    now = time.time() if now is None else now
    directory = Path(directory)
    results = results_folder(config, directory)
    stages = stage_order(config)
    processes = scan_processes() if scheduler else None

    problems: list[str] = []
    if not results.is_dir():
        problems.append(f"{results}: the results folder does not exist: the study has not started here, or "
                        "--directory / results_dir / study is not the one Snakemake ran with")
    plan = []
    for stage in stages:
        try:
            variants, waiting = stage_variants(config, results, stage)
        except StatusFileError as err:  # a corrupt gate file: its stage's variants are not known
            if str(err) not in problems:
                problems.append(str(err))
            variants, waiting = None, f"gate {stages[stages.index(stage) - 1]} (its decision file is corrupt)"
        plan.append((stage, variants, waiting))
    # SLURM job ids the logs name (one sacct call for all of them)
    job_ids = []
    if scheduler and shutil.which("sacct"):
        for stage, variants, _ in plan:
            for variant in variants or []:
                for seed in variant_seeds(config, results, stage, variant, problems)[0]:
                    run_dir = results / f"stage_{stage}" / variant / f"seed_{seed}"
                    if (run_dir / "result.json").exists():
                        continue
                    logs = attempt_logs(run_dir)
                    if logs and (job := log_slurm_job(logs[-1])):
                        job_ids.append(job)
    slurm = sacct_jobs(job_ids) if job_ids else None
    queued = (squeue_jobs(directory) or {}) if scheduler else {}  # the executor's jobs, by the run in their comment

    data_dir = Path(directory) / config["data_dir"]  # a relative data_dir is relative to --directory, as results_dir
    train_tokens = study_train_tokens(Path(study_meta_path({**config, "data_dir": str(data_dir)})))
    runs: list[RunStatus] = []
    stage_rows = []
    for stage, variants, waiting in plan:
        seeds = stage_seeds(config, stage)
        counts = dict.fromkeys(STATES, 0)
        planned, decided = 0, {}
        for variant in variants or []:
            total = _planned_total(config, stage, variant, train_tokens)
            mine, look = variant_seeds(config, results, stage, variant, problems)
            planned += len(mine)
            if look is not None and variant != config["baseline"]:
                decided[variant] = {"look": look, "seeds": len(mine)}
            for seed in mine:
                rs = run_status(results / f"stage_{stage}" / variant / f"seed_{seed}", stage, variant, seed,
                                planned_total=total, processes=processes, slurm=slurm, now=now,
                                stale_after_s=stale_after_s, queued=queued.get(run_comment(stage, variant, seed)))
                counts[rs.state] += 1
                runs.append(rs)
        stage_rows.append({
            "stage": stage,
            "variants": variants,
            "waiting_for": waiting,
            "seeds": len(seeds),
            "runs": None if variants is None else planned,
            "most_runs": most_variants(config, stage) * len(seeds),
            "counts": counts if variants is not None else None,
            "gate": (config["stages"][stage].get("gate") or {}).get("rule"),
            # a sequential last stage: variant (not the baseline) -> {look after which it runs no more
            # seeds, its seeds}; the runs not needed (left out of runs and counts)
            "decided": decided,
            "not_needed": 0 if variants is None else len(variants) * len(seeds) - planned,
        })
    totals = dict.fromkeys(STATES, 0)
    for rs in runs:
        totals[rs.state] += 1
    mine = None
    if processes is not None:
        where = str(directory.resolve())
        mine = [p for p in processes.snakemake if p["directory"] == where]
    return {
        "study": config["study"],
        "results": str(results),
        "time": datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
        "snakemake": mine,
        "slurm": None if not job_ids else {"sacct": slurm is not None, "jobs": len(set(job_ids))},
        "totals": totals,
        "stages": stage_rows,
        "runs": [asdict(rs) | {"name": rs.name} for rs in runs],
        "gates": [g for stage in stages[:-1] if (g := _gate_entry(results, stage, problems))],
        "verdict": _verdict_entry(results, problems),
        "problems": problems,
    }


