# One job per (stage, variant, seed): `python -m workflow.launch` with the run's resolved config. It
# checks the data, runs the trainer in its own process (one process) or through torchrun (several;
# several nodes: one `srun` task per GPU), and exits with the trainer's status (75 = preempted).
# The resolved config is a param, so changing a stage's or a variant's settings reruns exactly the
# runs it affects (Snakemake's params rerun trigger).
# A variant whose resolved `trainer` has a script or command (SCRIPT_TRAINERS, rules/checks.smk)
# runs workflow.run_script instead (same options and outputs); its script and trainer.inputs are inputs.
# Threads, resources (SLURM ones from stages.<S>.resources), the launcher and job groups:
# rules/resources.smk; input functions (script_job_inputs, run_config_json): rules/common.smk.
import os

from workflow.study.resolve import source_run_result


rule train:
    input:
        meta=f"{STUDY_TOKENS}/meta.json",  # the study's tokenized dataset (rules/tokenize.smk)
        script=script_job_inputs,  # a script run's script, trainer.inputs and nanoGPT data; none for the built-in trainer
        # a continued run (stages.<S>.continue_from): its source run's result.json (after the branch checkpoint)
        source=per_job(lambda w: source_run_result(config, RESULTS, w.stage, w.variant, int(w.seed))),
    output:
        result=f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/result.json",
        metrics=f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/metrics.jsonl",
    log:
        f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/train.log",
    params:
        run_config=per_job(lambda w: run_config_json(w.stage, w.variant, int(w.seed))),
        out_dir=per_job(lambda w, output: os.path.dirname(output.result)),
        launcher=train_launcher(),  # workflow.launch, or workflow.run_script for script runs
        threads_per_proc=train_rule_setting(lambda r: r["cpus_per_proc"]),
    threads: train_rule_setting(lambda r: r["nproc_per_node"] * r["cpus_per_proc"])
    resources:
        **train_rule_resources(),
    # stages.<S>.resources.group_runs > 1: N runs per cluster job (rules/resources.smk, docs/slurm.md)
    group:
        train_rule_group()
    conda:
        "../envs/train.yaml"
    # Snakemake deletes train.log before it reruns a job, so every attempt (a preempted one, a
    # retry) writes its own train.attempt-N.log next to it; train.log is a hard link to the latest.
    shell:
        "{params.launcher} --log {log:q} --run-config {params.run_config:q} --out-dir {params.out_dir:q} "
        "--meta {input.meta:q} --threads {params.threads_per_proc}"
