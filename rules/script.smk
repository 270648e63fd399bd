# Your own training script as a variant: the dataset in nanoGPT's layout for scripts
# that read {nanogpt_data_dir} (train.bin / val.bin as uint16 + meta.pkl), from the tokenized
# dataset (the same ids; workflow/data/nanogpt_layout.py). Only built when a script run asks for it.


rule nanogpt_data:
    input:
        meta=f"{DATA}/tokens/{{dataset}}/meta.json",
    output:
        train=f"{DATA}/tokens/{{dataset}}/nanogpt/train.bin",
        val=f"{DATA}/tokens/{{dataset}}/nanogpt/val.bin",
        meta=f"{DATA}/tokens/{{dataset}}/nanogpt/meta.pkl",
    wildcard_constraints:
        dataset="|".join(TRAIN_VAL_DATASETS + TRAIN_VAL_TEST_DATASETS),
    params:
        out_dir=lambda wc, output: os.path.dirname(output.meta),
    log:
        f"{DATA}/logs/nanogpt_data/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow.data.nanogpt_layout --meta {input.meta:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
