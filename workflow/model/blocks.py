"""Transformer layers and blocks: norms, attention, MLP, the ``Block`` base class and registry.

``BLOCK_TYPES`` maps a block name to its class (``register_block``). Built in here:
``sequential`` (GPT-2 / nanoGPT pre-norm) and ``palm`` (PaLM's parallel attention + MLP).
The tensor-parallel blocks ``tp``, ``spd`` and ``parallel`` register from
``workflow.model.tp_blocks`` (imported by ``workflow.model.gpt``).

Shapes: B = batch size (sequences), T = sequence length (tokens), C = n_embd.
Nothing is printed on import or anywhere else in this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from workflow.model.block_spec import BUILTIN_BLOCKS, NORM_TYPES
from workflow.model.spec import GPTConfig

__all__ = [
    "BLOCK_TYPES",
    "NORM_TYPES",
    "Block",
    "SequentialBlock",
    "PalmBlock",
    "CausalSelfAttention",
    "MLP",
    "register_block",
    "make_norm",
    "activation",
    "rotate_qk",
]


def make_norm(config: GPTConfig, default_norm: str | None = None) -> nn.Module:
    """Normalization over the last dim (C): ``config.norm``, else ``default_norm`` (the block's),
    else ``config.resolved_norm``. LayerNorm (Ba et al. 2016; bias only when ``config.bias``) or
    RMSNorm (Zhang & Sennrich 2019). Both have a learned gain of C, unless ``config.norm_affine``
    is False: then no parameters (RMSNorm's eps None = ``torch.finfo(dtype).eps``, as
    modded-nanogpt's ``F.rms_norm``).

    Raises:
        ValueError: unknown norm name.
    """
    kind = config.norm or default_norm or config.resolved_norm
    affine = config.norm_affine
    if kind == "layernorm":
        return nn.LayerNorm(config.n_embd, bias=config.bias and affine, elementwise_affine=affine)
    if kind == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-6 if affine else None, elementwise_affine=affine)
    raise ValueError(f"unknown norm {kind!r}; valid: {list(NORM_TYPES)}")


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The MLP nonlinearity ``GPTConfig.mlp_activation``, elementwise: "gelu_tanh" (GPT-2's
    tanh approximation), "gelu" (exact, erf) or "relu2" (relu(x)^2, So et al. 2021, arXiv
    2109.08668). Raises ValueError for another name."""
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "gelu":
        return F.gelu(x)
    if kind == "relu2":
        return F.relu(x).square()
    raise ValueError(f"unknown mlp_activation {kind!r}; valid: ['gelu', 'gelu_tanh', 'relu2']")


def rotate_qk(q: torch.Tensor, k: torch.Tensor, config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """QK-norm and rotary embeddings of per-head queries and keys, as ``config`` asks.

    q, k: [..., T, head_dim] (heads in the leading dims; the same for a shard of heads). With
    ``qk_norm`` each head vector is RMS-normalized (``F.rms_norm``, no scale; Henry et al. 2020,
    arXiv 2010.04245). With ``pos_embedding: rotary`` (RoPE, Su et al. 2021, arXiv 2104.09864)
    the halves x1 = x[..., :d/2], x2 = x[..., d/2:] of position t rotate by angles
    t * base^(-2i/d): (x1 cos + x2 sin, -x1 sin + x2 cos), modded-nanogpt's convention. The
    rotation keeps each head's norm, so its order with the norm does not matter. Angles are
    computed in float32 for each call (no cache: T varies under the curriculum).
    Returns (q, k) of the input shapes and dtypes.
    """
    if config.qk_norm:
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
    if config.pos_embedding != "rotary":
        return q, k
    T, d = q.size(-2), q.size(-1)
    inv_freq = 1.0 / (config.rotary_base ** (torch.arange(0, d, 2, device=q.device, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(T, device=q.device, dtype=torch.float32), inv_freq)  # [T, d/2]
    cos, sin = angles.cos(), angles.sin()

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017), nanoGPT layout.

    ``c_attn`` projects C -> 3C (q, k, v), ``c_proj`` projects C -> C back to the residual
    stream (a residual projection: scaled init). Attention uses
    ``F.scaled_dot_product_attention(is_causal=True)`` (flash / memory-efficient kernels on GPU).
    Input and output: [B, T, C].
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.config = config
        self.qkv_shards = 1  # c_attn rows are [q; k; v] (Muon's muon_split_qkv orthogonalizes each)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q, k = rotate_qk(q, k, self.config)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0.0,
            is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise MLP: C -> mlp_ratio*C (``activation``: GELU, tanh approximation as GPT-2,
    unless ``config.mlp_activation`` says otherwise) -> C.

    ``c_proj`` is a residual projection (scaled init). Input and output: [B, T, C].
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.act = config.mlp_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(activation(self.c_fc(x), self.act)))


# --------------------------------------------------------------------------------------
# Blocks and their registry
# --------------------------------------------------------------------------------------

BLOCK_TYPES: dict[str, type["Block"]] = {}


def register_block(name: str):
    """Class decorator: register a ``Block`` subclass in ``BLOCK_TYPES`` under ``name``.

    A built-in name (``workflow.model.block_spec.BUILTIN_BLOCKS``) takes its class attributes
    ``default_norm``, ``tensor_parallel`` and ``comm_syncs_per_layer`` from that table (one
    source for the torch-free config check and the classes).

    Raises ValueError if the name is taken or the class lacks ``comm_syncs_per_layer``.
    """

    def deco(cls: type["Block"]) -> type["Block"]:
        if name in BLOCK_TYPES:
            raise ValueError(f"block type {name!r} is already registered ({BLOCK_TYPES[name]})")
        info = BUILTIN_BLOCKS.get(name)
        if info is not None:
            cls.default_norm = info.default_norm
            cls.tensor_parallel = info.tensor_parallel
            cls.comm_syncs_per_layer = info.comm_syncs_per_layer
        if not isinstance(getattr(cls, "comm_syncs_per_layer", None), int):
            raise ValueError(f"block class {cls.__name__} must define int comm_syncs_per_layer")
        cls.block_type = name
        BLOCK_TYPES[name] = cls
        return cls

    return deco


class Block(nn.Module):
    """Base class of transformer blocks (one layer of the residual stack).

    Contract for subclasses (so that new block types need nothing else from ``GPT``):
      * ``__init__(self, config: GPTConfig, layer_idx: int)``;
      * ``forward(x: Tensor[B, T, C]) -> Tensor[B, T, C]`` returns the NEW residual stream
        (x plus the block's update), so GPT can skip a block (DepthWarm) by not calling it;
      * Linear layers that write into the residual stream are named ``c_proj`` (their weight
        gets nanoGPT's scaled init 0.02 / sqrt(2 * n_layer));
      * class attributes ``comm_syncs_per_layer`` (int): nominal blocking all-reduces of
        activations per layer and forward pass when the block's weights are sharded
        tensor-parallel (Megatron-LM, Shoeybi et al. 2019: 2 for attention + MLP). Unsharded
        blocks have 0; ``default_norm`` (str): the norm when ``GPTConfig.norm`` is None;
        ``tensor_parallel`` (bool): the block is sharded over ``tp_size`` shards (those
        subclass ``tensor_parallel.TPBlockBase`` and exchange a sharded stream with GPT).
    """

    comm_syncs_per_layer: int = 0
    default_norm: str = "layernorm"
    tensor_parallel: bool = False
    block_type: str = ""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx


@register_block("sequential")
class SequentialBlock(Block):
    """GPT-2 / nanoGPT pre-norm block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)).

    Parameters (bias=False): 12 C^2 (attention 4 C^2, MLP 2 * mlp_ratio C^2 with mlp_ratio 4)
    + 2 C (two norms). Shapes [B, T, C] -> [B, T, C]. Not sharded: comm_syncs_per_layer = 0.
    Source: Radford et al. 2019; https://github.com/karpathy/nanoGPT (model.py, Block).
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.ln_1 = make_norm(config, self.default_norm)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, self.default_norm)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


@register_block("palm")
class PalmBlock(Block):
    """PaLM parallel block: h = norm(x); x = x + (attn(h) + mlp(h)) / sqrt(2).

    Attention and MLP read the SAME normalized input from one shared norm (RMSNorm by default,
    as PaLM), so under tensor parallelism their two row-parallel outputs could be summed before
    a single all-reduce; unsharded here: comm_syncs_per_layer = 0. The 1/sqrt(2) keeps the
    variance of the residual update equal to that of one branch.
    Parameters (bias=False): 12 C^2 + C (one norm). Shapes [B, T, C] -> [B, T, C].
    Called ``parallel`` before the tensor-parallel blocks existed; that name now belongs to
    the per-shard-stream block of ``workflow/model/tp_blocks.py`` (an old study's ``block_type:
    parallel`` without tp_size >= 2 fails with a message naming the rename).
    Source: Chowdhery et al. 2022, "PaLM", section 2 (Parallel Layers); GPT-J (Wang &
    Komatsuzaki 2021).
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.ln = make_norm(config, self.default_norm)
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return x + (self.attn(h) + self.mlp(h)) * (1.0 / math.sqrt(2.0))
