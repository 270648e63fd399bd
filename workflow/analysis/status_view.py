"""The rich tables of ``workflow.status``: stages, running runs, failed / preempted runs, gates,
verdict (:func:`render` of :func:`workflow.analysis.status.study_status`'s dict).

Torch-free.
"""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from workflow.analysis.status_runs import STATES, format_duration


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "" if value is None else fmt.format(value)


_STYLE = {"done": "green", "running": "cyan", "pending": "dim", "failed": "red", "preempted": "yellow"}


def render(status: dict, interval_s: float | None = None, max_rows: int = 8) -> Group:
    """The status as rich tables: stages, running runs, failed/preempted runs (the first
    ``2 * max_rows``), gates (baseline, advanced and the first ``max_rows`` others), verdict."""
    parts: list = []
    head = Text.assemble(("study ", "bold"), (status["study"], "bold cyan"), f"  {status['results']}  {status['time']}")
    if status["snakemake"] is not None:
        procs = status["snakemake"]
        controllers = [str(p["pid"]) for p in procs if p.get("controller", True)]
        others = len(procs) - len(controllers)
        text = f"running (pid {', '.join(controllers)}" if controllers else ("jobs running" if others else "not running")
        if others:  # the Snakemake of each job (SLURM / group jobs): counted, not listed
            text += f"{'; ' if controllers else ' ('}{others} job process{'es' if others > 1 else ''}"
        head.append("  snakemake: " + text + (")" if controllers or others else ""),
                    style="green" if procs else "yellow")
    if interval_s:
        head.append(f"  (every {interval_s:g} s; Ctrl-C stops)", style="dim")
    parts.append(head)
    totals = status["totals"]
    parts.append(Text("  ".join(f"{totals[s]} {s}" for s in STATES)))

    stages = Table(title="stages", title_justify="left", expand=False)
    for col in ("stage", "variants", "seeds", "runs", *STATES):
        stages.add_column(col, justify="left" if col in ("stage", "variants") else "right")
    for row in status["stages"]:
        if row["variants"] is None:
            stages.add_row(row["stage"], Text(f"after {row['waiting_for']}", style="dim"), str(row["seeds"]),
                           f"<= {row['most_runs']}", "", "", Text("all", style="dim"), "", "")
            continue
        variants = ", ".join(row["variants"]) if len(row["variants"]) <= 4 else f"{len(row['variants'])} variants"
        counts = row["counts"]
        stages.add_row(row["stage"], variants or Text("none advanced", style="dim"), str(row["seeds"]),
                       str(row["runs"]), *[Text(str(counts[s]), style=_STYLE[s] if counts[s] else "dim") for s in STATES])
    parts.append(stages)
    for row in status["stages"]:  # a sequential last stage: who a look decided, the runs it spared
        decided = row.get("decided") or {}
        if row.get("not_needed") or decided:
            by_look: dict[tuple[int, int], list[str]] = {}
            for variant, d in decided.items():
                by_look.setdefault((d["look"], d["seeds"]), []).append(variant)
            said = [f"{', '.join(names)} decided at look {look} ({n} of {row['seeds']} seeds)"
                    for (look, n), names in sorted(by_look.items())]
            parts.append(Text(f"stage {row['stage']}: " + "; ".join(said + [f"{row['not_needed']} run{'s' if row['not_needed'] != 1 else ''} not needed"]),
                              style="dim"))

    # running runs, and runs whose SLURM job is queued (job id, reason and start from submission on)
    running = [r for r in status["runs"] if r["state"] == "running" or (r["state"] == "pending" and r["slurm_job"])]
    if running:
        slurm = any(r["slurm_job"] for r in running)
        table = Table(title="running / queued" if any(r["state"] == "pending" for r in running) else "running",
                      title_justify="left")
        columns = ("run", "step", "val_loss", "train_loss", "tokens/s", "ETA", *(("job", "node", "slurm") if slurm else ()))
        for col in columns:
            table.add_column(col, justify="left" if col in ("run", "node", "slurm") else "right")
        for r in running:
            step = f"{r['step'] if r['step'] is not None else '-'}/{r['total'] or '?'}"
            row = [r["name"], step, _num(r["val_loss"]), _num(r["train_loss"]), _num(r["tokens_per_s"], "{:,.0f}"),
                   format_duration(r["eta_s"])]
            if slurm:
                row += [r["slurm_job"] or "", r["node"] or "", r["slurm_state"] or ""]
            table.add_row(*row)
        parts.append(table)
        notes = [f"{r['name']}: {r['detail']}" for r in running if r["detail"]]
        if notes:
            parts.append(Text("\n".join(notes), style="dim"))

    trouble = [r for r in status["runs"] if r["state"] in ("failed", "preempted")]
    if trouble:
        slurm = any(r["slurm_job"] for r in trouble)
        table = Table(title="failed / preempted", title_justify="left")
        for col in ("run", "state", "step", *(("job", "node") if slurm else ()), "why"):
            table.add_column(col)
        for r in trouble[:2 * max_rows]:
            step = f"{r['step'] if r['step'] is not None else '-'}/{r['total'] or '?'}"
            job = [r["slurm_job"] or "", r["node"] or ""] if slurm else []
            shown = "requeued" if r["slurm_state"] == "requeued" else r["state"]
            table.add_row(r["name"], Text(shown, style=_STYLE[r["state"]]), step, *job, r["detail"] or "")
        if len(trouble) > 2 * max_rows:
            more = Text(f"... {len(trouble) - 2 * max_rows} more (--json lists every run)", style="dim")
            table.add_row(more, *[""] * (len(table.columns) - 1))
        parts.append(table)

    if status["slurm"] and not status["slurm"]["sacct"]:
        parts.append(Text(f"SLURM: the logs name {status['slurm']['jobs']} job(s), but sacct gave no answer",
                          style="yellow"))

    for gate in status["gates"]:
        for d in gate["decisions"]:
            title = f"{'pivot gate' if d['kind'] == 'pivot' else 'gate'} {d['stage']} ({d['rule']}): " + (
                f"advanced {', '.join(d['advanced'])}" if d["advanced"] else "nothing advanced")
            table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1))
            table.add_column("mark")
            table.add_column("variant")
            table.add_column("mean", justify="right")
            table.add_column("reason")
            shown = [r for r in d["rows"] if r["baseline"] or r["advanced"]]
            others = [r for r in d["rows"] if not (r["baseline"] or r["advanced"])]
            shown += others[:max_rows]
            for r in sorted(shown, key=d["rows"].index):
                mark = Text("=", style="dim") if r["baseline"] else (
                    Text("+", style="green") if r["advanced"] else Text("-", style="red"))
                table.add_row(mark, r["variant"], _num(r["mean"]), r["reason"])
            if len(others) > max_rows:
                table.add_row("", Text(f"... {len(others) - max_rows} more not advanced "
                                       f"(gates/gate_{d['stage']}.json)", style="dim"), "", "")
            parts.append(table)
            if d["pivot"]:
                parts.append(Text(f"  pivot: {d['pivot'][0] or 'none'}: {d['pivot'][1] or ''}", style="dim"))

    verdict = status["verdict"]
    if verdict is not None:
        winners = ", ".join(verdict["winners"]) or "none"
        rule = f" (winners rule: {verdict['winners_rule']})" if verdict.get("winners_rule") else ""
        table = Table(title=f"verdict: winners: {winners}{rule}", title_justify="left", show_header=False, box=None,
                      padding=(0, 1))
        table.add_column("mark")
        table.add_column("variant")
        table.add_column("mean", justify="right")
        table.add_column("verdict")
        for r in verdict["rows"]:
            mark = Text("*", style="bold green") if r["winner"] else ""
            table.add_row(mark, r["variant"], _num(r["mean"]), r["verdict"])
        parts.append(table)
        if len(verdict["rows"]) < 2:  # nothing tested: say why
            parts.append(Text(f"  {verdict['explanation']}", style="dim"))
    return Group(*parts)


def plain_text(renderable, width: int = 200) -> str:
    """A rendered status as plain lines (no colour, no trailing spaces): what a pipe or a file gets."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(renderable)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())
