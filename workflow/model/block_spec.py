"""Block types without torch: the built-in blocks and block patterns.

``BUILTIN_BLOCKS`` lists the block types that ship with stagerun and their static facts (default
norm, tensor-parallel or not, forward all-reduces per layer); :func:`nominal_tp_syncs` is the seed
write-up's sync count (docs/tensor_parallel.md). The exact count of a pattern's all-reduces is
workflow.parallel.tp_spec's :func:`~workflow.parallel.tp_spec.analytic_tp_syncs`.
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Sequence


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


#: Built-in block types (see the classes in workflow/model/blocks.py and tp_blocks.py).
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


def nominal_tp_syncs(layer_types: Sequence[str]) -> int:
    """The seed write-up's count of forward syncs: per layer tp 2, spd 1, parallel 0 (other
    blocks: their ``comm_syncs_per_layer``), plus 2 at the model's boundaries when any parallel
    block is present (the seed write-up: "only 2 total at model boundaries")."""
    known = known_block_types()
    total = sum(known[name].comm_syncs_per_layer for name in layer_types)
    return total + (2 if "parallel" in layer_types else 0)
