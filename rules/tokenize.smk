# Tokenize rules: raw files -> {data_dir}/tokens/{dataset}/meta.json (+ {split}.bin).
#
# Three rules (one, and two `use rule ... with:` copies) that differ only in their static split files (Snakemake needs the same
# outputs for every value of a wildcard): train/val datasets, train/val/test datasets,
# and FineWeb, whose meta.json points at the raw shards (no split files of its own).
# The mirror is not part of params (per-dataset options are, without "mirror").
# Helpers (tokenize_inputs, ...) are in rules/common.smk.


rule tokenize:
    """Datasets with train.bin and val.bin."""
    input: tokenize_inputs
    output:
        meta=f"{DATA}/tokens/{{dataset}}/meta.json",
        train=f"{DATA}/tokens/{{dataset}}/train.bin",
        val=f"{DATA}/tokens/{{dataset}}/val.bin",
    wildcard_constraints:
        dataset="|".join(TRAIN_VAL_DATASETS),
    params:
        raw_dir=tokenize_raw_dir,
        options=tokenize_options_json,
        out_dir=lambda wc, output: os.path.dirname(output.meta),
    threads: lambda wc: workflow.cores if wc.dataset in PARALLEL_TOKENIZE_DATASETS else 1
    log:
        f"{DATA}/logs/tokenize/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow.tokenize --dataset {wildcards.dataset:q} --raw-dir {params.raw_dir:q} "
        "--out-dir {params.out_dir:q} --options-json {params.options:q} --workers {threads} 2>&1 | tee {log:q}"


use rule tokenize as tokenize_with_test with:
    """Datasets with train.bin, val.bin and test.bin."""
    output:
        meta=f"{DATA}/tokens/{{dataset}}/meta.json",
        train=f"{DATA}/tokens/{{dataset}}/train.bin",
        val=f"{DATA}/tokens/{{dataset}}/val.bin",
        test=f"{DATA}/tokens/{{dataset}}/test.bin",
    wildcard_constraints:
        dataset="|".join(TRAIN_VAL_TEST_DATASETS),
    threads: 1


use rule tokenize as tokenize_shards with:
    """Pre-tokenized shard datasets (FineWeb): only meta.json, pointing at the raw shards."""
    output:
        meta=f"{DATA}/tokens/{{dataset}}/meta.json",
    wildcard_constraints:
        dataset="|".join(SHARD_DATASETS),
    threads: 1
