"""The few lines every ``snakemake`` call of a study ends with (torch-free; the Snakemake
process runs it from its ``onsuccess`` / ``onerror`` handlers, rules/warm.smk).

For each stage: the runs of the study's variants and seeds that have a result, how many
succeeded and failed (with the first failure's reason), the gate's advanced variants; then the
verdict's winners or why there is none, and where the summary and report are. It also says
whether the call should end with a non-zero exit status (:func:`study_failed`): a stage whose
runs all failed, or a study whose every run failed (the study's ``exit_nonzero_on_failure:
false`` turns that off).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

#: a failure reason is cut to this many characters in the summary
REASON_CHARS = 160


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_runs(results: Path, stage: str, variants: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """result.json of every run of ``stage`` (of ``variants`` x ``seeds``) that has one.

    Only runs that have a result count, so ``seeds`` can be all of the stage's: in a sequential
    last stage the seeds a variant never runs (decided at an earlier look) have no result.json
    and are not counted, as ``workflow.status`` leaves them out."""
    out = []
    for variant in variants:
        for seed in seeds:
            result = _read(results / f"stage_{stage}" / variant / f"seed_{seed}" / "result.json")
            if result is not None:
                out.append(result)
    return out


def _cut(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " [...]"


def collect(results: str | Path, stages: Sequence[str], variants: Sequence[str],
            seeds: Mapping[str, Sequence[int]]) -> dict:
    """What the summary shows: ``{"stages": [{stage, runs, done, failed, first_failure, gate}],
    "verdict": dict | None}`` (``gate``: the gate's decision file, None when it has none yet)."""
    results = Path(results)
    rows = []
    for stage in stages:
        runs = stage_runs(results, stage, variants, seeds[stage])
        failed = [r for r in runs if not r.get("success")]
        first = failed[0] if failed else None
        rows.append({
            "stage": stage, "runs": len(runs), "done": len(runs) - len(failed), "failed": len(failed),
            "first_failure": (f"{first.get('variant')} seed {first.get('seed')}: {_cut(first.get('reason') or '?')}"
                              if first else None),
            "gate": _read(results / "gates" / f"gate_{stage}.json"),
        })
    return {"stages": rows, "verdict": _read(results / "verdict.json")}


def study_failed(summary: Mapping) -> str | None:
    """Why the call should exit non-zero (None: it should not): a stage with runs but no
    successful one, or no successful run in the whole study."""
    stages = [s for s in summary["stages"] if s["runs"]]
    if not stages:
        return None
    dead = [s["stage"] for s in stages if s["done"] == 0]
    if len(dead) == len(stages):
        return "every run of the study failed"
    if dead:
        return f"stage {', '.join(dead)} has no successful run"
    return None


def outcome_lines(summary: Mapping) -> list[str]:
    """The winners or why there is none, one line each."""
    verdict = summary["verdict"]
    if verdict is None:
        return ["verdict: not reached yet"]
    if verdict.get("winners"):
        return [f"verdict: winner(s) {', '.join(verdict['winners'])}"]
    lines = ["verdict: no winner"]
    for entry in verdict.get("results") or []:
        if entry.get("variant") != verdict.get("baseline"):
            lines.append(f"  {entry.get('variant')}: {_cut(entry.get('verdict') or entry.get('reason') or '')}")
    return lines


def render(summary: Mapping, study: str, results: str | Path, reason: str | None) -> str:
    """The summary as text: a table (rich) and the outcome lines."""
    table = Table(title=f"stagerun: study {study}", title_justify="left", box=None, pad_edge=False)
    for column in ("stage", "runs", "done", "failed", "gate / first failure"):
        table.add_column(column, justify="right" if column in ("runs", "done", "failed") else "left")
    for row in summary["stages"]:
        gate = row["gate"]
        note = (f"advanced: {', '.join(gate['advanced']) or 'none'}" if gate else "")
        if row["first_failure"]:
            note = (note + "; " if note else "") + f"failed: {row['first_failure']}"
        table.add_row(row["stage"], str(row["runs"]), str(row["done"]), str(row["failed"]), note)
    buffer = io.StringIO()
    Console(file=buffer, width=400, force_terminal=False, color_system=None).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()] + outcome_lines(summary)
    lines.append(f"summary: {Path(results) / 'summary.html'}; report: snakemake --report {Path(results) / 'report.html'}")
    if reason:
        lines.append(f"stagerun: exit status 1: {reason} (exit_nonzero_on_failure: false in the study turns this off)")
    return "\n".join(lines)


def end_of_call(config: Mapping, results: str | Path, stages: Sequence[str], seeds: Mapping[str, Sequence[int]]) -> tuple[str, bool]:
    """(the summary text, whether the call should exit non-zero) for the study ``config``."""
    summary = collect(results, stages, list(config["variants"]), seeds)
    reason = study_failed(summary)
    if config.get("exit_nonzero_on_failure") is False:
        reason = None
    return render(summary, config["study"], results, reason), reason is not None
