# Checks before any job, at parse time: the semantic checks the schema cannot express
# (workflow.study.checks), then the study's plan on stderr (the most each stage can run).
# A failed check stops the study with an error naming the key at fault. The full checks and the
# plan run in the main process only: job steps on a cluster node re-parse this file.
import os
import sys

from workflow.study.checks import (
    check_model_configs, check_script_data, check_study, check_study_data, check_trainers,
)
from workflow.study.printed_plan import format_printed_plan

if workflow.is_main_process:
    check_study(config)
    check_model_configs(config)
    print(format_printed_plan(config), file=sys.stderr)


# The study's script runs (your own training script as a variant, workflow/study/trainer_section.py):
# (stage, variant) -> its trainer with absolute paths. Placeholders are checked in every process,
# the script, workdir and inputs in the main one. A relative trainer.workdir starts in the folder
# of the study file (the last --configfile; config/ for the default study).
STUDY_DIR = (os.path.dirname(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles
             else os.path.join(workflow.basedir, "config"))
SCRIPT_TRAINERS = check_trainers(config, STUDY_DIR, check_files=workflow.is_main_process)
check_script_data(config, SCRIPT_TRAINERS)

# The data's vocabulary against the model's, when the tokens exist (else the job's launcher checks it).
if workflow.is_main_process:
    check_study_data(config)
