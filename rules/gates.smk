# Per-variant statistics, gate checkpoints between stages, and the verdict of the last stage.
#
# The gates are the DAG's checkpoints: which variants run a stage after the first is known only
# once the previous stage's gate ran (stage_variants, rules/common.smk: the baseline plus what the
# gate advanced, plus a pivot variant). Every variant of a stage gives one summary.json (rule
# stats), which the gate, the verdict, the tables and the plots read. Input functions: rules/common.smk;
# the pivot's stage price (gate_pivot_args): rules/resources.smk.
import json


rule stats:
    """summary.json of one (stage, variant): its seeds' results (python -m workflow.stats)."""
    localrule: True
    input:
        lambda w: stage_run_results(w.stage, w.variant),  # {RESULTS}/stage_{S}/{variant}/seed_{seed}/result.json
    output:
        f"{RESULTS}/stage_{{stage}}/{{variant}}/summary.json",
    log:
        f"{RESULTS}/logs/stats_{{stage}}_{{variant}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.stats --results {input} --output {output} > {log} 2>&1"


checkpoint gate:
    localrule: True
    input:
        # the stage's summaries, without a pivot variant (the pivot gate below compares that one)
        summaries=lambda w: [f"{RESULTS}/stage_{w.stage}/{v}/summary.json" for v in stage_variants(w.stage, with_pivot=False)],
        previous=previous_gate,  # the previous gate's decision, for a gate that may pivot
    output:
        f"{RESULTS}/gates/gate_{{stage}}.json",
    params:
        gate=lambda w: json.dumps(config["stages"][w.stage]["gate"], sort_keys=True),
        baseline=BASELINE,
        test=config["verdict"]["test"],
        pivot=gate_pivot_args,
    wildcard_constraints:
        stage="|".join(GATED_STAGES) if GATED_STAGES else "(?!)",
    log:
        f"{RESULTS}/logs/gate_{{stage}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.gates gate --stage {wildcards.stage} --gate-json {params.gate:q} "
        "--baseline {params.baseline} --test {params.test} --summaries {input.summaries} {params.pivot} "
        "--output {output} > {log} 2>&1"


# A gate that advanced nothing and pivoted (gate.pivot, within cost.reserve_usd): the next-best
# variant of the previous gate ran this stage too; it is gated against the baseline once.
checkpoint gate_pivot:
    localrule: True
    input:
        decision=f"{RESULTS}/gates/gate_{{stage}}.json",
        # the baseline's and the pivot variant's summaries
        summaries=lambda w: [f"{RESULTS}/stage_{w.stage}/{v}/summary.json" for v in (BASELINE, stage_pivot(w.stage))],
    output:
        f"{RESULTS}/gates/gate_{{stage}}_pivot.json",
    params:
        gate=lambda w: json.dumps(config["stages"][w.stage]["gate"], sort_keys=True),
        baseline=BASELINE,
        test=config["verdict"]["test"],
    wildcard_constraints:
        stage="|".join(GATED_STAGES) if GATED_STAGES else "(?!)",
    log:
        f"{RESULTS}/logs/gate_{{stage}}_pivot.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.gates pivot --stage {wildcards.stage} --gate-json {params.gate:q} "
        "--baseline {params.baseline} --test {params.test} --decision {input.decision} "
        "--summaries {input.summaries} --output {output} > {log} 2>&1"


# verdict.sequential: look k (1 .. K-1) of the last stage decides which variants run more seeds
# (workflow.analysis.sequential_verdict); the verdict itself is the last look.
checkpoint look:
    localrule: True
    input:
        results=lambda w: [p for v in stage_variants(FINAL_STAGE) for p in stage_run_results(FINAL_STAGE, v, int(w.look))],
        meta=f"{STUDY_TOKENS}/meta.json",
    output:
        f"{RESULTS}/looks/look_{{look}}.json",
    params:
        baseline=BASELINE,
        verdict=lambda w: json.dumps(config["verdict"], sort_keys=True),
        seeds=" ".join(map(str, stage_seeds(config, FINAL_STAGE))),
    wildcard_constraints:
        look="[1-9][0-9]*",
    log:
        f"{RESULTS}/logs/look_{{look}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.gates look --baseline {params.baseline} --verdict-json {params.verdict:q} "
        "--meta {input.meta} --seeds {params.seeds} --results {input.results} --output {output} > {log} 2>&1"


rule verdict:
    localrule: True
    input:
        summaries=lambda w: [f"{RESULTS}/stage_{FINAL_STAGE}/{v}/summary.json" for v in stage_variants(FINAL_STAGE)],
        meta=f"{STUDY_TOKENS}/meta.json",
    output:
        json=f"{RESULTS}/verdict.json",
        markdown=report(
            f"{RESULTS}/verdict.md",
            caption="../report/verdict.rst",
            category="1 Summary",
            labels={"figure": "2. verdict"},
        ),
    params:
        baseline=BASELINE,
        verdict=lambda w: json.dumps(config["verdict"], sort_keys=True),  # a function: values are data, never a template
        seeds=f"--seeds {' '.join(map(str, stage_seeds(config, FINAL_STAGE)))}" if SEQUENTIAL else "",
    log:
        f"{RESULTS}/logs/verdict.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.gates verdict --baseline {params.baseline} --verdict-json {params.verdict:q} "
        "--meta {input.meta} --summaries {input.summaries} {params.seeds} --output {output.json} --markdown {output.markdown} > {log} 2>&1"
