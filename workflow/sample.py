"""Text samples from a trained checkpoint, decoded with the dataset's tokenizer.

    python -m workflow.sample --model results/<study>/stage_C/<variant>/seed_1337/model.pt \
        --meta data/tokens/<dataset>/meta.json --output sample.txt \
        --max-new-tokens 300 --top-k 20 --seed 1337

The model is rebuilt from the checkpoint's ``model_config`` (written by workflow.train) with
its DepthWarm state, put in eval mode and sampled autoregressively with top-k sampling
(nanoGPT's ``sample.py``/``GPT.generate``) from a fixed ``torch.Generator`` seed, so the same
checkpoint and arguments give the same text. The prompt is the tokenizer's document start:
``bos_id`` (fixed charset), ``<|endoftext|>`` (GPT-2 BPE), a newline (character level, if in the
vocabulary), else token 0. With ``--result`` a failed run (``success: false``, no final
checkpoint) gives a one-line note instead of failing the workflow.

Decoding (meta.json ``tokenizer.kind``): ``char`` / ``charset`` from the recorded ``vocab``,
``byte`` as UTF-8, ``gpt2`` with tiktoken (ranks from ``--gpt2-ranks``, else
``{data_dir}/raw/gpt2/r50k_base.tiktoken`` next to the token folder, else tiktoken's cache).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from workflow.core.io import read_json, write_text_atomic
from workflow.training.sampling import decoder_from_meta, load_model, sample_text


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m workflow.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", "--checkpoint", dest="checkpoint", required=True, type=Path,
                        help="the run's model.pt")
    parser.add_argument("--meta", required=True, type=Path, help="the dataset's meta.json")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=20, help="0 = no top-k cut")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--result", type=Path, help="the run's result.json: a failed run gets a note, not an error")
    parser.add_argument("--gpt2-ranks", type=Path, help="r50k_base.tiktoken for GPT-2 BPE datasets")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    header = ""
    if args.result is not None:
        result = read_json(args.result)
        run = f"{result.get('study')}/stage_{result.get('stage')}/{result.get('variant')}/seed_{result.get('seed')}"
        if not result.get("success"):
            write_text_atomic(args.output, f"# {run}: no sample, the run failed ({result.get('reason')})\n")
            return 0
        header = f"# {run}: final val_loss {result.get('final_val_loss')}, step {result.get('final_step')}\n"
    try:
        meta = read_json(args.meta)
        decode, start = decoder_from_meta(meta, args.meta, args.gpt2_ranks)
        model = load_model(args.checkpoint, args.device)
    except (OSError, KeyError, ValueError) as err:
        print(f"workflow.sample: {err}", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    text = sample_text(model, decode, start, args.max_new_tokens, args.top_k or None, args.seed, args.temperature)
    header += (f"# {args.max_new_tokens} tokens, top_k {args.top_k}, temperature {args.temperature}, "
               f"seed {args.seed}\n")
    write_text_atomic(args.output, header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
