# Tokenize rules: raw files -> {data_dir}/tokens/{tokens}/meta.json (+ {split}.bin).
#
# {tokens} is the dataset's name, with "-{hash}" of its token options when they are not the
# defaults (workflow.data.registry.tokens_dir_name): two studies with different splits of one
# dataset get two folders, and a folder's options (params) never change.
#
# Three rules (one, and two `use rule ... with:` copies) that differ only in their static split files (Snakemake needs the same
# outputs for every value of a wildcard): train/val datasets, train/val/test datasets,
# and FineWeb, whose meta.json points at the raw shards (no split files of its own).
# The mirror is not part of params (per-dataset options are, without "mirror" and the defaults).
# Helpers (tokenize_inputs, ...) are in rules/common.smk.


rule tokenize:
    """Datasets with train.bin and val.bin."""
    input: tokenize_inputs
    output:
        meta=f"{DATA}/tokens/{{tokens}}/meta.json",
        train=f"{DATA}/tokens/{{tokens}}/train.bin",
        val=f"{DATA}/tokens/{{tokens}}/val.bin",
    wildcard_constraints:
        tokens=tokens_dir_pattern(TRAIN_VAL_DATASETS),
    params:
        dataset=lambda wc: tokens_dataset(wc.tokens),
        raw_dir=tokenize_raw_dir,
        options=tokenize_options_json,
        out_dir=lambda wc, output: os.path.dirname(output.meta),
    threads: lambda wc: workflow.cores if tokens_dataset(wc.tokens) in PARALLEL_TOKENIZE_DATASETS else 1
    log:
        f"{DATA}/logs/tokenize/{{tokens}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow.tokenize --dataset {params.dataset:q} --raw-dir {params.raw_dir:q} "
        "--out-dir {params.out_dir:q} --options-json {params.options:q} --workers {threads} 2>&1 | tee {log:q}"


use rule tokenize as tokenize_with_test with:
    """Datasets with train.bin, val.bin and test.bin."""
    output:
        meta=f"{DATA}/tokens/{{tokens}}/meta.json",
        train=f"{DATA}/tokens/{{tokens}}/train.bin",
        val=f"{DATA}/tokens/{{tokens}}/val.bin",
        test=f"{DATA}/tokens/{{tokens}}/test.bin",
    wildcard_constraints:
        tokens=tokens_dir_pattern(TRAIN_VAL_TEST_DATASETS),
    threads: 1


use rule tokenize as tokenize_shards with:
    """Pre-tokenized shard datasets (FineWeb): only meta.json, pointing at the raw shards."""
    output:
        meta=f"{DATA}/tokens/{{tokens}}/meta.json",
    wildcard_constraints:
        tokens=tokens_dir_pattern(SHARD_DATASETS),
    threads: 1
