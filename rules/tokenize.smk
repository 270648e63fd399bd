# Tokenize rules: raw files -> {data_dir}/tokens/{tokens}/meta.json (+ {split}.bin).
#
# {tokens} is the dataset's name, with "-{hash}" of its token options when they are not the
# defaults (workflow.data.registry.tokens_dir_name): two studies with different splits of one
# dataset get two folders, and a folder's options (params) never change.
#
# Three rules (one, and two `use rule ... with:` copies) that differ only in their static split files (Snakemake needs the same
# outputs for every value of a wildcard): train/val datasets, train/val/test datasets,
# and FineWeb, whose meta.json points at the raw shards (no split files of its own).
# The mirror is not part of params (per-dataset options are, without "mirror" and the defaults);
# options that change no token (num_proc, batch_docs, chunk_bytes) reach the job through
# STAGERUN_TOKENIZE_RUNTIME (rules/env.smk), so changing them reruns nothing.
# Input functions (tokenize_inputs, tokenize_raw_dir, tokenize_options_json): rules/common.smk.
import os

from workflow.data.registry import DATASETS

# Datasets of each rule, by their static split files (rules/script.smk uses the first two as well).
TRAIN_VAL_DATASETS = sorted(n for n, d in DATASETS.items() if d.static_split_files and d.splits == ("train", "val"))
TRAIN_VAL_TEST_DATASETS = sorted(
    n for n, d in DATASETS.items() if d.static_split_files and d.splits == ("train", "val", "test")
)
SHARD_DATASETS = sorted(n for n, d in DATASETS.items() if not d.static_split_files)
PARALLEL_TOKENIZE_DATASETS = {"openwebtext"}  # their tokenizer uses several processes
# Wildcard constraint of {tokens}, per rule: one of its datasets, with an options hash or not.
TOKENS_PATTERN = {
    name: "(?:" + "|".join(datasets) + ")(?:-[0-9a-f]{12})?" if datasets else "(?!)"
    for name, datasets in [("train_val", TRAIN_VAL_DATASETS), ("train_val_test", TRAIN_VAL_TEST_DATASETS),
                           ("shards", SHARD_DATASETS)]
}


rule tokenize:
    """Datasets with train.bin and val.bin."""
    input: tokenize_inputs  # {data_dir}/raw/{source}/{filename} of its source (rules/download.smk), or local files
    output:
        meta=f"{DATA}/tokens/{{tokens}}/meta.json",
        train=f"{DATA}/tokens/{{tokens}}/train.bin",
        val=f"{DATA}/tokens/{{tokens}}/val.bin",
    wildcard_constraints:
        tokens=TOKENS_PATTERN["train_val"],
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
        tokens=TOKENS_PATTERN["train_val_test"],
    threads: 1


use rule tokenize as tokenize_shards with:
    """Pre-tokenized shard datasets (FineWeb): only meta.json, pointing at the raw shards."""
    output:
        meta=f"{DATA}/tokens/{{tokens}}/meta.json",
    wildcard_constraints:
        tokens=TOKENS_PATTERN["shards"],
    threads: 1
