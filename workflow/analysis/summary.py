"""The study's one-page summary: the first thing the HTML report shows.

The library part; the CLI is ``python -m workflow.summary`` (workflow/summary.py).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

#: Cells with more characters than this (sentences such as a gate's reason) may wrap.
_LONG = 40

#: Verdict columns shown first (when present); every p-value column follows, then the verdict.
_VERDICT_FIRST = ["variant", "n", "mean", "std", "ci_95"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1em; color: #1f2328; max-width: 70em; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.4em; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1em; margin-bottom: 0.3em; } p.answer { font-size: 1.1em; }
div.table { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.4em 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 5px; text-align: right; vertical-align: top; }
td.num { white-space: nowrap; } td.long { overflow-wrap: break-word; min-width: 22em; }
th { background: #f6f8fa; font-weight: 600; } th.group { text-align: center; }
td.text, th.text { text-align: left; } td.word { white-space: nowrap; font-weight: 600; cursor: help; }
tr.advanced td, tr.winner td { background: #dafbe1; } img { max-width: 100%; }
.note { color: #59636e; font-size: 0.85em; } ul.reasons { margin-top: 0.2em; padding-left: 1.4em; }
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


def _header(name: str) -> str:
    """A column name that may break after ``_`` (``p_value_adjusted`` over two lines, not one wide one)."""
    return "_<wbr>".join(html.escape(part) for part in name.split("_"))


def _head_rows(columns: list[str], text: dict[str, bool]) -> str:
    """The table head: one row of leaf names; flattened nested keys (``vs_baseline.p_value``)
    get a second row above, one cell per group spanning its columns."""
    groups = [c.rsplit(".", 1)[0] if "." in c else "" for c in columns]
    leaves = "".join(f'<th class="{"text" if text[c] else ""}" title="{html.escape(c)}">{_header(c.rsplit(".", 1)[-1])}</th>'
                     for c in columns)
    if not any(groups):
        return f"<tr>{leaves}</tr>"
    top, i = [], 0
    while i < len(columns):
        j = i
        while j < len(columns) and groups[j] == groups[i]:
            j += 1
        top.append(f'<th class="group" colspan="{j - i}">{_header(groups[i])}</th>')
        i = j
    return f"<tr>{''.join(top)}</tr><tr>{leaves}</tr>"


def html_table(frame: pd.DataFrame, table_id: str, highlight: pd.Series | None = None, cls: str = "",
               titles: dict[str, list[str]] | None = None) -> str:
    """A DataFrame as an HTML table in a ``div.table`` (values formatted, text columns
    left-aligned, flattened nested columns under a group header); ``highlight``: a boolean per
    row marking rows with class ``cls``; ``titles``: per column, one hover text per row (the
    cell gets class ``word`` and a ``title`` attribute: a short word with its full sentence)."""
    text = {c: not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]) for c in frame}
    titles = titles or {}
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        marked = highlight is not None and bool(highlight.iloc[i])
        cells = []
        for c in frame:
            if c in titles:
                cells.append(f'<td class="text word" title="{html.escape(titles[c][i])}">{html.escape(_fmt(row[c]))}</td>')
            else:
                value = _fmt(row[c])  # a sentence may wrap (class long); numbers and names stay on one line
                kind = ("text" if text[c] else "num") + (" long" if len(value) > _LONG else "")
                cells.append(f'<td class="{kind.strip()}">{html.escape(value)}</td>')
        rows.append(f'<tr class="{cls if marked else ""}">{"".join(cells)}</tr>')
    return (f'<div class="table"><table id="{table_id}"><thead>{_head_rows(list(frame.columns), text)}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def verdict_word(entry: dict, baseline: str) -> str:
    """The verdict of one variant in a word or two: ``reference`` (the baseline), ``WINNER``,
    ``disqualified`` (a failed seed), ``seed ignored`` (a script that ignores the seed),
    ``not testable``, ``significant, no win`` (better than the baseline but the winners rule
    asks for more) or ``not significant``. The full sentence is ``entry["verdict"]``."""
    if entry.get("variant") == baseline:
        return "reference"
    if entry.get("winner"):
        return "WINNER"
    if entry.get("disqualified"):
        return "disqualified"
    if entry.get("seed_ignored") or "cannot win" in str(entry.get("verdict", "")):
        return "seed ignored" if entry.get("seed_ignored") else "cannot win"
    if (entry.get("vs_baseline") or {}).get("p_value_adjusted") is None:
        return "not testable"
    return "significant, no win" if entry.get("beats_baseline") else "not significant"


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
    results = verdict.get("results") or []
    sentences = [str(e.get("verdict", "")) for e in results]
    titles = {}
    if "verdict" in frame:  # a short word in the table; the sentence on hover and in full below it
        frame = frame.assign(verdict=[verdict_word(e, verdict.get("baseline", "")) for e in results])
        titles = {"verdict": sentences}
    parts.append(html_table(frame, "verdict-table", frame["variant"].isin(winners) if "variant" in frame else None,
                            "winner", titles))
    if "verdict" in frame:
        items = "".join(f"<li><strong>{html.escape(str(e.get('variant')))}</strong>: {html.escape(sentence)}</li>"
                        for e, sentence in zip(results, sentences))
        parts.append(f'<ul class="note reasons" id="verdict-reasons">{items}</ul>')
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
