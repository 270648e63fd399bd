"""The steps the library starts by module name, an edge the import contracts cannot see.

``runpy`` and subprocesses start these as ``python -m <name>``: the job's trainer in-process
(workflow.jobs.trainer_process), the warm-start server (workflow.jobs.warm_client), the per-rank
workers of a multi-process job (workflow.launch) and every job's command line
(workflow.study.resources). tests/unit/test_architecture.py checks that each is a step of
workflow/ (a thin module with ``main``).
"""

from __future__ import annotations

#: the trainer: one seeded run (workflow/train.py)
TRAIN_STEP = "workflow.train"
#: the warm-start server that forks trainers with torch imported (workflow/warm.py)
WARM_STEP = "workflow.warm"
#: a training job: data check, per-attempt log, the processes of one run (workflow/launch.py)
LAUNCH_STEP = "workflow.launch"

#: a script run's job: the user's own training script as a variant (workflow/run_script.py)
SCRIPT_STEP = "workflow.run_script"

STARTED_BY_NAME: tuple[str, ...] = (TRAIN_STEP, WARM_STEP, LAUNCH_STEP, SCRIPT_STEP)
