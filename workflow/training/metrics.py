"""metrics.jsonl rows and the human-readable log line.

Rows are appended to ``metrics.partial.jsonl`` while the run trains (rank 0 only) and the file
is renamed to ``metrics.jsonl`` when the run ends; a resumed run first drops the rows written
after its checkpoint's step, so the final file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch._dynamo.utils import counters as _dynamo_counters

from workflow.core.io import disk_full_error, is_disk_full, write_text_atomic


class MetricsLog:
    """Writer of one run's metrics rows (a no-op on every rank but rank 0)."""

    def __init__(self, out_dir: Path, is_main: bool):
        self.is_main = is_main
        self.partial = Path(out_dir) / "metrics.partial.jsonl"
        self.final = Path(out_dir) / "metrics.jsonl"

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def start(self, resumed_step: int | None) -> None:
        """Fresh run: drop a stale partial file. Resumed: keep the rows up to ``resumed_step``."""
        if not self.is_main or not self.partial.exists():
            return
        if resumed_step is None:
            self.partial.unlink()
            return
        rows = [line for line in self.partial.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= resumed_step]
        write_text_atomic(self.partial, "".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        if self.is_main:
            try:
                with open(self.partial, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
            except OSError as err:
                if is_disk_full(err):
                    raise disk_full_error(self.partial, err) from None
                raise

    def finish(self) -> None:
        if self.is_main and self.partial.exists():
            os.replace(self.partial, self.final)


def compile_counts() -> dict[str, int]:
    """This process's ``torch.compile`` work so far (TorchDynamo's counters, process-global):

    * ``frames``: Python frames dynamo compiled, recompilations included (a recompilation is
      a second entry for a frame whose guards failed: new shapes, a changed attribute, ...);
    * ``graphs``: FX graphs handed to the backend (inductor) - one per frame, or more where a
      frame breaks into pieces;
    * ``graph_breaks``: graph breaks (calls dynamo cannot trace, e.g. a
      ``torch.compiler.disable``d function).

    Take differences of two snapshots (other models compiled in the same process count too).
    Source: ``torch._dynamo.utils.counters`` (``frames/total``, ``stats/unique_graphs``,
    ``graph_break``).
    """
    return {"frames": int(_dynamo_counters["frames"]["total"]),
            "graphs": int(_dynamo_counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(_dynamo_counters["graph_break"].values()))}


def log_line(row: dict, num_iterations: int) -> str:
    """``step 40/100 train_loss 2.1 val_loss 2.2 step_avg 12.0 ms ...`` for train.log."""
    parts = [f"step {row['step']}/{num_iterations}"]
    for key, fmt in (("train_loss", "{:.4f}"), ("val_loss", "{:.4f}"), ("val_loss_workers", "{:.4f}"),
                     ("consensus_distance", "{:.3e}")):
        if row.get(key) is not None:
            parts.append(f"{key} " + fmt.format(row[key]))
    if row.get("step_avg_ms") is not None:
        parts.append(f"step_avg {row['step_avg_ms']:.1f} ms")
    if row.get("mfu") is not None:
        parts.append(f"mfu {100 * row['mfu']:.1f}%")
    return " ".join(parts)
