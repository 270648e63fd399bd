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
user code is accepted wherever that code (and with it torch) runs. ``tests/test_model.py``
checks that the classes agree with ``BUILTIN_BLOCKS``.

Sync arithmetic (tensor-parallel blocks, ``docs/tensor_parallel.md``)
--------------------------------------------------------------------
:func:`analytic_tp_syncs` counts the tensor-parallel all-reduces one forward and one backward
pass make for a per-layer pattern under the exact semantics of ``workflow.model.tensor_parallel``;
:func:`nominal_tp_syncs` is the seed write-up's rule (tp 2, spd 1, parallel 0 per layer, plus 2
at the model boundaries when any parallel block is present).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, NamedTuple, Sequence

__all__ = [
    "BlockInfo",
    "BUILTIN_BLOCKS",
    "TP_BLOCK_TYPES",
    "NORM_TYPES",
    "RENAMED_BLOCKS",
    "GPTConfig",
    "MODEL_PRESETS",
    "PRESET_REFERENCE_VOCAB",
    "build_model_config",
    "expand_block_pattern",
    "known_block_types",
    "analytic_tp_syncs",
    "nominal_tp_syncs",
    "model_schema_default",
]


class BlockInfo(NamedTuple):
    """Static facts of a block type.

    Fields:
        default_norm: the norm when ``GPTConfig.norm`` is None ("layernorm" | "rmsnorm").
        tensor_parallel: the block is sharded over ``tp_size`` shards (needs tp_size >= 2).
        comm_syncs_per_layer: nominal forward all-reduces per layer (the seed's count).
    """

    default_norm: str
    tensor_parallel: bool
    comm_syncs_per_layer: int


#: Built-in block types (see the classes in blocks.py / tensor_parallel.py).
BUILTIN_BLOCKS: dict[str, BlockInfo] = {
    "sequential": BlockInfo("layernorm", False, 0),  # GPT-2 / nanoGPT pre-norm block
    "palm": BlockInfo("rmsnorm", False, 0),          # PaLM parallel attention + MLP
    "tp": BlockInfo("layernorm", True, 2),           # Megatron-LM tensor parallel
    "spd": BlockInfo("layernorm", True, 1),          # Sync-Point Drop
    "parallel": BlockInfo("layernorm", True, 0),     # per-shard residual streams
}
TP_BLOCK_TYPES = tuple(name for name, info in BUILTIN_BLOCKS.items() if info.tensor_parallel)
NORM_TYPES = ("layernorm", "rmsnorm")
#: Old name -> message for studies written before a rename.
RENAMED_BLOCKS: dict[str, str] = {
    "parallel": (
        "the PaLM block (attention and MLP from one norm, summed) was renamed 'palm'; "
        "'parallel' is now the tensor-parallel block with per-shard residual streams, which "
        "needs tp_size >= 2 (write block_type: palm for the PaLM block)"
    ),
}


@lru_cache(maxsize=None)
def _model_schema_properties() -> dict:
    from workflow.config import load_schema  # torch-free (jsonschema, yaml)

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


def known_block_types() -> dict[str, BlockInfo]:
    """Valid block names -> BlockInfo: the built-ins, plus every class registered in
    ``workflow.model.blocks.BLOCK_TYPES`` when that (torch) module is already imported."""
    known = dict(BUILTIN_BLOCKS)
    blocks = sys.modules.get("workflow.model.blocks")
    if blocks is not None:
        for name, cls in blocks.BLOCK_TYPES.items():
            if name not in known:
                known[name] = BlockInfo(cls.default_norm, bool(getattr(cls, "tensor_parallel", False)),
                                        cls.comm_syncs_per_layer)
    return known


def expand_block_pattern(pattern: Sequence[str] | None, n_layer: int, block_type: str = "sequential",
                         where: str = "model") -> tuple[str, ...]:
    """Per-layer block types: ``pattern`` repeated to ``n_layer`` layers, or ``block_type`` for all.

    Args:
        pattern: block names, e.g. ``["tp", "spd"]`` (repeated: 12 layers -> tp, spd, tp, ...),
            or an explicit list of ``n_layer`` names; None -> ``[block_type] * n_layer``.
        n_layer: number of layers.
        block_type: the block of every layer when ``pattern`` is None.
        where: prefix of error messages (the config location).

    Returns:
        tuple of ``n_layer`` block names.

    Raises:
        ValueError: an empty pattern, a pattern whose length does not divide n_layer, or an
            unknown block name (names the position and the valid names).
    """
    if pattern is None:
        pattern = [block_type]
        key = "block_type"
    else:
        key = "block_pattern"
        if isinstance(pattern, str) or not isinstance(pattern, Sequence) or len(pattern) == 0:
            raise ValueError(f"{where} key 'block_pattern' must be a non-empty list of block names, "
                             f"got {pattern!r}")
        if n_layer % len(pattern) != 0:
            raise ValueError(
                f"{where} key 'block_pattern' {list(pattern)} has {len(pattern)} entries, which does not "
                f"divide n_layer = {n_layer} (give a pattern whose length divides n_layer, or an explicit "
                f"list of {n_layer} names)")
    known = known_block_types()
    for i, name in enumerate(pattern):
        if name not in known:
            at = f"[{i}]" if key == "block_pattern" else ""
            raise ValueError(f"{where} key '{key}'{at}: unknown block type {name!r}; "
                             f"valid: {sorted(known)}")
    return tuple(pattern) * (n_layer // len(pattern))


def analytic_tp_syncs(layer_types: Sequence[str], tp_size: int) -> dict[str, int]:
    """Tensor-parallel all-reduces of one forward and one backward pass of a layer pattern.

    Exact semantics of ``workflow.model.tensor_parallel`` (``docs/tensor_parallel.md``): the
    residual stream is either replicated or split into per-shard streams.

    * ``tp`` (Megatron-LM): a split stream is merged first (1 forward); then 2 forward
      all-reduces (after the row-parallel attention and MLP projections) and 2 backward
      all-reduces (Megatron's f before each column-parallel projection).
    * ``spd`` / ``parallel`` on a replicated stream split it (f: 1 backward all-reduce, no
      forward cost); ``spd`` ends with one forward all-reduce that merges the streams and sums
      the shards' partial outputs; ``parallel`` leaves the streams split.
    * an unsharded block (sequential, palm) or the model's end merges a split stream
      (1 forward).

    Every split region thus costs one forward and one backward all-reduce, whichever block ends
    it. With ``tp_size < 2`` nothing is sharded and both counts are 0.

    Args:
        layer_types: block name per layer (:func:`expand_block_pattern`).
        tp_size: tensor-parallel degree.

    Returns:
        ``{"forward": int, "backward": int}`` all-reduces per pass (all of one [B, T, C] tensor).
    """
    if tp_size < 2:
        return {"forward": 0, "backward": 0}
    forward = backward = 0
    split = False
    for name in layer_types:
        if name == "tp":
            forward += (1 if split else 0) + 2
            backward += 2
            split = False
        elif name in ("spd", "parallel"):
            if not split:
                backward += 1
                split = True
            if name == "spd":
                forward += 1
                split = False
        elif split:
            forward += 1
            split = False
    if split:
        forward += 1
    return {"forward": forward, "backward": backward}


def nominal_tp_syncs(layer_types: Sequence[str]) -> int:
    """The seed write-up's count of forward syncs: per layer tp 2, spd 1, parallel 0 (other
    blocks: their ``comm_syncs_per_layer``), plus 2 at the model's boundaries when any parallel
    block is present (``/work/shared/seeds``: "only 2 total at model boundaries")."""
    known = known_block_types()
    total = sum(known[name].comm_syncs_per_layer for name in layer_types)
    return total + (2 if "parallel" in layer_types else 0)


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
            tensor-parallel blocks of ``tensor_parallel.py``, which need tp_size >= 2).
        block_pattern: per-layer block names, repeated to n_layer (its length must divide
            n_layer), e.g. ``("tp", "spd")``; None = ``block_type`` everywhere. Wins over
            block_type. Default: config/schema.yaml.
        tp_size: tensor-parallel degree of the tp / spd / parallel blocks (number of shards;
            must divide n_head and mlp_ratio * n_embd). 1 = nothing sharded. Default: schema.
        tp_mode: "simulated" (one process holds all tp_size shards; the dropped syncs leave
            exactly the partial sums a sharded run would have) or "real" (tp_size processes
            per model replica, collectives on the tensor-parallel process group; the trainer
            shards the model with ``tensor_parallel.parallelize_gpt``). Default: schema.
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
        if self.depth_warm_steps < 0 or self.depth_warm_drop_until < 0:
            raise ValueError("GPTConfig.depth_warm_steps and depth_warm_drop_until must be >= 0")
        if self.tp_mode not in ("simulated", "real"):
            raise ValueError(f"GPTConfig.tp_mode {self.tp_mode!r} is unknown; valid: ['real', 'simulated']")
        self._check_tensor_parallel(layers)

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
        counts = analytic_tp_syncs(layers, self.tp_size)
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
            it unless given explicitly as overrides. A value of None means "the preset's value"
            (for block_pattern / tp_size / tp_mode: the schema's default).
        vocab_size: token ids in the data (meta.json ``vocab_size``); used unless the model
            config overrides ``vocab_size``.

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
