# Communication-vs-loss assets (workflow.comm_report), from the stages' summaries:
#   every study:   plots/bytes_per_token_vs_loss.png (every stage's variants whose runs recorded
#                  result.json communication.bytes_per_token)
#   a study whose variants carry tensor-parallel sync counts (some layer is tp / spd / parallel):
#                  comm/comm.csv + comm.md, plots/comm_vs_loss.png, plots/tokens_per_s_vs_comm.png,
#                  reachable as one target: `snakemake --cores all comm_study`
# `localrule: True`: a light Python step runs where Snakemake runs, not as a cluster job.
from workflow.study.checks import comm_study_variants, gpt2_scale

# Variants with tensor-parallel blocks (checked at parse: real tensor parallelism needs a multiple
# of tp_size processes per run in every stage); none: no comm study, only the bytes-per-token plot.
COMM_VARIANTS = comm_study_variants(config)
COMM_THRESHOLDS = "3.28 3.35 3.40" if gpt2_scale(config) else ""  # val_loss goals, at GPT-2 scale only
# The comm study's outputs (`rule all` builds them; `snakemake comm_study` alone).
COMM_TARGETS = (
    [f"{RESULTS}/comm/comm.csv", f"{RESULTS}/comm/comm.md", f"{RESULTS}/plots/comm_vs_loss.png",
     f"{RESULTS}/plots/tokens_per_s_vs_comm.png"]
    if COMM_VARIANTS
    else []
)


rule bytes_per_token_plot:
    localrule: True
    input:
        all_stage_summaries,  # {results}/stage_{S}/{variant}/summary.json of every variant that ran each stage
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
            lambda w: [f"{RESULTS}/stage_{FINAL_STAGE}/{v}/summary.json" for v in stage_variants(FINAL_STAGE)],
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
            lambda w: [f"{RESULTS}/stage_{FINAL_STAGE}/{v}/summary.json" for v in stage_variants(FINAL_STAGE)],
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
            lambda w: [f"{RESULTS}/stage_{FINAL_STAGE}/{v}/summary.json" for v in stage_variants(FINAL_STAGE)],
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
