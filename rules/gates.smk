# Per-variant summaries, gate checkpoints between stages, and the verdict of the last stage.


rule summarize_variant:
    input:
        lambda w: stage_run_results(w.stage, w.variant),
    output:
        f"{RESULTS}/stage_{{stage}}/{{variant}}/summary.json",
    log:
        f"{RESULTS}/logs/summarize_{{stage}}_{{variant}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.stats --results {input} --output {output} > {log} 2>&1"


checkpoint gate:
    input:
        lambda w: stage_summaries(w.stage),
    output:
        f"{RESULTS}/gates/gate_{{stage}}.json",
    params:
        gate=lambda w: json.dumps(config["stages"][w.stage]["gate"], sort_keys=True),
        baseline=BASELINE,
    wildcard_constraints:
        stage="|".join(GATED_STAGES) if GATED_STAGES else "(?!)",
    log:
        f"{RESULTS}/logs/gate_{{stage}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.gates gate --stage {wildcards.stage} --gate-json {params.gate:q} "
        "--baseline {params.baseline} --summaries {input} --output {output} > {log} 2>&1"


rule verdict:
    input:
        lambda w: stage_summaries(FINAL_STAGE),
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
        alpha=config["verdict"]["alpha"],
        target=(
            f"--target-val-loss {config['verdict']['target_val_loss']}"
            if config["verdict"]["target_val_loss"] is not None
            else ""
        ),
    log:
        f"{RESULTS}/logs/verdict.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.gates verdict --baseline {params.baseline} --alpha {params.alpha} {params.target} "
        "--summaries {input} --output {output.json} --markdown {output.markdown} > {log} 2>&1"
