# One job per (stage, variant, seed): `python -m workflow.launch` with the run's resolved config. It
# checks the data, runs the trainer in its own process (one process) or through torchrun (several;
# several nodes: one `srun` task per GPU), and exits with the trainer's status (75 = preempted).
# The resolved config is a param, so changing a stage's or a variant's settings reruns exactly the
# runs it affects (Snakemake's params rerun trigger).
# SLURM resources come from the study (stages.<S>.resources) via workflow.config.slurm_resources.

rule train:
    input:
        meta=dataset_meta(),
    output:
        result=f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/result.json",
        metrics=f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/metrics.jsonl",
    log:
        f"{RESULTS}/stage_{{stage}}/{{variant}}/seed_{{seed}}/train.log",
    params:
        run_config=lambda w: json.dumps(run_config(config, w.stage, w.variant, int(w.seed)), sort_keys=True),
        out_dir=lambda w, output: os.path.dirname(output.result),
        launcher=lambda w: launch_command(train_resources(w.stage)),
        threads_per_proc=lambda w: train_resources(w.stage)["cpus_per_proc"],
    threads: lambda w: train_resources(w.stage)["nproc_per_node"] * train_resources(w.stage)["cpus_per_proc"]
    resources:
        nproc_per_node=lambda w: train_resources(w.stage)["nproc_per_node"],
        gpu=train_slurm_resource("gpu"),
        gpu_model=train_slurm_resource("gpu_model"),
        nodes=train_slurm_resource("nodes"),
        cpus_per_task=train_slurm_resource("cpus_per_task"),
        mem_mb=train_slurm_resource("mem_mb"),
        runtime=train_slurm_resource("runtime"),
        slurm_partition=train_slurm_resource("slurm_partition"),
        mpi=train_slurm_resource("mpi"),
        tasks=train_slurm_resource("tasks"),
        tasks_per_gpu=train_slurm_resource("tasks_per_gpu"),
        tasks_per_node=train_slurm_resource("tasks_per_node"),
        slurm_extra=train_slurm_resource("slurm_extra"),
    conda:
        "../envs/train.yaml"
    # Snakemake deletes train.log before it reruns a job, so every attempt (a preempted one, a
    # retry) writes its own train.attempt-N.log next to it; train.log is a hard link to the latest.
    shell:
        "{params.launcher} --log {log:q} --run-config {params.run_config:q} --out-dir {params.out_dir:q} "
        "--meta {input.meta:q} --threads {params.threads_per_proc}"
