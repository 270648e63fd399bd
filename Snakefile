# stagerun: staged language-model training experiments.
#   snakemake --cores all                   the whole study of config/config.yaml
#   snakemake --cores all stage_A           one stage (stage_B, stage_C, verdict, report_assets)
#   snakemake --cores all --configfile S.yaml -- stage_A      another study (targets after `--`)
#   snakemake --cores all --config set='stages.C.train.num_iterations=350'   a one-off override
#   snakemake --cores 1 why_rerun           which config keys changed for finished runs
#   snakemake --report results/<study>/report.html [--configfile S.yaml]   the study's HTML report
from pathlib import Path

from snakemake.utils import min_version, validate

from workflow.study.explain import explain_reruns
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
# the study checks below validate them like hand-written ones (workflow/sweep.py).
prepare_study(config)

# A schema error names its key, value, rule and the key's description in a few lines (Snakemake's
# own message would print the whole schema); Snakemake's validate then fills in the defaults.
validate_study(config)
validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/env.smk"


wildcard_constraints:
    stage="|".join(STAGES),
    seed=r"\d+",
    variant=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


include: "rules/datasets.smk"
include: "rules/tokenize.smk"
include: "rules/train.smk"
include: "rules/script.smk"
include: "rules/gates.smk"
include: "rules/comm.smk"
include: "rules/report.smk"
include: "rules/warm.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# `snakemake --cores 1 why_rerun`: for every finished run, the config keys that differ from what
# the study gives it now (Snakemake's "Params have changed" names none).
rule why_rerun:
    localrule: True
    log:
        f"{RESULTS}/logs/why_rerun.log",
    run:
        explanation = explain_reruns(config, RESULTS)
        print(explanation)
        Path(log[0]).write_text(explanation + "\n")
