"""Model configuration without torch: GPTConfig, presets, block patterns, sync-count arithmetic.

This module must stay importable without torch (the Snakemake main process validates every
variant's model config with it before any job runs; ``workflow.model``'s package ``__init__``
imports nothing else eagerly). The torch side (``blocks``, ``tensor_parallel``, ``gpt``)
imports from here, never the other way round.

Block-name validation
---------------------
``BUILTIN_BLOCKS`` lists the block types that ship with stagerun and their static facts
(default norm, whether the block is tensor-parallel, forward all-reduces per layer). A name
is valid if it is built in or, once ``workflow.model.blocks`` has been imported (torch side),
registered in its ``BLOCK_TYPES`` with ``register_block`` (:func:`known_block_types`). So
Snakemake checks studies torch-free against the built-in list, while a block registered by
user code is accepted wherever that code (and with it torch) runs. ``tests/unit/test_model.py``
checks that the classes agree with ``BUILTIN_BLOCKS``.

Sync arithmetic (tensor-parallel blocks, ``docs/tensor_parallel.md``)
--------------------------------------------------------------------
:func:`analytic_tp_syncs` counts the tensor-parallel all-reduces one forward and one backward
pass make for a per-layer pattern under the exact semantics of ``workflow.model.tp_blocks``;
:func:`nominal_tp_syncs` is the seed write-up's rule (tp 2, spd 1, parallel 0 per layer, plus 2
at the model boundaries when any parallel block is present).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from workflow.core.schema_file import load_schema
from workflow.model.block_spec import (
    NORM_TYPES,
    RENAMED_BLOCKS,
    TP_BLOCK_TYPES,
    expand_block_pattern,
    known_block_types,
    nominal_tp_syncs,
)
from workflow.parallel.tp_spec import PARALLEL_MERGES, analytic_tp_syncs

__all__ = [
    "TP_BLOCK_TYPES",
    "NORM_TYPES",
    "RENAMED_BLOCKS",
    "GPTConfig",
    "build_model_config",
    "expand_block_pattern",
    "known_block_types",
    "analytic_tp_syncs",
    "nominal_tp_syncs",
    "PARALLEL_MERGES",
    "model_schema_default",
    "POS_EMBEDDINGS",
    "MLP_ACTIVATIONS",
]

POS_EMBEDDINGS = ("learned", "rotary", "none")
MLP_ACTIVATIONS = ("gelu_tanh", "gelu", "relu2")


@lru_cache(maxsize=None)
def _model_schema_properties() -> dict:

    return load_schema()["definitions"]["model"]["properties"]


def model_schema_default(key: str) -> Any:
    """The default of model key ``key`` in ``config/schema.yaml`` (the one source of defaults).

    Raises:
        KeyError: the schema has no default for ``key``.
    """
    prop = _model_schema_properties()[key]
    if "default" not in prop:
        raise KeyError(f"config/schema.yaml definitions/model/{key} has no default")
    return copy.deepcopy(prop["default"])


# --------------------------------------------------------------------------------------
# GPTConfig
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
        block_type: block of every layer when ``block_pattern`` is None: a key of
            ``BLOCK_TYPES`` ("sequential" = pre-norm attention then MLP as in GPT-2/nanoGPT;
            "palm" = PaLM's parallel attention + MLP; "tp", "spd", "parallel" = the
            tensor-parallel blocks of ``workflow/model/tp_blocks.py``, which need tp_size >= 2).
        block_pattern: per-layer block names, repeated to n_layer (its length must divide
            n_layer), e.g. ``("tp", "spd")``; None = ``block_type`` everywhere. Wins over
            block_type. Default: config/schema.yaml.
        tp_size: tensor-parallel degree of the tp / spd / parallel blocks (number of shards;
            must divide n_head and mlp_ratio * n_embd). 1 = nothing sharded. Default: schema.
        tp_mode: "simulated" (one process holds all tp_size shards; the dropped syncs leave
            exactly the partial sums a sharded run would have) or "real" (tp_size processes
            per model replica, collectives on the tensor-parallel process group; the trainer
            shards the model with ``tensor_parallel.parallelize_gpt``). Default: schema.
        parallel_merge: how a run of ``parallel`` blocks rejoins one stream: "sum" (default:
            every shard's partials summed, the merge folded into the next spd block's
            all-reduce) or "reference" (eduardburlacu/NanoTransformer ``tensor_parallel_model.py``:
            each run closes with its own all-reduce, mean of the shard streams plus the summed
            partials of the run's last block). docs/tensor_parallel.md. Default: schema.
        pad_vocab_multiple: the embedding / head has ``padded_vocab_size`` rows, V rounded up to
            this multiple (64 for GPT-2: 50257 -> 50304, faster matmuls). Padded rows are never
            predicted: logits are sliced to V columns.
        tie_embeddings: the head shares its weight with the token embedding (Press & Wolf 2017).
        norm: "layernorm" | "rmsnorm" | None. None = the block type's ``default_norm`` (of the
            first layer's block: sequential, tp, spd, parallel -> layernorm as nanoGPT; palm ->
            rmsnorm as PaLM). Also used by the final norm ``ln_f``.
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
        pos_embedding: "learned" (GPT-2's table of block_size rows) | "rotary" (RoPE on q and k,
            half-split rotation, Su et al. 2021, arXiv 2104.09864) | "none".
        rotary_base: RoPE base theta (10,000): inverse frequencies base^(-2i / head_dim).
        qk_norm: RMS-normalize q and k per head before attention (no learned scale).
        mlp_activation: "gelu_tanh" (GPT-2) | "gelu" (exact erf) | "relu2" (relu(x)^2,
            So et al. 2021, arXiv 2109.08668).
        zero_init_proj: every ``c_proj`` weight starts at 0 instead of GPT-2's scaled normal.
        norm_affine: norms have a learned gain (and LayerNorm bias); False = parameter-free
            (RMS norm with PyTorch's default eps, as ``F.rms_norm``).
        The last six default to GPT-2; preset "modded-nanogpt-2024-10" sets them as
        KellerJordan/modded-nanogpt's 2024-10-14 record (docs/speedrun_reference.md).

    Raises (on construction):
        ValueError naming the field: non-positive sizes, n_embd not divisible by n_head, an
        unknown block or norm name, a block_pattern that does not divide n_layer, a
        tensor-parallel block with tp_size < 2 (for 'parallel' the message names the rename
        to 'palm'), tp_size >= 2 without a tensor-parallel block, tp_size not dividing n_head
        or the MLP width, bias or dropout with tensor-parallel blocks.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False
    block_type: str = "sequential"
    block_pattern: tuple[str, ...] | None = field(default_factory=lambda: model_schema_default("block_pattern"))
    tp_size: int = field(default_factory=lambda: model_schema_default("tp_size"))
    tp_mode: str = field(default_factory=lambda: model_schema_default("tp_mode"))
    parallel_merge: str = field(default_factory=lambda: model_schema_default("parallel_merge"))
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
    pos_embedding: str = "learned"
    rotary_base: float = 10000.0
    qk_norm: bool = False
    mlp_activation: str = "gelu_tanh"
    zero_init_proj: bool = False
    norm_affine: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                     "pad_vocab_multiple", "mlp_ratio", "tp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.block_pattern is not None and not isinstance(self.block_pattern, str):
            self.block_pattern = tuple(self.block_pattern)
        layers = expand_block_pattern(self.block_pattern, self.n_layer, self.block_type, where="GPTConfig")
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
        if self.depth_warm and self.depth_warm_start_layers > self.n_layer:
            raise ValueError(f"depth_warm_start_layers: {self.depth_warm_start_layers}, but n_layer is {self.n_layer}: "
                             "DepthWarm cannot start with more layers than the model has "
                             f"(depth_warm_start_layers <= {self.n_layer})")
        if self.depth_warm_steps < 0 or self.depth_warm_drop_until < 0:
            raise ValueError("GPTConfig.depth_warm_steps and depth_warm_drop_until must be >= 0")
        if self.tp_mode not in ("simulated", "real"):
            raise ValueError(f"GPTConfig.tp_mode {self.tp_mode!r} is unknown; valid: ['real', 'simulated']")
        if self.parallel_merge not in PARALLEL_MERGES:
            raise ValueError(f"GPTConfig.parallel_merge {self.parallel_merge!r} is unknown; valid: {list(PARALLEL_MERGES)}")
        self._check_tensor_parallel(layers)
        for key, valid in (("pos_embedding", POS_EMBEDDINGS), ("mlp_activation", MLP_ACTIVATIONS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"GPTConfig.{key} {getattr(self, key)!r} is unknown; valid: {list(valid)}")
        if self.pos_embedding == "rotary" and (self.head_dim % 2 or self.rotary_base <= 0):
            raise ValueError(f"GPTConfig.pos_embedding 'rotary' needs an even head_dim (n_embd / n_head = "
                             f"{self.head_dim}) and rotary_base > 0 (got {self.rotary_base!r})")

    def _check_tensor_parallel(self, layers: tuple[str, ...]) -> None:
        known = known_block_types()
        sharded = sorted({name for name in layers if known[name].tensor_parallel})
        key = "block_pattern" if self.block_pattern is not None else "block_type"
        if self.tp_size < 2:
            if sharded:
                hint = RENAMED_BLOCKS.get(sharded[0])
                raise ValueError(
                    f"GPTConfig.{key}: block type {sharded[0]!r} is tensor-parallel and needs tp_size >= 2 "
                    f"(tp_size is {self.tp_size})" + (f"; note: {hint}" if hint else ""))
            return
        if not sharded:
            raise ValueError(f"GPTConfig.tp_size is {self.tp_size} but no layer uses a tensor-parallel block "
                             f"({', '.join(TP_BLOCK_TYPES)}); set block_type or block_pattern, or tp_size: 1")
        hidden = self.mlp_ratio * self.n_embd
        if self.n_head % self.tp_size or hidden % self.tp_size:
            raise ValueError(f"GPTConfig.tp_size ({self.tp_size}) must divide n_head ({self.n_head}) and the "
                             f"MLP width mlp_ratio * n_embd ({hidden}): every shard gets whole heads")
        if self.bias:
            raise ValueError("GPTConfig.bias must be false with tensor-parallel blocks "
                             f"({', '.join(sharded)}): where a row-parallel bias is added is not defined")
        if self.dropout > 0:
            raise ValueError("GPTConfig.dropout must be 0 with tensor-parallel blocks "
                             f"({', '.join(sharded)}): real and simulated shards would draw different masks")

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
    def layer_block_types(self) -> tuple[str, ...]:
        """Block name of every layer (``block_pattern`` repeated, or ``block_type``), length n_layer."""
        return expand_block_pattern(self.block_pattern, self.n_layer, self.block_type, where="GPTConfig")

    @property
    def tensor_parallel(self) -> bool:
        """True when some layer is a sharded (tp / spd / parallel) block (then tp_size >= 2)."""
        known = known_block_types()
        return any(known[name].tensor_parallel for name in self.layer_block_types)

    @property
    def resolved_norm(self) -> str:
        """The norm actually used: ``norm`` or the first layer's block type's ``default_norm``."""
        return self.norm or known_block_types()[self.layer_block_types[0]].default_norm

    def tp_syncs(self) -> dict[str, int]:
        """Analytic tensor-parallel all-reduces per forward / backward pass
        (:func:`analytic_tp_syncs`) and the seed's nominal forward count."""
        layers = self.layer_block_types
        counts = analytic_tp_syncs(layers, self.tp_size, self.parallel_merge)
        counts["nominal"] = nominal_tp_syncs(layers) if self.tensor_parallel else 0
        return counts


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
    # KellerJordan/modded-nanogpt's record of 2024-10-14 ("ModernArch"): rotary, QK-norm, ReLU^2,
    # zero-init projections, parameter-free RMS norms, 6 heads of 128 (docs/speedrun_reference.md).
    "modded-nanogpt-2024-10": dict(block_size=1024, n_embd=768, n_layer=12, n_head=6, pad_vocab_multiple=64,
                                   pos_embedding="rotary", qk_norm=True, mlp_activation="relu2",
                                   zero_init_proj=True, norm="rmsnorm", norm_affine=False),
}

# The vocabulary each preset is meant for (for parameter-count documentation and tests only;
# build_model_config always uses the data's vocab_size unless the model config overrides it).
PRESET_REFERENCE_VOCAB: dict[str, int] = {
    "nanogpt-small": 65,      # tiny Shakespeare characters
    "nanogpt-medium": 256,    # bytes
    "gpt2-124m": 50257,       # GPT-2 BPE (tiktoken "gpt2")
    "deep": 32,               # tiny fixed charsets
    "modded-nanogpt-2024-10": 50257,
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
            it unless given explicitly as overrides. A value of None means "the preset's value"
            (for block_pattern / tp_size / tp_mode: the schema's default).
        vocab_size: token ids in the data (meta.json ``vocab_size``); used unless the model
            config overrides ``vocab_size``. ``head_dim`` (not a field) sets n_head = n_embd / head_dim.

    Returns:
        GPTConfig.

    Raises:
        ValueError: unknown preset (names the valid presets), unknown key (names the key and the
            valid keys), or an invalid field value (from GPTConfig, naming the field; a bad
            block_pattern names the pattern and n_layer).
    """
    # None means "the preset's value" (schema-filled nulls must not erase preset fields).
    cfg = {k: v for k, v in dict(model_cfg or {}).items() if v is not None}
    preset = cfg.pop("preset", "nanogpt-small")
    head_dim = cfg.pop("head_dim", None)
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
    if head_dim is not None:  # heads of this width: n_head = n_embd / head_dim
        if (not isinstance(head_dim, int) or head_dim < 1 or fields["n_embd"] % head_dim
                or ("n_head" in cfg and fields["n_head"] * head_dim != fields["n_embd"])):
            raise ValueError(f"model key 'head_dim': {head_dim} must divide n_embd ({fields['n_embd']}) "
                             f"and agree with n_head ({fields['n_head']}) when both are given")
        fields["n_head"] = fields["n_embd"] // head_dim
    return GPTConfig(**fields)
