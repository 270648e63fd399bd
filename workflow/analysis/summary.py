"""The study's one-page summary: the first thing the HTML report shows.

The library part; the CLI is ``python -m workflow.summary`` (workflow/summary.py).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

#: Verdict columns shown first (when present); every p-value column follows, then the verdict.
_VERDICT_FIRST = ["variant", "n", "mean", "std", "ci_95"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1f2328; max-width: 70em; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.4em; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1em; margin-bottom: 0.3em; } p.answer { font-size: 1.1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f6f8fa; } td.text, th.text { text-align: left; }
tr.advanced td, tr.winner td { background: #dafbe1; } img { max-width: 100%; }
.note { color: #59636e; font-size: 0.85em; }
"""


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def html_table(frame: pd.DataFrame, table_id: str, highlight: pd.Series | None = None, cls: str = "") -> str:
    """A DataFrame as an HTML table (values formatted, text columns left-aligned);
    ``highlight``: a boolean per row marking rows with class ``cls``."""
    text = {c: not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]) for c in frame}
    head = "".join(f'<th class="{"text" if text[c] else ""}">{html.escape(str(c))}</th>' for c in frame)
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        marked = highlight is not None and bool(highlight.iloc[i])
        cells = "".join(
            f'<td class="{"text" if text[c] else ""}">{html.escape(_fmt(row[c]))}</td>' for c in frame
        )
        rows.append(f'<tr class="{cls if marked else ""}">{cells}</tr>')
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def verdict_frame(verdict: dict) -> pd.DataFrame:
    """One row per variant of the verdict: the summary columns, every p-value column the
    verdict has (``vs_baseline.p_value``, ``vs_baseline.p_value_adjusted``, ...), the
    booleans and the verdict text. Nested keys are flattened with dots."""
    results = verdict.get("results") or []
    if not results:
        return pd.DataFrame(columns=["variant"])
    flat = pd.json_normalize(results, sep=".")
    p_columns = [c for c in flat if c.split(".")[-1].startswith("p_value") or c.startswith("p_")]
    bool_columns = [c for c in flat if c.startswith("beats_")]
    first = [c for c in _VERDICT_FIRST if c in flat]
    last = [c for c in ("verdict",) if c in flat]
    return flat[first + p_columns + bool_columns + last]


def gate_frame(gate: dict) -> pd.DataFrame:
    """One row per variant of a gate decision: variant, mean, std, runs, advanced, reason
    (and any other scalar column of the ranking)."""
    ranking = pd.json_normalize(gate.get("ranking") or [], sep=".")
    if ranking.empty:
        return pd.DataFrame(columns=["variant", "advanced", "reason"])
    first = [c for c in ("variant", "mean", "std", "successful_runs", "n_runs", "advanced") if c in ranking]
    extra = [c for c in ranking if c not in first and c not in ("reason", "ci_95", "failed_runs", "eligible")
             and ranking[c].map(lambda v: not isinstance(v, (list, dict))).all()]
    return ranking[first + extra + (["reason"] if "reason" in ranking else [])]


def winners_sentence(verdict: dict) -> str:
    winners = verdict.get("winners") or []
    baseline = verdict.get("baseline", "the baseline")
    if winners:
        return f"Winner{'s' if len(winners) > 1 else ''}: {', '.join(winners)} (significantly better than {baseline})."
    tested = [r["variant"] for r in verdict.get("results") or [] if r.get("variant") != baseline]
    if not tested:
        return f"No winner: no variant reached the last stage against {baseline}."
    return f"No winner: none of {', '.join(tested)} is significantly better than {baseline}."


def figure_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def summary_html(study: str, verdict: dict, gates: list[dict], compute: pd.DataFrame, figure: str | Path) -> str:
    """The one-page summary as a self-contained HTML document."""
    parts = [f"<h1>Study {html.escape(study)}: summary</h1>",
             f'<p class="answer" id="answer"><strong>{html.escape(winners_sentence(verdict))}</strong></p>']
    frame = verdict_frame(verdict)
    winners = set(verdict.get("winners") or [])
    parts.append("<h2>Verdict (last stage)</h2>")
    if verdict.get("explanation"):
        parts.append(f'<p class="note">{html.escape(verdict["explanation"])}</p>')
    parts.append(html_table(frame, "verdict-table", frame["variant"].isin(winners) if "variant" in frame else None, "winner"))
    parts.append("<h2>Gate decisions</h2>")
    for gate in gates:
        params = {k: v for k, v in (gate.get("params") or {}).items()}
        advanced = ", ".join(gate.get("advanced") or []) or "none"
        parts.append(f"<h3>Gate {html.escape(str(gate.get('stage')))}: {html.escape(str(gate.get('rule')))} "
                     f"({html.escape(_fmt(params))}); advanced: {html.escape(advanced)}</h3>")
        if gate.get("explanation"):
            parts.append(f'<p class="note">{html.escape(gate["explanation"])}</p>')
        g = gate_frame(gate)
        parts.append(html_table(g, f"gate-{gate.get('stage')}", g["advanced"].astype(bool) if "advanced" in g else None,
                                "advanced"))
        if gate.get("failed_runs"):
            failed = "; ".join(f"{v}: {len(runs)} failed run(s)" for v, runs in gate["failed_runs"].items())
            parts.append(f'<p class="note">Failed runs: {html.escape(failed)}</p>')
    if not gates:
        parts.append('<p class="note">The study has a single stage: no gates.</p>')
    parts.append("<h2>val_loss by stage</h2>")
    parts.append(f'<img id="val-loss-figure" alt="final val_loss per run, per stage and variant" src="{figure_uri(figure)}">')
    parts.append("<h2>Compute: staged vs naive</h2>")
    parts.append(html_table(compute, "compute-table"))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(study)}: summary</title>'
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def landing_rst(verdict: dict) -> str:
    """Two lines of reStructuredText for the report's landing page: the answer, and where the
    summary is (``1 Summary`` is the report category of summary.html)."""
    return (f"**{winners_sentence(verdict)}**\n\n"
            "The one-page summary (the verdict with its p-values, gate decisions with their reasons, "
            "val_loss by stage, compute staged vs naive) is the first result category, `1 Summary`_.\n")
