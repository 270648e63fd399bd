# Report assets: the one-page summary, stage tables, training curves, val_loss per stage, compute
# accounting. Everything wrapped in report() appears in the study's HTML report:
#   snakemake --report results/<study>/report.html   (with the same --configfile/--config as the run)
# Categories sort by name in the report's menu: "1 Summary" (the answer) comes first.
# Summaries (summary.json) are rules/gates.smk's `stats` outputs, one per variant that ran a stage;
# input functions (all_stage_summaries, stage_decision, stage_variants): rules/common.smk.
import json
import os

from workflow.study.trainer_env import redact_study  # trainer.env values never reach a param


rule stage_table:
    localrule: True
    params:
        baseline=BASELINE,
        test=config["verdict"]["test"],
    input:
        summaries=lambda w: [f"{RESULTS}/stage_{w.stage}/{v}/summary.json" for v in stage_variants(w.stage)],
        decision=stage_decision,  # its gate's decision(s), or the verdict for the last stage
    output:
        csv=report(
            f"{RESULTS}/stage_{{stage}}/table.csv",
            caption="../report/stage_table.rst",
            category="2 Stages",
            subcategory="Stage {stage}",
            labels={"stage": "{stage}", "figure": "summary table"},
        ),
        markdown=f"{RESULTS}/stage_{{stage}}/table.md",
    log:
        f"{RESULTS}/logs/stage_table_{{stage}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.tables stage --stage {wildcards.stage} --baseline {params.baseline} --test {params.test} "
        "--summaries {input.summaries} --decision {input.decision} --csv {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule curves_plot:
    localrule: True
    input:
        # metrics.jsonl of every run of the stage (rules/train.smk)
        lambda w: [f"{RESULTS}/stage_{w.stage}/{v}/seed_{seed}/metrics.jsonl"
                   for v in stage_variants(w.stage) for seed in run_seeds(w.stage, v)],
    output:
        report(
            f"{RESULTS}/plots/curves_stage_{{stage}}.png",
            caption="../report/curves.rst",
            category="2 Stages",
            subcategory="Stage {stage}",
            labels={"stage": "{stage}", "figure": "training curves"},
        ),
    params:
        variants=list(config["variants"]),
    log:
        f"{RESULTS}/logs/curves_plot_{{stage}}.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.plots curves --stage {wildcards.stage} --metrics {input} --output {output} "
        "--variants {params.variants} > {log} 2>&1"


rule val_loss_plot:
    localrule: True
    input:
        all_stage_summaries,  # {results}/stage_{S}/{variant}/summary.json of every variant that ran each stage
    output:
        report(
            f"{RESULTS}/plots/val_loss_by_stage.png",
            caption="../report/val_loss_by_stage.rst",
            category="1 Summary",
            labels={"figure": "3. val_loss by stage"},
        ),
    params:
        variants=list(config["variants"]),
    log:
        f"{RESULTS}/logs/val_loss_plot.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.plots val-loss --summaries {input} --output {output} --variants {params.variants} > {log} 2>&1"


# The compute plan before any training (FLOPs, GPU-hours, dollars per stage vs naive; warnings):
# `snakemake --cores 1 results/<study>/plan.md`, or `python -m workflow.compute_plan --configfile ...`.
rule compute_plan:
    localrule: True
    output:
        markdown=report(
            f"{RESULTS}/plan.md",
            caption="../report/compute.rst",
            category="Overview",
            labels={"figure": "compute plan"},
        ),
        json=f"{RESULTS}/plan.json",
    params:
        study=lambda w: json.dumps(redact_study(config), sort_keys=True),  # a function: Snakemake formats a params string, and a study's values are data; trainer.env values as tokens
    log:
        f"{RESULTS}/logs/compute_plan.log",
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow.compute_plan --config-json {params.study:q} --json {output.json} --markdown {output.markdown} > {log} 2>&1"


rule compute_table:
    localrule: True
    input:
        all_stage_summaries,  # {results}/stage_{S}/{variant}/summary.json of every variant that ran each stage
    output:
        csv=report(
            f"{RESULTS}/compute.csv",
            caption="../report/compute.rst",
            category="1 Summary",
            labels={"figure": "4. compute staged vs naive"},
        ),
        markdown=f"{RESULTS}/compute.md",
    params:
        # the job derives the naive plan from the study (no model or pandas imports where Snakemake parses)
        study=lambda w: json.dumps(redact_study(config), sort_keys=True),  # a function: Snakemake formats a params string, and a study's values are data
    log:
        f"{RESULTS}/logs/compute_table.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.tables compute --config-json {params.study:q} --summaries {input} "
        "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"


# The one-page summary (the report's first category) and the landing page's answer
# (report/workflow.rst includes landing.rst).
rule summary:
    localrule: True
    input:
        verdict=f"{RESULTS}/verdict.json",
        gates=[f"{RESULTS}/gates/gate_{stage}.json" for stage in GATED_STAGES],
        compute=f"{RESULTS}/compute.csv",
        figure=f"{RESULTS}/plots/val_loss_by_stage.png",
    output:
        html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary.rst",
            category="1 Summary",
            labels={"figure": "1. one-page summary"},
        ),
        landing=f"{RESULTS}/landing.rst",
    params:
        study=lambda w: config["study"],  # a function: values are data, never a template
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.summary --study {params.study:q} --verdict {input.verdict} --gates {input.gates} "
        "--compute {input.compute} --figure {input.figure} --html {output.html} --landing {output.landing} > {log} 2>&1"


# Text samples: for the final stage, the base-seed run of each variant, sampled from the run's
# model.pt (written next to result.json by workflow.train; not a declared output of `train`).
rule sample_text:
    input:
        result=f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/result.json",
        meta=f"{STUDY_TOKENS}/meta.json",
    output:
        report(
            f"{RESULTS}/samples/stage_{{stage}}/{{variant}}/seed_{{seed}}.txt",
            caption="../report/sample.rst",
            category="3 Samples",
            subcategory="Stage {stage}",
            labels={"variant": "{variant}", "seed": "{seed}"},
        ),
    params:
        model=lambda w, input: os.path.join(os.path.dirname(input.result), "model.pt"),
    log:
        f"{RESULTS}/logs/sample_{{stage}}_{{variant}}_{{seed}}.log",
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow.sample --model {params.model} --meta {input.meta} --result {input.result} "
        "--output {output} --max-new-tokens 300 --top-k 20 --seed {wildcards.seed} > {log} 2>&1"
