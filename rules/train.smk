# One job per (stage, variant, seed): `torchrun -m workflow.train` with the run's resolved config.
# The resolved config is a param, so changing a stage's or variant's settings reruns exactly
# the runs it affects (Snakemake's params rerun trigger).


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
        threads_per_proc=lambda w: train_resources(w.stage)["cpus_per_proc"],
    threads: lambda w: train_resources(w.stage)["nproc_per_node"] * train_resources(w.stage)["cpus_per_proc"]
    resources:
        nproc_per_node=lambda w: train_resources(w.stage)["nproc_per_node"],
        mem_mb=lambda w: train_resources(w.stage)["mem_mb"],
        runtime=lambda w: train_resources(w.stage)["runtime"],
    shell:
        "torchrun --standalone --nnodes 1 --nproc_per_node {resources.nproc_per_node} "
        "-m workflow.train --run-config {params.run_config:q} --out-dir {params.out_dir} "
        "--meta {input.meta} --threads {params.threads_per_proc} > {log} 2>&1"
