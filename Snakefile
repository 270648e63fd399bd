# stagerun: staged language-model training experiments.
#   snakemake --cores all                   the whole study of config/config.yaml
#   snakemake --cores all stage_A           one stage (stage_B, stage_C, verdict, report_assets)
#   snakemake --cores all --configfile S.yaml -- stage_A      another study (targets after `--`)
#   snakemake --cores all --config set='stages.C.train.num_iterations=350'   a one-off override
#   snakemake --cores 1 why_rerun           which config keys changed for finished runs
#   snakemake --report results/<study>/report.html [--configfile S.yaml]   the study's HTML report
from snakemake.utils import min_version, validate

from workflow.study.overrides import prepare_study
from workflow.study.schema import validate_study
from workflow.study.study_file import reload_study

min_version("9.0")


# The built-in default study, unless a study is given with --configfile (then it alone counts:
# Snakemake would otherwise merge the default study's variants into it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


# The study files again, read strictly (workflow/study/study_file.py): a key written twice is an
# error, names stay as written (`123:`, `yes:`), `2e-3` is a number; `--config` values on top.
reload_study(config, workflow.overwrite_configfiles or workflow.configfiles,
             workflow.config_settings.config)

# `set` overrides and the `sweep` grid become plain keys and variants first, so the schema and
# the study checks validate them like hand-written ones (workflow/study/overrides.py).
prepare_study(config)

# A schema error names its key, value, rule and the key's description in a few lines (Snakemake's
# own message would print the whole schema); Snakemake's validate then fills in the defaults.
validate_study(config)
validate(config, "config/schema.yaml")


include: "rules/checks.smk"  # checks before any job, the printed plan, the script runs' trainers
include: "rules/common.smk"  # paths and shared helpers
include: "rules/env.smk"  # the environment every job inherits
include: "rules/resources.smk"  # the training jobs' resources and job groups


wildcard_constraints:
    stage="|".join(STAGES),
    seed=r"\d+",
    variant=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


include: "rules/download.smk"  # {data_dir}/raw/{source}/{filename}
include: "rules/tokenize.smk"  # {data_dir}/tokens/{tokens}/meta.json (+ split files)
include: "rules/script.smk"  # {data_dir}/tokens/{tokens}/nanogpt/: nanoGPT's layout for script runs
include: "rules/train.smk"  # {results}/stage_{S}/{variant}/seed_{seed}/result.json, metrics.jsonl
include: "rules/gates.smk"  # summary.json per variant, gates/gate_{S}.json, verdict.json
include: "rules/comm.smk"  # plots/bytes_per_token_vs_loss.png, comm/ (tensor-parallel studies)
include: "rules/report.smk"  # summary.html, tables, plots, plan.md, compute.csv, text samples
include: "rules/warm.smk"  # onstart / onsuccess / onerror: the warm server


# Everything the study answers with ({results} is results_dir/study). Later stages' runs are
# added once the gates before them ran (checkpoints, rules/gates.smk).
rule all:
    default_target: True
    input:
        f"{RESULTS}/summary.html",
        f"{RESULTS}/verdict.json",
        f"{RESULTS}/compute.csv",
        f"{RESULTS}/plan.md",
        f"{RESULTS}/plots/val_loss_by_stage.png",
        expand(f"{RESULTS}/stage_{{stage}}/table.csv", stage=STAGES),
        expand(f"{RESULTS}/plots/curves_stage_{{stage}}.png", stage=STAGES),
        # a text sample of the final stage's base-seed run of each variant (script runs leave no model.pt)
        lambda w: [f"{RESULTS}/samples/stage_{FINAL_STAGE}/{v}/seed_{stage_seeds(config, FINAL_STAGE)[0]}.txt"
                   for v in stage_variants(FINAL_STAGE) if (FINAL_STAGE, v) not in SCRIPT_TRAINERS],
        f"{RESULTS}/plots/bytes_per_token_vs_loss.png",
        COMM_TARGETS,  # the communication study's table and figures, when variants have tensor-parallel blocks


include: "rules/targets.smk"  # stage_<S>, report_assets, why_rerun
