"""Report figures (matplotlib, Agg backend, PNG written atomically).

The library part; the CLI is ``python -m workflow.plots`` (workflow/plots.py).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from workflow.core.io import atomic_write, read_json  # noqa: E402

matplotlib.use("Agg")


def save_figure(fig: plt.Figure, output: str) -> None:
    """Save ``fig`` as a PNG at ``output`` atomically and close it."""
    with atomic_write(output, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def load_metrics(paths: list[str]) -> pd.DataFrame:
    """Concatenate metrics.jsonl files; adds ``variant`` and ``seed`` from the run folder
    (``.../{variant}/seed_{seed}/metrics.jsonl``)."""
    frames = []
    for path in paths:
        p = Path(path)
        frame = pd.read_json(p, lines=True) if p.stat().st_size else pd.DataFrame(columns=["step"])
        frame["variant"] = p.parent.parent.name
        frame["seed"] = int(p.parent.name.removeprefix("seed_"))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "variant", "seed"])


def variant_colours(variants: list[str]) -> dict[str, str]:
    """A fixed colour per variant (matplotlib's cycle in the given order), the same in every figure."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(variants)}


#: x axes of the training-curve panels: metrics.jsonl column -> axis label.
CURVE_AXES = {"step": "step", "tokens_seen": "training tokens", "flops": "training FLOPs"}


def plot_curves(stage: str, metrics_paths: list[str], output: str, variants: list[str] | None = None,
                x_axes: tuple[str, ...] = ("step", "tokens_seen", "flops")) -> plt.Figure:
    """Validation (solid) and training (faint) loss of every run of a stage, one panel per x
    axis: steps, training tokens seen and training FLOPs (equal steps are not equal data: a
    curriculum variant sees fewer tokens per step). One colour per variant (fixed by
    ``variants``, the study's order), one line per seed; axes whose column the metrics lack
    are left out. Returns the (closed) figure."""
    data = load_metrics(metrics_paths)
    axes_present = [x for x in x_axes if x in data.columns and data[x].notna().any()] or ["step"]
    fig, axes = plt.subplots(1, len(axes_present), figsize=(6 * len(axes_present), 4.5), sharey=True, squeeze=False)
    present = sorted(set(data["variant"]))
    colours = variant_colours(list(variants or []) + [v for v in present if v not in (variants or [])])
    for ax, x in zip(axes[0], axes_present):
        for variant, runs in sorted(data.groupby("variant"), key=lambda kv: list(colours).index(kv[0])):
            colour = colours[variant]
            for j, (_, run) in enumerate(runs.groupby("seed")):
                run = run.sort_values("step")
                train = run.dropna(subset=["train_loss"]) if "train_loss" in run else run.iloc[0:0]
                val = run.dropna(subset=["val_loss"]) if "val_loss" in run else run.iloc[0:0]
                ax.plot(train[x], train["train_loss"], color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(val[x], val["val_loss"], color=colour, marker="o", markersize=2.5, linewidth=1.2,
                        label=variant if j == 0 else None)
        ax.set_xlabel(CURVE_AXES.get(x, x))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (nats/token)")
    fig.suptitle(f"Stage {stage}: val_loss (solid) and train_loss (faint) per seed, against " +
                 ", ".join(CURVE_AXES.get(x, x) for x in axes_present))
    if len(data):
        axes[0][0].legend(fontsize=8)
    save_figure(fig, output)
    return fig


def plot_val_loss_by_stage(summary_paths: list[str], output: str, variants: list[str] | None = None) -> None:
    """Final val_loss of every successful run, per stage and variant (in the order of
    ``variants``), with the mean and its 95 % CI."""
    summaries = [read_json(p) for p in summary_paths]
    stages = sorted({s["stage"] for s in summaries}, key=lambda s: [x["stage"] for x in summaries].index(s))
    present = sorted({s["variant"] for s in summaries})
    variants = list(variants or []) + [v for v in present if v not in (variants or [])]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4 * max(1, len(stages)), 4), sharey=True, squeeze=False)
    colours = variant_colours(variants)
    for ax, stage in zip(axes[0], stages):
        for x, variant in enumerate(variants):
            summ = next((s for s in summaries if s["stage"] == stage and s["variant"] == variant), None)
            if summ is None:
                continue
            losses = [r["final_val_loss"] for r in summ["runs"] if r["success"]]
            ax.scatter([x] * len(losses), losses, s=14, alpha=0.6, color=colours[variant])
            vl = summ["val_loss"]
            if vl["mean"] is not None:
                lo, hi = vl["ci_95"] or (vl["mean"], vl["mean"])
                ax.errorbar([x + 0.15], [vl["mean"]], yerr=[[vl["mean"] - lo], [hi - vl["mean"]]], fmt="k_", capsize=3)
        ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"Stage {stage}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("final val_loss (nats/token)")
    fig.suptitle("Final val_loss per run (variants without points did not advance); black: mean and 95% CI")
    save_figure(fig, output)
