"""Text samples from a trained checkpoint, decoded with the dataset's tokenizer.

The library part; the CLI is ``python -m workflow.sample`` (workflow/sample.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from workflow.data.tokenizers import ByteTokenizer, CharTokenizer, GPT2Tokenizer
from workflow.model import GPT
from workflow.model.spec import GPTConfig


def decoder_from_meta(meta: dict, meta_path: Path | None = None,
                      gpt2_ranks: Path | None = None) -> tuple[Callable[[Sequence[int]], str], int]:
    """(decode function ids -> text, prompt token id) for the tokenizer recorded in meta.json.

    Raises:
        ValueError: unknown ``tokenizer.kind`` or a meta.json without the vocab it needs
            (names the file and key).
    """
    tok = meta.get("tokenizer") or {}
    kind = tok.get("kind")
    where = f"{meta_path or 'meta.json'}: tokenizer"
    if kind in ("char", "charset"):
        vocab = tok.get("vocab")
        if not vocab:
            raise ValueError(f"{where}.vocab is missing (needed to decode kind {kind!r})")
        if kind == "char":
            dec = CharTokenizer(vocab).decode
            start = vocab.index("\n") if "\n" in vocab else 0
        else:
            dec = lambda ids: "".join(vocab[int(i)] for i in ids)  # noqa: E731
            start = tok.get("bos_id") if tok.get("bos_id") is not None else 0
        return dec, int(start)
    if kind == "byte":
        return ByteTokenizer().decode, ord("\n")
    if kind == "gpt2":
        ranks = gpt2_ranks
        if ranks is None and meta_path is not None:
            candidate = meta_path.resolve().parents[2] / "raw" / "gpt2" / "r50k_base.tiktoken"
            ranks = candidate if candidate.exists() else None
        enc = GPT2Tokenizer(ranks)
        return enc.decode, int(tok.get("eot_id", enc.eot_id))
    raise ValueError(f"{where}.kind: unknown tokenizer kind {kind!r} (char, charset, byte, gpt2)")


def load_model(checkpoint: Path, device: str = "cpu") -> GPT:
    """The GPT of a finished run's ``model.pt`` (written by workflow.train), in eval mode with
    its DepthWarm layers.

    The file is read with ``torch.load(weights_only=True)``: tensors, plain containers,
    numbers and strings only, so a planted pickle cannot run code.

    Raises:
        FileNotFoundError: no such file. KeyError: a file without ``model_config`` (names the
        file). ValueError: a file that is not a weights-only model file (names the file).
    """
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such model file")
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 (the unpickler raises several types)
        raise ValueError(f"{checkpoint}: not a weights-only model file ({type(err).__name__})") from err
    if "model_config" not in state:
        raise KeyError(f"{checkpoint}: no 'model_config' (model file of an older trainer)")
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.set_depth_schedule_state(int(state.get("active_layers") or model.config.n_layer), 0.0)
    return model.to(device).eval()


def sample_text(model: GPT, decode: Callable[[Sequence[int]], str], start_id: int, max_new_tokens: int,
                top_k: int | None, seed: int, temperature: float = 1.0) -> str:
    """Decoded ``max_new_tokens`` tokens sampled after the prompt ``[start_id]`` (prompt excluded).

    Top-k sampling with a CPU ``torch.Generator`` seeded with ``seed`` (deterministic on CPU).
    Source: nanoGPT sample.py / model.py ``generate``.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    idx = torch.tensor([[start_id]], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    return decode(out[0, 1:].tolist())
