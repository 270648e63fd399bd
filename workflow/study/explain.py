"""``why_rerun``: which config keys changed for each finished run; the report path of a study file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workflow.core.io import sha256_file
from workflow.study.resolve import run_config, stage_seeds
from workflow.study.schema import ConfigError, load_schema
from workflow.study.study_file import load_study_file

# ---- why runs rerun ---------------------------------------------------------------------
#: what a script run's result.json says instead of an env value (workflow.jobs.script_result.NOT_RECORDED)
NOT_RECORDED = "(not recorded)"



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


def changed_files(recorded: dict) -> list[tuple[str, Any, Any]]:
    """(``file <path>``, old sha256, new sha256 or ``<absent>``) of each file a script run read
    (result.json ``trainer.script_sha256`` / ``inputs_sha256``) that is no longer the same."""
    trainer = recorded.get("trainer") if isinstance(recorded.get("trainer"), dict) else {}
    files = dict(trainer.get("inputs_sha256") or {})
    if trainer.get("script") and trainer.get("script_sha256"):
        files[trainer["script"]] = trainer["script_sha256"]
    out = []
    for path, digest in sorted(files.items()):
        now = sha256_file(path) if Path(path).is_file() else "<absent>"
        if now != digest:
            out.append((f"file {path}", f"sha256 {digest[:12]}", now if now == "<absent>" else f"sha256 {now[:12]}"))
    return out


def explain_reruns(config: dict, results_dir: str | Path, trainers: dict | None = None) -> str:
    """Why finished runs of the study would rerun: for every ``result.json`` under
    ``results_dir`` (``stage_<S>/<variant>/seed_<n>/``), the keys of its recorded config
    (``model``, ``train``, dataset; for a script run ``trainer`` instead of ``model``, and the
    files it read whose sha256 changed) that differ from what the study gives it now, grouped by
    identical changes; and the runs whose stage or variant left the study. ``trainers``:
    (stage, variant) -> the path-resolved script trainer (rules/common.smk's SCRIPT_TRAINERS).

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
        if "trainer" in now or "trainer" in old:  # a script run: its trainer section and the files it read
            new.pop("model")  # (the script's own model: never recorded)
            trainer = (trainers or {}).get((stage, variant), now.get("trainer"))
            new["trainer"] = ({**trainer, "env": {k: NOT_RECORDED for k in trainer.get("env") or {}}}
                              if trainer else None)
        changes = diff_keys({k: old.get(k) for k in new}, new) + changed_files(recorded)
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
