"""Training curves against steps, training tokens and FLOPs."""

import json

from workflow.analysis.plots import plot_curves


def _metrics(path, tokens_per_step, flops_per_token=6.0):
    path.parent.mkdir(parents=True)
    rows = [{"step": s, "train_loss": 4.0 - 0.1 * s, "val_loss": 4.0 - 0.1 * s if s % 5 == 0 else None,
             "tokens_seen": sum(tokens_per_step[:s]), "flops": flops_per_token * sum(tokens_per_step[:s])}
            for s in range(0, 11)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_curves_have_step_token_and_flop_axes(tmp_path):
    base = _metrics(tmp_path / "baseline" / "seed_1" / "metrics.jsonl", [32 * 32] * 10)
    curriculum = _metrics(tmp_path / "curriculum" / "seed_1" / "metrics.jsonl", [32 * 8] * 3 + [32 * 16] * 3 + [32 * 32] * 4)
    out = tmp_path / "curves.png"
    fig = plot_curves("A", [base, curriculum], str(out), ["baseline", "curriculum"])
    assert out.stat().st_size > 1000
    axes = fig.axes
    assert [ax.get_xlabel() for ax in axes] == ["step", "training tokens", "training FLOPs"]
    def last_x(ax, label):
        line = next(line for line in ax.get_lines() if line.get_label() == label)
        return line.get_xdata()[-1]
    # equal steps, not equal data: after 10 steps the curriculum saw 6,400 tokens, the baseline 10,240
    assert last_x(axes[0], "curriculum") == last_x(axes[0], "baseline") == 10
    assert last_x(axes[1], "curriculum") == 32 * (3 * 8 + 3 * 16 + 4 * 32) < last_x(axes[1], "baseline") == 10 * 32 * 32
    # metrics without tokens / FLOPs columns: steps only
    old = tmp_path / "old" / "seed_1" / "metrics.jsonl"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"step": 1, "train_loss": 3.0, "val_loss": 3.0}) + "\n")
    assert [ax.get_xlabel() for ax in plot_curves("A", [str(old)], str(tmp_path / "o.png")).axes] == ["step"]
