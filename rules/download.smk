# Download rules: one generic rule per kind of source (checked with a registry sha256 or not).
#
#   {data_dir}/raw/{source}/{filename}   <-   python -m workflow.download --source ... --file ...
#
# The log is tee'd so the download's progress bar stays visible in the terminal.
#
# The mirror (config["mirror"] or config["datasets"][name]["mirror"]) is handed to the
# download CLI through the environment variable STAGERUN_MIRRORS (rules/env.smk), NOT through
# params: a file's identity is its public URL + sha256/size (the params below), so moving to
# or from a mirror neither re-triggers downloads nor changes the between-workflow cache
# key (`snakemake --cache`).
# ensure(sha256=...) makes Snakemake re-check the hash after the job (it hashes with
# force=True, so --max-checksum-file-size does not limit this check in Snakemake 9).
# Input functions (raw_file_spec, raw_file_checks): rules/common.smk.
from workflow.data.registry import SOURCES

# Sources whose registry entry has a sha256 for every file are checked by ensure(sha256=).
CHECKED_SOURCES = sorted(
    n for n, s in SOURCES.items() if s.files and s.files_fn is None and all(f.sha256 for f in s.files)
)
UNCHECKED_SOURCES = sorted(n for n in SOURCES if n not in CHECKED_SOURCES)


rule download_checked:
    """Raw file of a source whose registry entry has a sha256 (verified twice: CLI and ensure)."""
    output:
        raw=ensure(f"{DATA}/raw/{{source}}/{{filename}}", sha256=lambda wc: raw_file_spec(wc).sha256),
    wildcard_constraints:
        source="|".join(CHECKED_SOURCES),
        filename=r"[^/]+",
    params:
        url=lambda wc: raw_file_spec(wc).url,
        sha256=lambda wc: raw_file_spec(wc).sha256,
        bytes=lambda wc: raw_file_spec(wc).bytes,
        checks=raw_file_checks,
    log:
        f"{DATA}/logs/download/{{source}}/{{filename}}.log",
    conda:
        "../envs/data.yaml"
    cache: "omit-software"
    retries: 2
    shell:
        "python -m workflow.download --source {wildcards.source:q} --file {wildcards.filename:q} "
        "--out {output.raw:q} --options-json {params.checks:q} 2>&1 | tee {log:q}"


use rule download_checked as download_unchecked with:
    """Raw file of a source without a registry sha256 (size check where known; FineWeb via HF hub)."""
    output:
        raw=f"{DATA}/raw/{{source}}/{{filename}}",
    wildcard_constraints:
        source="|".join(UNCHECKED_SOURCES),
        filename=r"[^/]+",
