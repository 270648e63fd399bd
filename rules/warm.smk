# Warm start, and what Snakemake runs at its start, success and error (onstart / onsuccess / onerror).
# Training jobs of a local run start as forks of one process that has imported torch already
# (workflow/warm.py; the study's `warm_start`). On error, the finished runs of a failed group job
# keep their outputs (rules/resources.smk).
import sys

from workflow.jobs.launcher import has_nvidia_gpu
from workflow.jobs.warm_client import start_server, why_not_start

_WARM_SERVER = []


def start_warm_server():
    """Start the warm server when this invocation runs training jobs (or gates that add them)
    on this machine (:func:`workflow.jobs.warm_client.why_not_start`); say why not otherwise."""
    builtin = any((s, v) not in SCRIPT_TRAINERS for s in STAGES for v in config["variants"])  # scripts never warm-start
    has_training = builtin and any((job.rule.name == "train" and (job.wildcards.stage, job.wildcards.variant) not in SCRIPT_TRAINERS)
                                   or job.is_checkpoint for job in workflow.dag.needrun_jobs())
    reason = why_not_start(config["warm_start"], workflow.local_exec, has_training, has_nvidia_gpu())
    if reason is not None:
        if has_training:
            print(f"stagerun: warm start off: {reason}", file=sys.stderr)
        return
    log = f"{RESULTS}/logs/warm_server.log"
    try:
        _WARM_SERVER.append(start_server(log))
    except OSError as err:  # no temporary folder, no interpreter: the jobs start fresh
        print(f"stagerun: warm start off: cannot start the server ({err})", file=sys.stderr)
        return
    print(f"stagerun: warm start: training processes fork from one that imports torch once (log: {log})",
          file=sys.stderr)


def stop_warm_server():
    """Stop the warm server, if this invocation started one."""
    while _WARM_SERVER:
        _WARM_SERVER.pop().stop()


# Training jobs run here (local executor) start as forks of one process that has imported
# torch already, ~3 s less per job here (workflow/jobs/; `warm_start: off` in the study turns it off).
onstart:
    check_slurm_cluster()  # rules/resources.smk: the profile's account and partitions, before any submission
    start_warm_server()


def study_end(failed_call):
    """Print the study's summary (workflow/analysis/study_end.py) at the end of the call; exit 1
    when a stage has no successful run (unless the study says exit_nonzero_on_failure: false)."""
    from workflow.analysis.study_end import end_of_call  # deferred: only when the call ends

    text, fail = end_of_call(config, RESULTS, STAGES, {s: stage_seeds(config, s) for s in STAGES})
    print(text, file=sys.stderr, flush=True)
    if fail and not failed_call:
        sys.exit(1)  # (Snakemake's own failure exits 1 already)


onsuccess:
    stop_warm_server()
    study_end(False)


onerror:
    stop_warm_server()
    restore_group_runs()  # rules/resources.smk: a failed group job's finished runs get their outputs back
    study_end(True)
