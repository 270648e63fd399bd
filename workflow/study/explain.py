"""``why_rerun``: which config keys changed for each finished run; the report path of a study file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workflow.study.resolve import run_config, stage_seeds
from workflow.study.schema import ConfigError, load_schema
from workflow.study.study_file import load_study_file

# ---- why runs rerun ---------------------------------------------------------------------


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two JSON-like values: (key, old, new);
    a key missing on one side shows as ``<absent>``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append((path, "<absent>", new[key]))
            elif key not in new:
                out.append((path, old[key], "<absent>"))
            else:
                out.extend(diff_keys(old[key], new[key], path))
        return out
    return [] if old == new else [(prefix, old, new)]


def explain_reruns(config: dict, results_dir: str | Path) -> str:
    """Why finished runs of the study would rerun: for every ``result.json`` under
    ``results_dir`` (``stage_<S>/<variant>/seed_<n>/``), the keys of its recorded config
    (``model``, ``train``, dataset) that differ from what the study gives it now, grouped by
    identical changes; and the runs whose stage or variant left the study.

    Returns:
        Text for a human (one block per change).
    """
    groups: dict[str, list[str]] = {}
    gone: list[str] = []
    checked = 0
    for path in sorted(Path(results_dir).glob("stage_*/*/seed_*/result.json")):
        stage = path.parent.parent.parent.name.removeprefix("stage_")
        variant, seed = path.parent.parent.name, int(path.parent.name.removeprefix("seed_"))
        run = f"{stage}/{variant}/seed_{seed}"
        if stage not in config["stages"] or variant not in config["variants"] or seed not in stage_seeds(config, stage):
            gone.append(run)
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            groups.setdefault(f"  result.json unreadable: {err}", []).append(run)
            continue
        checked += 1
        now = run_config(config, stage, variant, seed)
        old = {"dataset": recorded.get("dataset", now["dataset"]), **(recorded.get("config") or {})}
        new = {"dataset": now["dataset"], "model": now["model"], "train": now["train"]}
        changes = diff_keys({k: old.get(k) for k in new}, new)
        if changes:
            text = "\n".join(f"  {key}: {json.dumps(a)} -> {json.dumps(b)}" for key, a, b in changes)
            groups.setdefault(text, []).append(run)
    lines = [f"why_rerun: {checked} finished runs of study {config['study']!r} checked against the study's config"]
    if not groups and not gone:
        lines.append("no run's config changed (a rerun would come from other causes: code, inputs, launcher)")
    for text, runs in groups.items():
        lines.append(f"{len(runs)} run(s) changed ({', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''}):")
        lines.append(text)
    if gone:
        lines.append(f"{len(gone)} run(s) no longer in the study (stage, variant or seed removed): "
                     f"{', '.join(gone[:6])}{', ...' if len(gone) > 6 else ''}")
    return "\n".join(lines)



def report_path(study_file: str | Path) -> str:
    """``{results_dir}/{study}/report.html`` of a study file (results_dir: the file's, else the
    schema's default)."""
    study = load_study_file(study_file)
    if "study" not in study:
        raise ConfigError(f"{study_file}: no 'study' key")
    results_dir = study.get("results_dir") or load_schema()["properties"]["results_dir"]["default"]
    return f"{results_dir}/{study['study']}/report.html"
