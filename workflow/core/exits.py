"""Exit statuses shared by the trainer, the launcher and the rules (torch-free).

``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` of sysexits.h: "try again later") is what a run that
stopped on SIGTERM / SIGUSR1 after writing its checkpoint exits with; the SLURM profile
requeues it and a rerun resumes (docs/reliability.md).
"""

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later
