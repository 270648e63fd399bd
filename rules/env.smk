# The environment every job inherits from the Snakemake process, set once at parse time
# (workflow/jobs/environment.py says what each variable is for): PYTHONPATH and PATH (jobs run
# `python -m workflow.<step>` from any folder, with this interpreter), the download mirrors, the
# tokenize options that change no token (neither is a param: changing them reruns nothing), and in
# the main process one id per invocation (grouped runs that finished in it are not trained again).
# Job subprocesses inherit it (sbatch --export=ALL on a cluster); remote executors re-parse this file.
import os
import sys

from workflow.jobs.environment import invocation_environment, job_environment
from workflow.jobs.launcher import INVOCATION_ENV
from workflow.study.trainer_env import export_values

os.environ.update(job_environment(config, workflow.basedir, sys.executable, os.environ))
os.environ.update(invocation_environment(workflow.is_main_process))
INVOCATION = os.environ.get(INVOCATION_ENV) if workflow.is_main_process else None
# trainer.env values of script runs reach their jobs through this environment only, never a param,
# a command line or a log (workflow/study/trainer_env.py); SCRIPT_TRAINERS is rules/checks.smk's.
export_values(SCRIPT_TRAINERS.values())
