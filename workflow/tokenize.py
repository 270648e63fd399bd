"""Raw files -> token files + meta.json (docs/architecture.md, "Data layout").

CLI::

    python -m workflow.tokenize --dataset shakespeare_char --raw-dir data/raw/tinyshakespeare \\
        --out-dir data/tokens/shakespeare_char [--options-json '{}'] [--tokenizer-file F] [--workers N]

Writes ``{split}.bin`` (little-endian ``dtype`` ids, no header) for each split of the
dataset and LAST ``meta.json``; every file is written atomically (workflow.core.io), and a
stale meta.json is deleted before anything else, so a failed run never leaves a
meta.json that describes missing or different token files. FineWeb writes only
meta.json, pointing at the raw shards (1024-byte header, memmapped by workflow.data.loader).

``--tokenizer-file``: GPT-2 BPE ranks (tiktoken ``r50k_base.tiktoken``); default
``{raw-dir}/../gpt2/r50k_base.tiktoken`` when it exists, else tiktoken's own download/cache.
Options that change no token (``num_proc``, ``batch_docs``, ``chunk_bytes``) may also come from
``$STAGERUN_TOKENIZE_RUNTIME`` (JSON ``{dataset: {option: value}}``; rules/env.smk sets it),
so they are no Snakemake param: changing them reruns nothing.
Exit status 1 with a one-line ``error: ...`` naming the file / line / byte at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from workflow.data.prepare import prepare
from workflow.data.registry import (
    UnknownNameError,
)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m workflow.tokenize", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--raw-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options-json", default="{}")
    parser.add_argument("--tokenizer-file", default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        try:
            options = json.loads(args.options_json)
        except json.JSONDecodeError as err:
            raise ValueError(f"--options-json: invalid JSON at column {err.colno}: {err.msg}") from None
        runtime = json.loads(os.environ.get("STAGERUN_TOKENIZE_RUNTIME") or "{}").get(args.dataset) or {}
        options = {**runtime, **options}
        meta = prepare(args.dataset, args.raw_dir, args.out_dir, options,
                       tokenizer_file=args.tokenizer_file, workers=args.workers)
    except (UnknownNameError, ValueError, OSError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {v['tokens']:,}" for s, v in meta["splits"].items())
    print(f"{args.dataset}: vocab {meta['vocab_size']}, {meta['dtype']}, tokens: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
