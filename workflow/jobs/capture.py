"""Metrics of a user's training script, read from its output while it runs (torch-free).

Presets (the study's ``trainer.metrics``):

- ``nanogpt``: ``step 2000: train loss 1.7648, val loss 1.8857`` (an evaluation: ``val_loss``,
  ``train_eval_loss``) and ``iter 10: loss 3.9100, time 100.00ms, mfu 1.20%`` (``train_loss``,
  ``step_time_ms``, ``mfu_percent``);
- ``modded-nanogpt``: ``step:125/5100 val_loss:5.2340 train_time:15000ms step_avg:120.00ms``
  (``val_loss``, ``train_loss``, ``train_time_ms``, ``step_avg_ms``; the ``/5100`` is optional);
- ``jsonl``: only the rows the script appends to ``$STAGERUN_METRICS`` (JSON objects with
  ``step`` and any of ``val_loss``, ``train_loss``, ``tokens_seen``, ``flops``, ``lr``, ...);
- ``{"regex": {metric: pattern}}``: the user's patterns, each with one group (the group named
  after the metric, else the first); a ``step`` pattern gives the step (on the same line or an
  earlier one); without one, rows are numbered 0, 1, 2, ... in the order they are captured.

Rows the script appends to ``$STAGERUN_METRICS`` are read with every preset. Numbers may be
``nan`` / ``inf`` (a diverged run). Rows of one step merge (an evaluation line and a training
line of step 0 make one row); rows come out sorted by step, with ``step``, ``train_loss`` and
``val_loss`` always present (None where not captured): the built-in trainer's metrics.jsonl
schema, so curves, tables and plots read them unchanged.

**Segments**: a step counter that goes back within an attempt (per-epoch counters: steps
0/10/20, then 0/10) starts a new segment: its rows come after every row captured so far (their
``step`` shifted past the last one), so rows keep the order they were printed in and the result
is the last row captured. Each source (output lines, the metrics file) has its own counter; a
metrics file that was truncated or replaced is read again from its start (:meth:`restart_source`).

**Resume**: a capture can start from the rows of earlier attempts (``prior``); the first row of
this attempt at step ``s`` drops the earlier rows at steps ``>= s`` (the script resumed from a
checkpoint of step ``s`` or earlier and logs them again).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|[nN]a[nN]|-?[iI]nf(?:inity)?)"
_NANOGPT_EVAL = re.compile(rf"\bstep (\d+): train loss ({NUM}), val loss ({NUM})")
_NANOGPT_ITER = re.compile(rf"\biter (\d+): loss ({NUM}), time ({NUM})ms(?:, mfu ({NUM})%)?")
_MODDED_STEP = re.compile(r"\bstep:(\d+)(?:/\d+)?\s")
_MODDED_PAIR = re.compile(rf"\b(val_loss|train_loss|train_time|step_avg):({NUM})(ms)?")
_MODDED_KEYS = {"val_loss": "val_loss", "train_loss": "train_loss", "train_time": "train_time_ms",
                "step_avg": "step_avg_ms"}
#: metrics whose non-finite value fails the run
LOSS_KEYS = ("val_loss", "train_loss")
#: keys every row has (the built-in trainer's schema)
ROW_KEYS = ("step", "train_loss", "val_loss")


def _number(text: str) -> float:
    return float(text)


def describe_metrics(metrics) -> str:
    """The preset's name, or ``regex {metric: pattern, ...}`` (for failure reasons)."""
    if isinstance(metrics, Mapping):
        return "regex " + json.dumps(metrics.get("regex") or {}, sort_keys=True)
    return str(metrics)


class MetricsCapture:
    """Turns a script's output lines (and ``$STAGERUN_METRICS`` rows) into metrics rows.

    Args:
        metrics: the preset name or ``{"regex": {...}}`` (validated by the schema and
            trainer_section.check_section).
        prior: rows of earlier attempts of this run (resume), in step order.
    Attributes:
        nonfinite: ``(key, value_text, step)`` of the first NaN/inf loss captured, or None.
    """

    def __init__(self, metrics, prior: Iterable[dict] = ()):
        self.metrics = metrics
        self.rows: dict[int, dict] = {int(r["step"]): dict(r) for r in prior if r.get("step") is not None}
        self._prior_steps = set(self.rows)
        self._resumed = not self._prior_steps  # nothing to drop when there is nothing before
        self._last_step: int | None = None
        self._counter = 0
        self._last_raw: dict[str, int] = {}  # the last step each source (output, metrics file) gave
        self._offset: dict[str, int] = {}  # what a source's steps are shifted by (a restarted counter)
        self.segments = 0  # how often a step counter went back in this attempt
        self.nonfinite: tuple[str, str, int] | None = None
        self.dirty_steps: set[int] = set()
        self._regex = None
        if isinstance(metrics, Mapping):
            self._regex = {name: re.compile(p) for name, p in (metrics.get("regex") or {}).items()}

    # ------------------------------------------------------------------ input
    def feed_line(self, line: str) -> None:
        """One line of the script's output (without or with its newline)."""
        if self.metrics == "nanogpt":
            if "step " in line and (m := _NANOGPT_EVAL.search(line)):
                self._put(int(m.group(1)), {"train_eval_loss": _number(m.group(2)), "val_loss": _number(m.group(3))},
                          "line")
            elif "iter " in line and (m := _NANOGPT_ITER.search(line)):
                values = {"train_loss": _number(m.group(2)), "step_time_ms": _number(m.group(3))}
                if m.group(4) is not None:
                    values["mfu_percent"] = _number(m.group(4))
                self._put(int(m.group(1)), values, "line")
        elif self.metrics == "modded-nanogpt":
            if "step:" in line and (m := _MODDED_STEP.search(line + " ")):
                values = {_MODDED_KEYS[k]: _number(v) for k, v, _ in _MODDED_PAIR.findall(line)}
                if values:
                    self._put(int(m.group(1)), values, "line")
        elif self._regex is not None:
            self._feed_regex(line)

    def _feed_regex(self, line: str) -> None:
        values, step = {}, None
        for name, pattern in self._regex.items():
            m = pattern.search(line)
            if m is None:
                continue
            text = m.group(name) if name in pattern.groupindex else m.group(1)
            if text is None:
                continue
            if name == "step":
                try:
                    step = int(float(text))
                except ValueError:
                    continue
            else:
                try:
                    values[name] = _number(text)
                except ValueError:
                    continue
        if step is not None:
            self._last_step = step
        if not values:
            return
        if step is None:
            step = self._last_step if self._last_step is not None and "step" in self._regex else None
        if step is None:
            step = self._counter
            self._counter += 1
        self._put(step, values, "line")

    def feed_json(self, text: str) -> str | None:
        """One line of ``$STAGERUN_METRICS``; returns a warning for a line that is not a JSON
        object with an integer ``step``, else None."""
        text = text.strip()
        if not text:
            return None
        try:
            row = json.loads(text)
        except ValueError as err:
            return f"$STAGERUN_METRICS: not JSON ({err}): {text[:120]!r}"
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)) or isinstance(row.get("step"), bool):
            return f"$STAGERUN_METRICS: a row needs an integer step: {text[:120]!r}"
        values = {k: v for k, v in row.items() if k != "step" and (v is None or isinstance(v, (int, float, str)))}
        for key in LOSS_KEYS:  # "NaN" / "inf" as strings, JSON's NaN / Infinity as numbers
            if isinstance(values.get(key), str):
                try:
                    values[key] = float(values[key])
                except ValueError:
                    values.pop(key)
        self._put(int(row["step"]), values, "json")
        return None

    def restart_source(self, source: str = "json") -> None:
        """The metrics file was truncated or replaced and is read again from its start: its
        next rows restate steps (they merge), they do not start a new segment."""
        self._last_raw.pop(source, None)

    def _put(self, step: int, values: dict, source: str = "line") -> None:
        last = self._last_raw.get(source)
        self._last_raw[source] = step
        if last is not None and step < last and self.rows:
            # the script's step counter went back (a per-epoch counter, a restarted loop): a new
            # segment, placed after every row captured so far, so the result is the last row printed
            self._offset[source] = max(self.rows) + 1 - step
            self.segments += 1
        step += self._offset.get(source, 0)
        if not self._resumed:  # the first row of this attempt: earlier attempts' rows from here on go
            for old in [s for s in self._prior_steps if s >= step]:
                self.rows.pop(old, None)
            self._resumed = True
            self.dirty_steps.add(-1)  # tells the writer to rewrite its file once
        self._last_step = step
        row = self.rows.get(step)
        if row is None:
            row = self.rows[step] = {"step": step}
        row.update(values)
        self.dirty_steps.add(step)
        if self.nonfinite is None:
            for key in LOSS_KEYS:
                value = values.get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    self.nonfinite = (key, str(value), step)
                    break

    # ------------------------------------------------------------------ output
    def sorted_rows(self, tokens_per_step: int | None = None, flops_per_token: float | None = None) -> list[dict]:
        """Every row in step order with ``step``, ``train_loss``, ``val_loss`` present; NaN/inf
        kept as floats. ``tokens_seen`` = ``step x tokens_per_step`` where the script reports none,
        ``flops`` = ``tokens_seen x flops_per_token`` where it reports none (both when given)."""
        out = []
        for step in sorted(self.rows):
            row = {key: None for key in ROW_KEYS}
            row.update(self.rows[step])
            if row.get("tokens_seen") is None and tokens_per_step:
                row["tokens_seen"] = step * tokens_per_step
            if row.get("flops") is None and flops_per_token and row.get("tokens_seen") is not None:
                row["flops"] = float(row["tokens_seen"]) * flops_per_token
            out.append(row)
        return out

    def final(self, key: str):
        """The value of ``key`` in the last row (by step) that has one, else None."""
        for step in sorted(self.rows, reverse=True):
            value = self.rows[step].get(key)
            if value is not None:
                return value
        return None


def json_line(row: dict) -> str:
    """A metrics row as one JSON line (NaN/inf as JSON's NaN/Infinity, as the built-in trainer's)."""
    return json.dumps(row, sort_keys=True, allow_nan=True) + "\n"


# --------------------------------------------------------------------------- files

class LiveRows:
    """Writes the capture's rows to ``metrics.partial.jsonl`` while the script runs: a row when a
    later step starts (it is complete then), the whole file again after a resume dropped rows."""

    def __init__(self, path: Path, capture: MetricsCapture):
        self.path, self.capture = path, capture
        self.handle = open(path, "a", encoding="utf-8")
        self.written: set[int] = set()

    def flush(self, final: bool = False) -> None:
        dirty = self.capture.dirty_steps
        if not dirty:
            return
        if -1 in dirty:
            self.handle.close()
            with open(self.path, "w", encoding="utf-8") as handle:
                for step in sorted(self.capture.rows):
                    handle.write(json_line(self.capture.rows[step]))
            self.handle = open(self.path, "a", encoding="utf-8")
            dirty.clear()
            return
        last = max(self.capture.rows) if self.capture.rows else None
        for step in sorted(dirty):
            if (final or step < last) and step in self.capture.rows:
                self.handle.write(json_line(self.capture.rows[step]))
                dirty.discard(step)
        self.handle.flush()

    def close(self) -> None:
        self.flush(final=True)
        self.handle.close()


def load_rows(path: Path) -> list[dict]:
    """Rows of an earlier attempt's ``metrics.partial.jsonl`` (later lines of a step win)."""
    rows: dict[int, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
            rows.setdefault(int(row["step"]), {}).update(row)
        except (ValueError, KeyError, TypeError):
            continue
    return [rows[s] for s in sorted(rows)]
