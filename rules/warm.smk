# --------------------------------------------------------------------------- warm start
from workflow.jobs.warm_client import start_server, why_not_start

# Warm start: training jobs of a local run start as forks of one
# process that has imported torch already (workflow/warm.py; the study's `warm_start`).
_WARM_SERVER = []


def start_warm_server():
    """Start the warm server when this invocation runs training jobs (or gates that add them)
    on this machine (:func:`workflow.jobs.warm_client.why_not_start`); say why not otherwise."""
    has_training = any((job.rule.name == "train" and (job.wildcards.stage, job.wildcards.variant) not in SCRIPT_TRAINERS)
                       or job.is_checkpoint for job in workflow.dag.needrun_jobs())  # never for scripts (issue 17)
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
    check_slurm_cluster()  # rules/common.smk: the profile's account and partitions, before any submission
    start_warm_server()


onsuccess:
    stop_warm_server()


onerror:
    stop_warm_server()
    restore_group_runs()  # rules/common.smk: a failed group job's finished runs get their outputs back
