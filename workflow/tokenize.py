"""tokenize: split from workflow/data/writers.py."""

from __future__ import annotations

import argparse
import json
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
