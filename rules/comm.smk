# Communication-vs-loss assets (workflow.comm_report), from the stages' summaries:
#   every study:   plots/bytes_per_token_vs_loss.png (every stage's variants whose runs recorded
#                  result.json communication.bytes_per_token)
#   a study whose variants carry tensor-parallel sync counts (some layer is tp / spd / parallel):
#                  comm/comm.csv + comm.md, plots/comm_vs_loss.png, plots/tokens_per_s_vs_comm.png,
#                  reachable as one target: `snakemake --cores all comm_study`
# Study-level set-up (COMM_VARIANTS, COMM_TARGETS, COMM_THRESHOLDS) is in rules/common.smk.
# `localrule: True`: a light Python step runs where Snakemake runs, not as a cluster job.


rule bytes_per_token_plot:
    localrule: True
    input:
        all_stage_summaries,
    output:
        report(
            f"{RESULTS}/plots/bytes_per_token_vs_loss.png",
            caption="../report/bytes_per_token_vs_loss.rst",
            category="Communication",
            labels={"figure": "bytes per token vs val_loss"},
        ),
    params:
        variants=list(config["variants"]),
    log:
        f"{RESULTS}/logs/bytes_per_token_plot.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "python -m workflow.comm_report bytes-per-token --summaries {input} --output {output} "
        "--variants {params.variants} > {log} 2>&1"


if COMM_VARIANTS:

    rule comm_table:
        localrule: True
        input:
            lambda w: stage_summaries(FINAL_STAGE),
        output:
            csv=report(
                f"{RESULTS}/comm/comm.csv",
                caption="../report/comm_table.rst",
                category="Communication",
                labels={"figure": "comm table"},
            ),
            markdown=report(
                f"{RESULTS}/comm/comm.md",
                caption="../report/comm_table.rst",
                category="Communication",
                labels={"figure": "comm table (markdown, with the trend fits)"},
            ),
        params:
            baseline=BASELINE,
        log:
            f"{RESULTS}/logs/comm_table.log",
        conda:
            "../envs/analysis.yaml"
        shell:
            "python -m workflow.comm_report table --baseline {params.baseline} --summaries {input} "
            "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"

    rule comm_vs_loss_plot:
        localrule: True
        input:
            lambda w: stage_summaries(FINAL_STAGE),
        output:
            report(
                f"{RESULTS}/plots/comm_vs_loss.png",
                caption="../report/comm_vs_loss.rst",
                category="Communication",
                labels={"figure": "syncs vs val_loss"},
            ),
        params:
            variants=list(config["variants"]),
            thresholds=f"--thresholds {COMM_THRESHOLDS}" if COMM_THRESHOLDS else "",
        log:
            f"{RESULTS}/logs/comm_vs_loss_plot.log",
        conda:
            "../envs/analysis.yaml"
        shell:
            "python -m workflow.comm_report comm-vs-loss --summaries {input} --output {output} "
            "--variants {params.variants} {params.thresholds} > {log} 2>&1"

    rule tokens_per_s_vs_comm_plot:
        localrule: True
        input:
            lambda w: stage_summaries(FINAL_STAGE),
        output:
            report(
                f"{RESULTS}/plots/tokens_per_s_vs_comm.png",
                caption="../report/tokens_per_s_vs_comm.rst",
                category="Communication",
                labels={"figure": "tokens/s vs syncs"},
            ),
        params:
            variants=list(config["variants"]),
        log:
            f"{RESULTS}/logs/tokens_per_s_vs_comm_plot.log",
        conda:
            "../envs/analysis.yaml"
        shell:
            "python -m workflow.comm_report tokens-per-s --summaries {input} --output {output} "
            "--variants {params.variants} > {log} 2>&1"

    rule comm_study:
        input:
            COMM_TARGETS,
