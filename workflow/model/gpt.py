"""The GPT language model (nanoGPT layout) built from per-layer block types.

The model follows nanoGPT's ``model.py`` (Karpathy, https://github.com/karpathy/nanoGPT):
learned token + position embeddings, a stack of pre-norm transformer blocks, a final norm
and a linear head tied to the token embedding, GPT-2 initialization (normal 0.02, residual
projections scaled by 1/sqrt(2 * n_layer)) and causal attention through
``F.scaled_dot_product_attention``. Layer i is a ``BLOCK_TYPES[config.layer_block_types[i]]``;
tensor-parallel blocks (``workflow/model/tp_blocks.py``) pass a possibly split residual stream between
them, merged before the first unsharded block and before ``ln_f``.

Shapes: B = batch size (sequences), T = sequence length (tokens, T <= block_size),
C = n_embd, V = vocab_size (unpadded), Vp = padded_vocab_size.

Nothing is printed on import or anywhere else in this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from workflow.model.blocks import BLOCK_TYPES, make_norm
from workflow.model.tp_blocks import TPBlockBase, describe_pattern
from workflow.parallel.mappings import ShardedStream, TPRuntime
from workflow.model.spec import GPTConfig

__all__ = ["GPT", "compile_gpt"]


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 / nanoGPT).

    Modules: ``transformer.wte`` token embedding [Vp, C], ``transformer.wpe`` learned position
    embedding [block_size, C] (only with ``pos_embedding: learned``; rotary embeddings act on q
    and k inside attention, ``blocks.rotate_qk``), ``transformer.h`` ModuleList of n_layer blocks (layer i:
    ``BLOCK_TYPES[config.layer_block_types[i]]``), ``transformer.ln_f`` final norm, ``lm_head``
    Linear C -> Vp (weight tied to wte when ``tie_embeddings``).

    Tensor parallelism: with tp / spd / parallel layers, ``self.tp`` is the
    :class:`~workflow.parallel.mappings.TPRuntime` all those blocks share (simulated until
    ``tensor_parallel.parallelize_gpt`` shards the model for real mode); its counter holds the
    collectives of the passes (``tensor_parallel.tp_comm_counts``). Otherwise ``self.tp`` is None.

    Initialization (nanoGPT / GPT-2): Linear and Embedding weights ~ N(0, 0.02), biases 0,
    norm gains 1, every ``*.c_proj.weight`` ~ N(0, 0.02 / sqrt(2 * n_layer)), or 0 with
    ``zero_init_proj`` (modded-nanogpt). Deterministic given ``torch.manual_seed``.

    DepthWarm: ``set_depth_schedule_state(active_layers, drop_prob, generator)`` restricts the
    forward pass to the first ``active_layers`` blocks and, in training mode, skips active
    blocks at random (see ``depth_warm_state``). Skipped blocks get no gradient (DDP needs
    ``find_unused_parameters=True`` while layers are inactive or dropped).

    Source: https://github.com/karpathy/nanoGPT (model.py); Radford et al. 2019.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.pos_embedding == "learned" else {}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([BLOCK_TYPES[name](config, i) for i, name in enumerate(config.layer_block_types)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.tp: TPRuntime | None = (TPRuntime(config.tp_size, parallel_merge=config.parallel_merge)
                                     if config.tensor_parallel else None)
        for block in self.transformer.h:
            if isinstance(block, TPBlockBase):
                block.runtime = self.tp
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        # DepthWarm state (full model unless the trainer sets it).
        self.active_layers = config.n_layer
        self.drop_prob = 0.0
        self._depth_generator: torch.Generator | None = None
        if self.lm_head.weight.device.type != "meta":  # meta tensors (counting) hold no values
            self.apply(self._init_weights)
            resid_std = 0.02 / math.sqrt(2 * config.n_layer)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    if config.zero_init_proj:
                        nn.init.zeros_(p)
                    else:
                        nn.init.normal_(p, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---- DepthWarm -------------------------------------------------------------------

    def set_depth_schedule_state(self, active_layers: int, drop_prob: float = 0.0,
                                 generator: torch.Generator | None = None) -> None:
        """Set DepthWarm state for the following forward passes.

        Args:
            active_layers: run only blocks 0 .. active_layers-1 (1 <= active_layers <= n_layer).
            drop_prob: in training mode, active block i of n is skipped with probability
                drop_prob * (i + 1) / n (0 = none); ignored in eval mode.
            generator: CPU torch.Generator for the drop draws (for determinism; seed it
                identically on every rank so ranks drop the same blocks). None = global RNG.

        Raises:
            ValueError: active_layers outside [1, n_layer] or drop_prob outside [0, 1).
        """
        if not 1 <= int(active_layers) <= self.config.n_layer:
            raise ValueError(f"active_layers must be in [1, {self.config.n_layer}], "
                             f"got {active_layers}")
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.active_layers = int(active_layers)
        self.drop_prob = float(drop_prob)
        self._depth_generator = generator

    def _blocks_to_run(self) -> list[int]:
        n = self.active_layers
        if not self.training or self.drop_prob <= 0.0:
            return list(range(n))
        draws = torch.rand(n, generator=self._depth_generator)  # CPU draws: device independent
        keep_prob = 1.0 - self.drop_prob * torch.arange(1, n + 1, dtype=torch.float32) / n
        return [i for i in range(n) if draws[i].item() < keep_prob[i].item()]

    # ---- forward / generate ----------------------------------------------------------

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and (optionally) the loss.

        Args:
            idx: LongTensor [B, T] of token ids in [0, vocab_size), T <= block_size.
            targets: LongTensor [B, T] of next-token ids, or None. Entries equal to -1 are
                ignored in the loss.

        Returns:
            (logits [B, T, vocab_size] (padded vocabulary rows sliced off; dtype of the
            computation), loss: scalar mean cross-entropy in nats per token (float32), or None).

        Raises:
            ValueError: T > block_size.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:  # learned positions (rotary acts inside attention)
            x = x + self.transformer.wpe(torch.arange(T, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
        if self.tp is not None:
            self.tp.counter.passes += 1
        for i in self._blocks_to_run():
            block = self.transformer.h[i]
            if isinstance(x, ShardedStream) and (not isinstance(block, TPBlockBase) or (
                    self.tp.parallel_merge == "reference" and block.block_type != "parallel")):
                x = self.tp.merge(x)  # reference: a run of parallel blocks closes with its own merge
            x = block(x)
        if isinstance(x, ShardedStream):
            x = self.tp.merge(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)[..., : self.config.vocab_size]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                   targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens autoregressively (nanoGPT's generate).

        Args:
            idx: LongTensor [B, T0] prompt (cropped to the last block_size tokens each step).
            max_new_tokens: tokens to append (>= 0).
            temperature: logits are divided by it; <= 0 means greedy (argmax).
            top_k: keep only the k most likely tokens (None = all).
            generator: torch.Generator on idx's device for ``torch.multinomial``.

        Returns:
            LongTensor [B, T0 + max_new_tokens]. Call ``model.eval()`` first for no dropout.
        """
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size \
                else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    # ---- accounting ------------------------------------------------------------------

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Exact count of distinct parameters (a tied head counts once).

        With ``exclude_embeddings`` the token embedding wte, the position embedding wpe and an
        untied lm_head are left out (Kaplan et al. 2020's non-embedding N), so the result is
        the blocks plus ln_f and does not depend on vocab_size or tie_embeddings.
        Works on the meta device (no memory needed). A model sharded for real tensor
        parallelism counts the whole model (each local shard x tp_size).
        """
        skip: set[int] = set()
        if exclude_embeddings:
            skip = {id(self.transformer.wte.weight), id(self.lm_head.weight)}
            if "wpe" in self.transformer:
                skip.add(id(self.transformer.wpe.weight))
        shards = self.config.tp_size if self.tp is not None and self.tp.mode == "real" else 1
        return sum(p.numel() * (shards if getattr(p, "_tp_sharded", False) else 1)
                   for p in self.parameters() if id(p) not in skip)

    def describe(self) -> str:
        """One-paragraph description: architecture fields and exact parameter counts."""
        c = self.config
        total = self.num_parameters()
        non_emb = self.num_parameters(exclude_embeddings=True)
        return (
            f"GPT norm={c.resolved_norm}{'' if c.norm_affine else ' (no scale)'} "
            f"pos={c.pos_embedding} qk_norm={c.qk_norm} mlp={c.mlp_activation} n_layer={c.n_layer} "
            f"n_head={c.n_head} n_embd={c.n_embd} head_dim={c.head_dim} "
            f"block_size={c.block_size} vocab_size={c.vocab_size} "
            f"(padded {c.padded_vocab_size}) mlp_ratio={c.mlp_ratio} bias={c.bias} "
            f"tie_embeddings={c.tie_embeddings} dropout={c.dropout} "
            f"depth_warm={c.depth_warm}; parameters: total={total:,} "
            f"non-embedding={non_emb:,}; "
            + (describe_pattern(c) if c.tensor_parallel else
               f"block_type={c.block_type}" if c.block_pattern is None else
               f"pattern={','.join(c.layer_block_types)}")
        )


def compile_gpt(model: GPT) -> nn.Module:
    """``torch.compile`` a GPT for training (``train.compile``); returns the module forward
    passes run through. Parameters stay ``model``'s own (no copies).

    * Default: the whole model, ``torch.compile(model)``: one graph per mode (train and eval)
      covering embeddings, every block, ``ln_f``, the head and the loss. The sync points of
      tensor-parallel blocks (``workflow.parallel.mappings.TPRuntime``: ``split``, ``merge``,
      ``count_f``, ``count_g``) are ``torch.compiler.disable``d: the graph breaks there and
      they run eagerly (their counters
      are Python side effects, also in the backward pass), so a tp / spd / parallel pattern
      compiles as one graph per stretch between sync points.
    * DepthWarm (``config.depth_warm``): regional compilation. Each block is compiled on its
      own (``nn.Module.compile``: blocks of one class share one compiled graph per mode) and
      ``GPT.forward`` stays eager. Which blocks run is decided per step in Python (the active
      depth grows, stochastic depth draws a random subset with ``.item()``); compiling the
      whole model would specialize on every subset and recompile until dynamo's recompile
      limit (8) sends the model back to eager.

    Returns:
        ``torch.compile(model)`` (an ``OptimizedModule`` wrapping ``model``), or ``model``
        itself with compiled blocks (DepthWarm).

    Source: https://pytorch.org/tutorials/recipes/regional_compilation.html (regional
    compilation); docs/performance.md "torch.compile" (where the graph breaks and why).
    """
    if model.config.depth_warm:
        for block in model.transformer.h:
            block.compile()
        return model
    return torch.compile(model)
