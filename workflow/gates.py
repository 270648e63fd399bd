"""Gate decisions between stages and the final verdict.

A gate reads the per-variant summaries of a stage (``summary.json``, see
:func:`workflow.analysis.stats.summarize_runs`) and decides which variants advance. The
baseline is never "advanced": it runs in every stage as the reference.

Eligibility (every rule): at least ``min_successful_runs`` successful seeds (with fewer,
the seed-to-seed variance cannot be estimated) and at most ``max_failed_fraction`` of the
runs failed (default 0: a diverged seed is a result of the variant, not noise to drop).

Rules (``stages.<S>.gate.rule``):

``top_k``
    Eligible variants are ranked by mean val_loss, ties broken by lower std, then name.
    The k best advance, and so does every variant whose mean is within ``tie_tolerance``
    of the k-th mean (a tie at the cut is not broken by noise: all tied variants advance).
``beats_baseline``
    Eligible variants whose mean val_loss is strictly below the baseline's mean
    advance. The one-sided p-value against the baseline (``verdict.test``) is reported, not
    required: significance is asked of the last stage by the verdict. If the baseline itself
    has too few successful runs, nothing advances (there is no reference).
``beats_baseline_ci``
    Seed 001's B -> C rule: the mean is below the baseline's AND the trend is consistent:
    the variant's 95 % CI of the mean lies entirely below the baseline's (the intervals do
    not overlap; with equal standard errors about a two-sided p < 0.006).

Pivot (``gate.pivot: true``): when no variant passes, the next-best variant of the previous
gate's ranking (eligible, not advanced there) runs this stage once and is gated again
(``gate_<S>_pivot.json``), provided its estimated cost (the mean measured cost of a run of
this stage x its seeds) fits in ``cost.reserve_usd``.

The verdict (last stage) follows modded-nanogpt's record rule and a referee's: a one-sided
test of each variant against the baseline (``verdict.test``: paired on seed-matched runs or
Welch) and a one-sided one-sample t-test against ``target_val_loss``; each family is Holm
adjusted over the variants tested (``verdict.correction``), decisions use the adjusted
p-values at ``alpha``; ``verdict.winners`` says which test(s) a winner must pass; a variant
with a failed seed cannot win (``failed_run_policy: disqualify``) unless failed runs are
counted at a penalty loss (``penalty``). See docs/statistics.md.

CLI::

    python -m workflow.gates gate --stage A --gate-json '{"rule": "top_k", "k": 2}' \
        --baseline baseline --summaries s1.json s2.json --output gate_A.json
    python -m workflow.gates pivot --stage B --gate-json '{...}' --baseline baseline \
        --decision gate_B.json --summaries ... --output gate_B_pivot.json
    python -m workflow.gates verdict --baseline baseline --verdict-json '{"alpha": 0.01, ...}' \
        --summaries ... --output verdict.json --markdown verdict.md [--meta meta.json] [--seeds 3337 ...]
    python -m workflow.gates look --baseline baseline --verdict-json '{..., "sequential": {...}}' \
        --seeds 3337 3338 ... --results .../result.json ... --output looks/look_1.json
"""

from __future__ import annotations

import argparse
import json
import sys

from workflow.analysis.gates import choose_pivot, decide_gate, stage_cost_usd
from workflow.analysis.stats import summarize_runs
from workflow.analysis.verdict import decide_verdict, verdict_markdown
from workflow.core.io import read_json, write_json_atomic, write_text_atomic


def _load_summaries(paths: list[str]) -> dict[str, dict]:
    summaries = {}
    for path in paths:
        summ = read_json(path)
        summaries[summ["variant"]] = summ
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.gates", description="Gate decisions and the verdict.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gate")
    g.add_argument("--stage", required=True)
    g.add_argument("--gate-json", required=True, help="the stage's gate section (schema defaults filled)")
    g.add_argument("--baseline", required=True)
    g.add_argument("--test", default="paired", choices=["paired", "welch"])
    g.add_argument("--summaries", nargs="*", default=[])
    g.add_argument("--output", required=True)
    g.add_argument("--previous", help="the previous gate's decision (pivot candidates)")
    g.add_argument("--seeds", type=int, default=0, help="runs per variant in this stage (pivot cost)")
    g.add_argument("--hour-usd", type=float, default=0.0, help="price of a GPU-hour (CPU: process-hour) of this stage")
    g.add_argument("--reserve-usd", type=float, default=0.0)
    pv = sub.add_parser("pivot", help="gate the pivot variant of a stage (after its runs)")
    pv.add_argument("--stage", required=True)
    pv.add_argument("--gate-json", required=True)
    pv.add_argument("--baseline", required=True)
    pv.add_argument("--test", default="paired", choices=["paired", "welch"])
    pv.add_argument("--decision", required=True, help="the stage's first gate decision (names the pivot)")
    pv.add_argument("--summaries", nargs="*", default=[])
    pv.add_argument("--output", required=True)
    v = sub.add_parser("verdict")
    v.add_argument("--baseline", required=True)
    v.add_argument("--verdict-json", required=True, help="the study's verdict section (schema defaults filled)")
    v.add_argument("--meta", help="the dataset's meta.json (vocab_size for the default penalty loss)")
    v.add_argument("--summaries", nargs="*", default=[])
    v.add_argument("--output", required=True)
    v.add_argument("--markdown", required=True)
    v.add_argument("--seeds", nargs="*", type=int, default=None, help="the last stage's seeds in order (sequential looks)")
    lk = sub.add_parser("look", help="a look of a sequential last stage: who is decided, who runs the next seeds")
    lk.add_argument("--baseline", required=True)
    lk.add_argument("--verdict-json", required=True)
    lk.add_argument("--meta", help="the dataset's meta.json (vocab_size for the default penalty loss)")
    lk.add_argument("--seeds", nargs="+", type=int, required=True, help="the last stage's seeds in order")
    lk.add_argument("--results", nargs="+", required=True, help="result.json of every run of the last stage so far")
    lk.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if args.command == "look":
        by_variant: dict[str, list] = {}
        for path in args.results:
            result = read_json(path)
            by_variant.setdefault(result["variant"], []).append(result)
        vocab = read_json(args.meta)["vocab_size"] if args.meta else None
        verdict = decide_verdict({v: summarize_runs(r) for v, r in by_variant.items()}, args.baseline,
                                 json.loads(args.verdict_json), vocab, args.seeds)
        write_json_atomic(args.output, {"open": verdict["sequential"]["open"], "looks_seen": verdict["sequential"]["looks_seen"],
                                        "winners": verdict["winners"], "explanation": verdict["explanation"],
                                        "variants": {e["variant"]: e["sequential"] for e in verdict["results"]}})
        return 0
    summaries = _load_summaries(args.summaries)
    if args.command == "gate":
        decision = decide_gate(args.stage, json.loads(args.gate_json), summaries, args.baseline, args.test)
        if args.previous:
            cost, runs = stage_cost_usd(summaries, args.hour_usd)
            decision["pivot"] = choose_pivot(decision, read_json(args.previous), args.seeds, cost / runs if runs else 0.0, args.reserve_usd)
        write_json_atomic(args.output, decision)
    elif args.command == "pivot":
        first = read_json(args.decision)
        decision = decide_gate(args.stage, json.loads(args.gate_json), summaries, args.baseline, args.test)
        decision["pivot_of"] = first["pivot"]
        decision["explanation"] = f"Pivot: {first['pivot']['reason']}. " + decision["explanation"]
        write_json_atomic(args.output, decision)
    else:
        vocab = read_json(args.meta)["vocab_size"] if args.meta else None
        verdict = decide_verdict(summaries, args.baseline, json.loads(args.verdict_json), vocab, args.seeds)
        write_json_atomic(args.output, verdict)
        write_text_atomic(args.markdown, verdict_markdown(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
