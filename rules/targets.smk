# Named targets besides `rule all` (Snakefile): one per stage, the report's assets, and why_rerun.
#   snakemake --cores all stage_A            stage A's table and curves (and what they need)
#   snakemake --cores all report_assets      everything `rule all` builds
#   snakemake --cores 1 why_rerun            which config keys changed for finished runs
from pathlib import Path

from workflow.study.explain import explain_reruns

for _stage in STAGES:

    rule:
        name:
            f"stage_{_stage}"
        input:
            f"{RESULTS}/stage_{_stage}/table.csv",
            f"{RESULTS}/plots/curves_stage_{_stage}.png",
        default_target: False


rule report_assets:
    input:
        rules.all.input,


# For every finished run, the config keys that differ from what the study gives it now
# (Snakemake's "Params have changed" names none).
rule why_rerun:
    localrule: True
    log:
        f"{RESULTS}/logs/why_rerun.log",
    run:
        explanation = explain_reruns(config, RESULTS, SCRIPT_TRAINERS)  # script runs: their trainer and files too
        print(explanation)
        Path(log[0]).write_text(explanation + "\n")
