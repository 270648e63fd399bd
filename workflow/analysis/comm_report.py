"""Communication-vs-loss report assets: the comm table and figures (rules/comm.smk).

The library part; the CLI is ``python -m workflow.comm_report`` (workflow/comm_report.py).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from workflow.analysis.plots import save_figure, variant_colours  # noqa: E402
from workflow.analysis.stats import paired_ttest, successful_val_losses, val_losses_by_seed, welch_ttest  # noqa: E402
from workflow.core.io import atomic_write, write_text_atomic  # noqa: E402

matplotlib.use("Agg")


def _tp(summary: dict) -> dict:
    return summary.get("tensor_parallel") or {}


def comm_variants(summaries: list[dict]) -> list[dict]:
    """Summaries of variants whose runs carry measured sync counts, fewest syncs last."""
    have = [s for s in summaries if _tp(s).get("syncs_measured") is not None]
    return sorted(have, key=lambda s: (-_tp(s)["syncs_measured"], s["variant"]))


def comm_table(summaries: list[dict], baseline: str) -> pd.DataFrame:
    """One row per variant with sync counts: pattern, tp_size / tp_mode / parallel_merge, syncs per
    forward pass (nominal = the seed write-up's rule, reference_code = what the seed's
    tensor_parallel_model.py runs for the pattern, analytic = from the pattern under the run's
    merge rule, measured = counted while training)
    and per backward pass (measured), parameters, final val_loss (runs, mean, std, CI95), the
    mean per-seed difference to ``baseline`` and its two-sided p-value, tokens_per_s (mean,
    ratio to the baseline's), step_ms (mean training step time, ms). Every block type has the same parameters, so run ``seed`` of each
    variant starts from the same weights and sees the same batches: the comparison is paired
    (``scipy.stats.ttest_rel`` on the shared seeds, as the study's verdict); variants that share
    fewer than 2 seeds with the baseline fall back to Welch's test (``test_vs_baseline`` says which).

    Returns:
        DataFrame, most syncs first.
    """
    rows = comm_variants(summaries)
    base = next((s for s in summaries if s["variant"] == baseline), None)
    base_by_seed = val_losses_by_seed(base) if base else {}
    base_tps = ((base or {}).get("tokens_per_s") or {}).get("mean")
    out = []
    for summ in rows:
        tp, vl = _tp(summ), summ["val_loss"]
        ci = vl["ci_95"] or [None, None]
        tps = (summ.get("tokens_per_s") or {}).get("mean")
        test, p, delta = None, None, None
        if summ["variant"] != baseline and base_by_seed:
            by_seed = val_losses_by_seed(summ)
            paired = paired_ttest(by_seed, base_by_seed, alternative="two-sided")
            if paired["n_pairs"] >= 2:
                test, p, delta = "paired", paired["p_value"], paired["mean_difference"]
            else:
                test = "welch"
                p = welch_ttest(list(by_seed.values()), list(base_by_seed.values()), alternative="two-sided")["p_value"]
                delta = (vl["mean"] - base["val_loss"]["mean"]) if vl["mean"] is not None else None
        out.append({
            "variant": summ["variant"],
            "pattern": pattern_text(tp.get("pattern") or []),
            "tp_size": tp.get("tp_size"),
            "tp_mode": tp.get("tp_mode"),
            "parallel_merge": tp.get("parallel_merge", "sum"),
            "syncs_nominal": tp.get("syncs_nominal"),
            "syncs_reference_code": tp.get("syncs_reference_code"),
            "syncs_analytic": tp.get("syncs_analytic"),
            "syncs_measured": tp.get("syncs_measured"),
            "syncs_measured_backward": tp.get("syncs_measured_backward"),
            "num_parameters": tp.get("num_parameters"),
            "runs": summ["successful_runs"],
            "val_loss_mean": vl["mean"],
            "val_loss_std": vl["std"],
            "ci95_low": ci[0],
            "ci95_high": ci[1],
            "delta_vs_baseline": delta,
            "p_vs_baseline": p,
            "test_vs_baseline": test,
            "tokens_per_s": tps,
            "tokens_per_s_vs_baseline": tps / base_tps if tps and base_tps else None,
            "step_ms": (summ.get("step_ms") or {}).get("mean"),
        })
    return pd.DataFrame(out, columns=list(out[0]) if out else ["variant"])


def _legend_label(summary: dict) -> str:
    """``variant: nominal N / reference code R / measured M`` (syncs per forward pass)."""
    tp = _tp(summary)
    ref = tp.get("syncs_reference_code")
    return (f"{summary['variant']}: nominal {tp.get('syncs_nominal')} / reference code "
            f"{ref if ref is not None else '?'} / measured {tp.get('syncs_measured')}")


def pattern_text(layers: list[str]) -> str:
    """Shortest repeating unit of a per-layer pattern: ``[tp, spd] x 6``."""
    n = len(layers)
    for k in range(1, n + 1):
        if n % k == 0 and layers[:k] * (n // k) == layers:
            return f"[{', '.join(layers[:k])}] x {n // k}" if k < n else ", ".join(layers)
    return ""


def fit_trend(summaries: list[dict]) -> dict | None:
    """Least-squares fits of every successful run's final val_loss on its variant's measured
    syncs per forward: linear and logarithmic (scipy.stats.linregress).

    Returns:
        ``{"linear": {...}, "log": {...}, "best": "linear" | "log", "points": n}`` where each fit
        is ``{"intercept", "slope", "r2", "p_value"}``; None with fewer than 2 distinct sync
        counts or 3 runs.
    """
    xs, ys = [], []
    for summ in comm_variants(summaries):
        for loss in successful_val_losses(summ):
            xs.append(float(_tp(summ)["syncs_measured"]))
            ys.append(float(loss))
    if len(set(xs)) < 2 or len(xs) < 3:
        return None
    x, y = np.asarray(xs), np.asarray(ys)
    fits = {}
    for name, feature in (("linear", x), ("log", np.log(x) if (x > 0).all() else None)):
        if feature is None:
            continue
        res = stats.linregress(feature, y)
        fits[name] = {"intercept": float(res.intercept), "slope": float(res.slope),
                      "r2": float(res.rvalue ** 2), "p_value": float(res.pvalue)}
    fits["best"] = max((k for k in fits), key=lambda k: fits[k]["r2"])
    fits["points"] = len(xs)
    return fits


def _fit_text(fit: dict | None) -> str:
    if fit is None:
        return "No trend fitted (fewer than 2 distinct sync counts or 3 runs)."
    lines = []
    for name in ("linear", "log"):
        if name in fit:
            f = fit[name]
            term = "syncs" if name == "linear" else "ln(syncs)"
            lines.append(f"- {name}: val_loss = {f['intercept']:.4f} + {f['slope']:+.5f} * {term}, "
                         f"R^2 = {f['r2']:.3f}, p = {f['p_value']:.3g}")
    lines.append(f"- better fit (R^2): {fit['best']}; {fit['points']} runs")
    return "\n".join(lines)


def write_table(summaries: list[dict], baseline: str, csv_path: str, md_path: str) -> None:
    """comm.csv (:func:`comm_table`) and comm.md (the table, the trend fits, what the columns mean)."""
    frame = comm_table(summaries, baseline)
    with atomic_write(csv_path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, index=False)
    body = frame.to_markdown(index=False, floatfmt=".4g") if len(frame) > 0 and "syncs_measured" in frame else \
        "(no variant recorded sync counts)"
    write_text_atomic(md_path, (
        f"# Communication vs val_loss (final stage)\n\n{body}\n"
        "\n## Trend of final val_loss on measured syncs per forward\n\n" + _fit_text(fit_trend(summaries)) +
        "\n\nsyncs: tensor-parallel all-reduces of one [B, T, C] activation per forward pass. nominal = the seed "
        "write-up's count (tp 2, spd 1, parallel 0 per layer, + 2 at the model boundaries with parallel blocks); "
        "reference_code = what eduardburlacu/NanoTransformer's tensor_parallel_model.py runs for the pattern (every "
        "run of parallel blocks closes with its own all-reduce); analytic = from the pattern under the run's "
        "parallel_merge rule (sum: a parallel run's merge folds into the next spd block's all-reduce; reference: "
        "the reference code's wiring); measured = counted at every sync point while training "
        "(docs/tensor_parallel.md). delta_vs_baseline: mean over seeds of the final val_loss minus "
        f"{baseline}'s with the same seed (same initial weights and batches); p_vs_baseline: its two-sided "
        "paired t-test (test_vs_baseline; Welch's test when fewer than 2 seeds are shared).\n"))


def _errorbar(ax, x, summ, colour, label):
    vl = summ["val_loss"]
    if vl["mean"] is None:
        return
    lo, hi = vl["ci_95"] or (vl["mean"], vl["mean"])
    ax.errorbar([x], [vl["mean"]], yerr=[[vl["mean"] - lo], [hi - vl["mean"]]], fmt="o", capsize=4,
                color=colour, label=label)


def _finish(fig, ax, output: str, ylabel: str, title: str, legend: bool) -> None:
    """Axis labels (x: measured syncs per forward pass), grid, legend; writes ``output`` atomically."""
    ax.set_xlabel("measured tensor-parallel syncs per forward pass")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    save_figure(fig, output)


def plot_comm_vs_loss(summaries: list[dict], output: str, thresholds: list[float] | None = None,
                      variants: list[str] | None = None) -> None:
    """x: measured syncs per forward pass; y: final val_loss mean +- 95 % CI over seeds, one point
    per variant (faint dots: the seeds), the better-fitting trend (linear or logarithmic) and,
    at GPT-2 scale, the reference thresholds as horizontal lines."""
    rows = comm_variants(summaries)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = variant_colours(list(variants or []) + [s["variant"] for s in rows if s["variant"] not in (variants or [])])
    for summ in rows:
        x = _tp(summ)["syncs_measured"]
        losses = successful_val_losses(summ)
        ax.scatter([x] * len(losses), losses, s=10, alpha=0.35, color=colours[summ["variant"]])
        _errorbar(ax, x, summ, colours[summ["variant"]], _legend_label(summ))
    fit = fit_trend(summaries)
    if fit is not None:
        xs = np.linspace(min(_tp(s)["syncs_measured"] for s in rows), max(_tp(s)["syncs_measured"] for s in rows), 100)
        f = fit[fit["best"]]
        ys = f["intercept"] + f["slope"] * (xs if fit["best"] == "linear" else np.log(xs))
        ax.plot(xs, ys, "k--", linewidth=1, label=f"{fit['best']} fit, R^2 {f['r2']:.2f}")
    for value in thresholds or []:
        ax.axhline(value, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{value:g}", (1.0, value), xycoords=("axes fraction", "data"), fontsize=8, color="grey",
                    ha="right", va="bottom")
    _finish(fig, ax, output, "final val_loss (nats/token)", "Communication vs final val_loss (mean and 95% CI over seeds)",
            legend=bool(rows))


def plot_tokens_per_s(summaries: list[dict], output: str, variants: list[str] | None = None) -> None:
    """x: measured syncs per forward pass; y: training tokens_per_s, mean +- 95 % CI over seeds."""
    rows = comm_variants(summaries)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = variant_colours(list(variants or []) + [s["variant"] for s in rows if s["variant"] not in (variants or [])])
    for summ in rows:
        tps = summ.get("tokens_per_s") or {}
        if tps.get("mean") is None:
            continue
        lo, hi = tps.get("ci_95") or (tps["mean"], tps["mean"])
        ax.errorbar([_tp(summ)["syncs_measured"]], [tps["mean"]], yerr=[[tps["mean"] - lo], [hi - tps["mean"]]],
                    fmt="o", capsize=4, color=colours[summ["variant"]],
                    label=f"{summ['variant']} ({_tp(summ).get('tp_mode')})")
    _finish(fig, ax, output, "training tokens/s (mean and 95% CI)", "Does fewer syncs buy throughput?", legend=bool(rows))


def _bytes_per_token(summary: dict) -> float | None:
    """summary.json ``bytes_per_token``: the mean over the variant's runs (workflow.stats), or None."""
    value = summary.get("bytes_per_token")
    if isinstance(value, dict):  # a describe() record
        value = value.get("mean")
    return float(value) if value else None


def plot_bytes_per_token(summaries: list[dict], output: str, variants: list[str] | None = None) -> list[dict]:
    """x: communication bytes per token (log axis; result.json ``communication.bytes_per_token``
    summed over workers); y: final val_loss mean +- 95 % CI over seeds. Every variant of every
    stage that recorded it gets a point: colour = variant, marker = stage (filled for the last
    stage given, hollow for the screens before it), so variants a gate stopped early stay on the
    figure. Variants without the record get no point.

    Args:
        summaries: summary.json records (workflow.stats), any stages, in stage order.
        output: the PNG path (written atomically).
        variants: every variant of the study in order (fixed colours across figures).

    Returns:
        The points drawn: ``[{"variant", "stage", "bytes_per_token", "val_loss"}]``.
    """
    rows = [s for s in summaries if _bytes_per_token(s) and s["val_loss"]["mean"] is not None]
    stages = list(dict.fromkeys(str(s.get("stage")) for s in rows))
    markers = dict(zip(reversed(stages), "osD^vP*X"))  # the last stage: circles
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = variant_colours(list(variants or []) + [s["variant"] for s in summaries if s["variant"] not in (variants or [])])
    for summ in rows:
        stage, colour = str(summ.get("stage")), colours[summ["variant"]]
        vl = summ["val_loss"]
        lo, hi = vl["ci_95"] or (vl["mean"], vl["mean"])
        last = stage == stages[-1]
        ax.errorbar([_bytes_per_token(summ)], [vl["mean"]], yerr=[[vl["mean"] - lo], [hi - vl["mean"]]],
                    fmt=markers[stage], capsize=4, color=colour, alpha=1.0 if last else 0.6,
                    markerfacecolor=colour if last else "white",
                    label=f"{summ['variant']} (stage {stage})" if len(stages) > 1 else summ["variant"])
    if rows:
        ax.set_xscale("log")
        # labels at 1, 2, 5 x 10^n in plain numbers: readable within one decade and over several
        ax.xaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no run recorded communication (bytes_per_token)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("communication bytes per token (all workers, log scale)")
    ax.set_ylabel("final val_loss (nats/token)")
    ax.set_title("Communication volume vs final val_loss (mean and 95% CI over seeds)")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, output)
    return [{"variant": s["variant"], "stage": s.get("stage"), "bytes_per_token": _bytes_per_token(s),
             "val_loss": s["val_loss"]["mean"]} for s in rows]
