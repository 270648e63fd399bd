"""GPT language model with pluggable transformer blocks, model presets and DepthWarm.

The model follows nanoGPT's ``model.py`` (Karpathy, https://github.com/karpathy/nanoGPT):
learned token + position embeddings, a stack of pre-norm transformer blocks, a final norm
and a linear head tied to the token embedding, GPT-2 initialization (normal 0.02, residual
projections scaled by 1/sqrt(2 * n_layer)) and causal attention through
``F.scaled_dot_product_attention``.

Pieces
------
``GPTConfig``            architecture fields (see its docstring).
``MODEL_PRESETS``        name -> GPTConfig fields; ``build_model_config`` applies overrides.
``BLOCK_TYPES``          registry of block classes (``register_block``); every class has the
                         class attribute ``comm_syncs_per_layer`` (see ``Block``).
``GPT``                  the model: ``forward``, ``generate``, ``num_parameters``, ``describe``,
                         ``set_depth_schedule_state`` (DepthWarm).
``depth_warm_state``     pure DepthWarm schedule the trainer calls each step.

Shapes: B = batch size (sequences), T = sequence length (tokens, T <= block_size),
C = n_embd, V = vocab_size (unpadded), Vp = padded_vocab_size.

Nothing is printed on import or anywhere else in this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GPTConfig",
    "MODEL_PRESETS",
    "PRESET_REFERENCE_VOCAB",
    "BLOCK_TYPES",
    "Block",
    "SequentialBlock",
    "ParallelBlock",
    "CausalSelfAttention",
    "MLP",
    "GPT",
    "register_block",
    "build_model_config",
    "depth_warm_state",
    "make_norm",
]


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """Architecture of one GPT (all sizes in elements, not bytes).

    Fields:
        vocab_size: number of token ids the data can contain (V); logits have V columns.
        block_size: maximum sequence length T (learned position embeddings have this many rows).
        n_layer: number of transformer blocks.
        n_head: attention heads per block; ``n_embd % n_head == 0`` (head dim = n_embd / n_head).
        n_embd: residual stream width C.
        dropout: dropout probability on embeddings, attention weights and residual branches.
        bias: biases in Linear layers and LayerNorm (nanoGPT's flag; False = modern default).
        block_type: key of ``BLOCK_TYPES`` ("sequential" = pre-norm attention then MLP as in
            GPT-2/nanoGPT; "parallel" = PaLM's parallel attention + MLP).
        pad_vocab_multiple: the embedding / head has ``padded_vocab_size`` rows, V rounded up to
            this multiple (64 for GPT-2: 50257 -> 50304, faster matmuls). Padded rows are never
            predicted: logits are sliced to V columns.
        tie_embeddings: the head shares its weight with the token embedding (Press & Wolf 2017).
        norm: "layernorm" | "rmsnorm" | None. None = the block type's ``default_norm``
            (sequential: layernorm as nanoGPT; parallel: rmsnorm as PaLM). Also used by the
            final norm ``ln_f``.
        mlp_ratio: MLP hidden width = mlp_ratio * n_embd (4 in GPT-2).
        depth: only for the "deep" preset (nanochat-style): n_embd = 64 * depth, n_layer = depth,
            heads of dim 128 (64 if n_embd is not divisible by 128). Ignored when None.
        depth_warm: enable DepthWarm (progressive layer activation + stochastic-depth warmup);
            see ``depth_warm_state`` for the schedule and the four keys below.
        depth_warm_start_layers: active layers at step 0 (>= 1).
        depth_warm_steps: step from which all n_layer layers are active (layers join linearly
            in order before it).
        depth_warm_drop_prob: stochastic-depth drop probability at step 0 (of the deepest
            active layer; shallower layers drop less, linearly in depth).
        depth_warm_drop_until: step from which the drop probability is 0 (linear decay).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False
    block_type: str = "sequential"
    pad_vocab_multiple: int = 1
    tie_embeddings: bool = True
    norm: str | None = None
    mlp_ratio: int = 4
    depth: int | None = None
    depth_warm: bool = False
    depth_warm_start_layers: int = 1
    depth_warm_steps: int = 0
    depth_warm_drop_prob: float = 0.0
    depth_warm_drop_until: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                     "pad_vocab_multiple", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"GPTConfig.block_type {self.block_type!r} is unknown; "
                             f"valid: {sorted(BLOCK_TYPES)}")
        if self.norm is not None and self.norm not in NORM_TYPES:
            raise ValueError(f"GPTConfig.norm {self.norm!r} is unknown; valid: {sorted(NORM_TYPES)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.depth_warm_drop_prob < 1.0:
            raise ValueError("GPTConfig.depth_warm_drop_prob must be in [0, 1), "
                             f"got {self.depth_warm_drop_prob!r}")
        if self.depth_warm_start_layers < 1:
            raise ValueError("GPTConfig.depth_warm_start_layers must be >= 1, "
                             f"got {self.depth_warm_start_layers!r}")
        if self.depth_warm_steps < 0 or self.depth_warm_drop_until < 0:
            raise ValueError("GPTConfig.depth_warm_steps and depth_warm_drop_until must be >= 0")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding / head: vocab_size rounded up to pad_vocab_multiple."""
        m = self.pad_vocab_multiple
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def head_dim(self) -> int:
        """Per-head width n_embd // n_head."""
        return self.n_embd // self.n_head

    @property
    def resolved_norm(self) -> str:
        """The norm actually used: ``norm`` or the block type's ``default_norm``."""
        return self.norm or BLOCK_TYPES[self.block_type].default_norm


# Presets: GPTConfig fields except vocab_size, which always comes from the data (meta.json).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's shakespeare_char model, shrunk to run on a laptop CPU in minutes (char vocab).
    "nanogpt-small": dict(block_size=32, n_embd=64, n_layer=2, n_head=8),
    # byte-level model (vocab 256): ~3.3M parameters.
    "nanogpt-medium": dict(block_size=128, n_embd=256, n_layer=4, n_head=8),
    # GPT-2 small (Radford et al. 2019) as in nanoGPT / modded-nanogpt: vocab 50257 -> 50304.
    "gpt2-124m": dict(block_size=1024, n_embd=768, n_layer=12, n_head=12, pad_vocab_multiple=64),
    # nanochat-style depth-parameterized model for tiny vocabularies (n_embd = 64 * depth).
    "deep": dict(depth=24, block_size=1024, pad_vocab_multiple=32),
}

# The vocabulary each preset is meant for (for parameter-count documentation and tests only;
# build_model_config always uses the data's vocab_size unless the model config overrides it).
PRESET_REFERENCE_VOCAB: dict[str, int] = {
    "nanogpt-small": 65,      # tiny Shakespeare characters
    "nanogpt-medium": 256,    # bytes
    "gpt2-124m": 50257,       # GPT-2 BPE (tiktoken "gpt2")
    "deep": 32,               # tiny fixed charsets
}

_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))


def _deep_dims(depth: int) -> dict[str, int]:
    """n_layer, n_embd, n_head of the nanochat-style "deep" model of the given depth.

    n_embd = 64 * depth (nanochat's aspect ratio, https://github.com/karpathy/nanochat);
    heads of dim 128, or 64 when n_embd is not divisible by 128 (odd depth).
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"model key 'depth' must be a positive integer, got {depth!r}")
    n_embd = 64 * depth
    head_dim = 128 if n_embd % 128 == 0 else 64
    return dict(n_layer=depth, n_embd=n_embd, n_head=n_embd // head_dim)


def build_model_config(model_cfg: Mapping[str, Any], vocab_size: int) -> GPTConfig:
    """GPTConfig from a study's ``model`` section and the dataset's vocabulary size.

    Args:
        model_cfg: ``{"preset": name, **overrides}`` (schema ``definitions/model``); overrides
            are GPTConfig field names. ``preset`` defaults to "nanogpt-small". When ``depth`` is
            set (the "deep" preset, or an override), n_layer / n_embd / n_head are derived from
            it unless given explicitly as overrides. A value of None means "the preset's value".
        vocab_size: token ids in the data (meta.json ``vocab_size``); used unless the model
            config overrides ``vocab_size``.

    Returns:
        GPTConfig.

    Raises:
        ValueError: unknown preset (names the valid presets), unknown key (names the key and the
            valid keys), or an invalid field value (from GPTConfig, naming the field).
    """
    # None means "the preset's value" (schema-filled nulls must not erase preset fields).
    cfg = {k: v for k, v in dict(model_cfg or {}).items() if v is not None}
    preset = cfg.pop("preset", "nanogpt-small")
    if preset not in MODEL_PRESETS:
        raise ValueError(f"model key 'preset': unknown preset {preset!r}; "
                         f"valid presets: {sorted(MODEL_PRESETS)}")
    unknown = sorted(k for k in cfg if k not in _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"model key {unknown[0]!r} is not a GPTConfig field "
                         f"(unknown keys: {unknown}); valid keys: "
                         f"{sorted(('preset',) + _CONFIG_FIELDS)}")
    fields: dict[str, Any] = dict(MODEL_PRESETS[preset])
    fields["vocab_size"] = int(vocab_size)
    depth = cfg.get("depth", fields.get("depth"))
    if depth is not None:
        fields.update(_deep_dims(depth))
    fields.update(cfg)
    return GPTConfig(**fields)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------

NORM_TYPES = ("layernorm", "rmsnorm")


def make_norm(config: GPTConfig) -> nn.Module:
    """Normalization over the last dim (C) as configured: LayerNorm (Ba et al. 2016; bias only
    when ``config.bias``) or RMSNorm (Zhang & Sennrich 2019). Both have a learned gain of C."""
    kind = config.resolved_norm
    if kind == "layernorm":
        return nn.LayerNorm(config.n_embd, bias=config.bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-6)
    raise ValueError(f"unknown norm {kind!r}; valid: {list(NORM_TYPES)}")


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
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0.0,
            is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise MLP: C -> mlp_ratio*C (GELU, tanh approximation as GPT-2) -> C.

    ``c_proj`` is a residual projection (scaled init). Input and output: [B, T, C].
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


# --------------------------------------------------------------------------------------
# Blocks and their registry
# --------------------------------------------------------------------------------------

BLOCK_TYPES: dict[str, type["Block"]] = {}


def register_block(name: str):
    """Class decorator: register a ``Block`` subclass in ``BLOCK_TYPES`` under ``name``.

    Raises ValueError if the name is taken or the class lacks ``comm_syncs_per_layer``.
    """

    def deco(cls: type["Block"]) -> type["Block"]:
        if name in BLOCK_TYPES:
            raise ValueError(f"block type {name!r} is already registered ({BLOCK_TYPES[name]})")
        if not isinstance(getattr(cls, "comm_syncs_per_layer", None), int):
            raise ValueError(f"block class {cls.__name__} must define int comm_syncs_per_layer")
        cls.block_type = name
        BLOCK_TYPES[name] = cls
        return cls

    return deco


class Block(nn.Module):
    """Base class of transformer blocks (one layer of the residual stack).

    Contract for subclasses (so that new block types, e.g. tensor-parallel ones, need nothing
    else from ``GPT``):
      * ``__init__(self, config: GPTConfig, layer_idx: int)``;
      * ``forward(x: Tensor[B, T, C]) -> Tensor[B, T, C]`` returns the NEW residual stream
        (x plus the block's update), so GPT can skip a block (DepthWarm) by not calling it;
      * Linear layers that write into the residual stream are named ``c_proj`` (their weight
        gets nanoGPT's scaled init 0.02 / sqrt(2 * n_layer));
      * class attributes ``comm_syncs_per_layer`` (int): blocking all-reduces of activations per
        layer and forward pass that the block needs when its weights are sharded
        tensor-parallel (Megatron-LM, Shoeybi et al. 2019: 2 for attention + MLP, one after each
        row-parallel projection). Blocks that are not sharded (data parallel only; gradient
        all-reduce happens once per step in the trainer, not per layer) have 0. A future
        tensor-parallel study registers e.g. "tp" (2) and "spd" (1);
        ``default_norm`` (str): the norm when ``GPTConfig.norm`` is None.
    """

    comm_syncs_per_layer: int = 0
    default_norm: str = "layernorm"
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

    comm_syncs_per_layer = 0
    default_norm = "layernorm"

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


@register_block("parallel")
class ParallelBlock(Block):
    """PaLM parallel block: h = norm(x); x = x + (attn(h) + mlp(h)) / sqrt(2).

    Attention and MLP read the SAME normalized input from one shared norm (RMSNorm by default,
    as PaLM), so under tensor parallelism their two row-parallel outputs can be summed before a
    single all-reduce; unsharded here: comm_syncs_per_layer = 0. The 1/sqrt(2) keeps the
    variance of the residual update equal to that of one branch.
    Parameters (bias=False): 12 C^2 + C (one norm). Shapes [B, T, C] -> [B, T, C].
    Source: Chowdhery et al. 2022, "PaLM", section 2 (Parallel Layers); GPT-J (Wang &
    Komatsuzaki 2021).
    """

    comm_syncs_per_layer = 0
    default_norm = "rmsnorm"

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.ln = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return x + (self.attn(h) + self.mlp(h)) * (1.0 / math.sqrt(2.0))


# --------------------------------------------------------------------------------------
# DepthWarm schedule
# --------------------------------------------------------------------------------------


def depth_warm_state(step: int, cfg: GPTConfig | Mapping[str, Any]) -> tuple[int, float]:
    """DepthWarm schedule: (active_layers, drop_prob) for training step ``step`` (0-based).

    Layers join in order (layer 0 first). With L = n_layer, s0 = depth_warm_start_layers
    (clamped to [1, L]), S = depth_warm_steps, p0 = depth_warm_drop_prob,
    D = depth_warm_drop_until:

        active_layers(step) = L                                      if S == 0 or step >= S
                            = s0 + floor((L - s0) * step / S)        otherwise (linear ramp)
        drop_prob(step)     = p0 * max(0, 1 - step / D)              (0 if D == 0)

    ``drop_prob`` is the stochastic-depth probability of skipping the deepest active layer in
    a training forward pass; active layer i (0-based) of n is skipped with probability
    drop_prob * (i + 1) / n (the linear-decay rule of Huang et al. 2016, "Deep Networks with
    Stochastic Depth"); whole layers are skipped per batch as in LayerDrop (Fan et al. 2019).
    When ``depth_warm`` is False the state is (L, 0.0): the full model.

    Args:
        step: training step (>= 0).
        cfg: a GPTConfig, or a mapping with n_layer and the depth_warm_* keys (schema
            ``definitions/model``; missing depth_warm_* keys take GPTConfig's defaults).

    Returns:
        (active_layers: int in [1, n_layer], drop_prob: float in [0, 1)).

    Raises:
        ValueError: negative step or a mapping without n_layer.
    """
    if step < 0:
        raise ValueError(f"depth_warm_state: step must be >= 0, got {step}")
    get = (lambda k, d=None: getattr(cfg, k, d)) if isinstance(cfg, GPTConfig) else cfg.get
    n_layer = get("n_layer")
    if n_layer is None:
        raise ValueError("depth_warm_state: config has no 'n_layer'")
    if not get("depth_warm", False):
        return int(n_layer), 0.0
    start = min(max(int(get("depth_warm_start_layers", 1)), 1), n_layer)
    ramp = int(get("depth_warm_steps", 0))
    if ramp <= 0 or step >= ramp:
        active = n_layer
    else:
        active = start + ((n_layer - start) * step) // ramp
    p0 = float(get("depth_warm_drop_prob", 0.0))
    until = int(get("depth_warm_drop_until", 0))
    drop = 0.0 if until <= 0 else p0 * max(0.0, 1.0 - step / until)
    return int(active), float(drop)


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 / nanoGPT).

    Modules: ``transformer.wte`` token embedding [Vp, C], ``transformer.wpe`` learned position
    embedding [block_size, C], ``transformer.h`` ModuleList of n_layer blocks of
    ``BLOCK_TYPES[config.block_type]``, ``transformer.ln_f`` final norm, ``lm_head`` Linear
    C -> Vp (weight tied to wte when ``tie_embeddings``).

    Initialization (nanoGPT / GPT-2): Linear and Embedding weights ~ N(0, 0.02), biases 0,
    norm gains 1, every ``*.c_proj.weight`` ~ N(0, 0.02 / sqrt(2 * n_layer)). Deterministic
    given ``torch.manual_seed``.

    DepthWarm: ``set_depth_schedule_state(active_layers, drop_prob, generator)`` restricts the
    forward pass to the first ``active_layers`` blocks and, in training mode, skips active
    blocks at random (see ``depth_warm_state``). Skipped blocks get no gradient (DDP needs
    ``find_unused_parameters=True`` while layers are inactive or dropped).

    Source: https://github.com/karpathy/nanoGPT (model.py); Radford et al. 2019.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        block_cls = BLOCK_TYPES[config.block_type]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([block_cls(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
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
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i in self._blocks_to_run():
            x = self.transformer.h[i](x)
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
        Works on the meta device (no memory needed).
        """
        skip: set[int] = set()
        if exclude_embeddings:
            skip = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight),
                    id(self.lm_head.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def describe(self) -> str:
        """One-paragraph description: architecture fields and exact parameter counts."""
        c = self.config
        total = self.num_parameters()
        non_emb = self.num_parameters(exclude_embeddings=True)
        return (
            f"GPT block_type={c.block_type} norm={c.resolved_norm} n_layer={c.n_layer} "
            f"n_head={c.n_head} n_embd={c.n_embd} head_dim={c.head_dim} "
            f"block_size={c.block_size} vocab_size={c.vocab_size} "
            f"(padded {c.padded_vocab_size}) mlp_ratio={c.mlp_ratio} bias={c.bias} "
            f"tie_embeddings={c.tie_embeddings} dropout={c.dropout} "
            f"depth_warm={c.depth_warm}; parameters: total={total:,} "
            f"non-embedding={non_emb:,} "
            f"comm_syncs_per_layer={BLOCK_TYPES[c.block_type].comm_syncs_per_layer}"
        )
