"""GPT language model with per-layer block types, tensor-parallel blocks, presets and DepthWarm.

Modules (``workflow.model.<name>``):

``spec``             GPTConfig, MODEL_PRESETS, PRESET_REFERENCE_VOCAB, build_model_config.
``block_spec``       the built-in block types and block patterns. **No torch** in either: the
                     Snakemake main process validates model configs with them (the sync
                     arithmetic is workflow.parallel.tp_spec).
``blocks``           norms, attention, MLP, the ``Block`` base class, ``BLOCK_TYPES`` /
                     ``register_block``, the ``sequential`` and ``palm`` blocks.
``tp_blocks``        the ``tp`` / ``spd`` / ``parallel`` blocks, simulated and real execution,
                     communication counters (docs/tensor_parallel.md).
``parallelize``      real tensor parallelism (DTensor) applied to a built model from outside.
``depth_warm``       the DepthWarm schedule ``depth_warm_state`` (no torch).
``gpt``              the ``GPT`` model and ``compile_gpt`` (how ``train.compile`` compiles it).

``from workflow.model import GPT, GPTConfig, build_model_config, depth_warm_state, BLOCK_TYPES``
keeps working: names are re-exported lazily (PEP 562 ``__getattr__``), so importing this
package or ``workflow.model.spec`` never imports torch; asking for a torch name (GPT,
BLOCK_TYPES, ...) imports ``gpt`` (and with it every built-in block, so ``BLOCK_TYPES`` is
complete).

Nothing is printed on import.
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it
_EXPORTS = {
    "GPTConfig": "workflow.model.spec",
    "MODEL_PRESETS": "workflow.model.spec",
    "PRESET_REFERENCE_VOCAB": "workflow.model.spec",
    "BUILTIN_BLOCKS": "workflow.model.block_spec",
    "TP_BLOCK_TYPES": "workflow.model.block_spec",
    "NORM_TYPES": "workflow.model.block_spec",
    "build_model_config": "workflow.model.spec",
    "expand_block_pattern": "workflow.model.block_spec",
    "analytic_tp_syncs": "workflow.parallel.tp_spec",
    "nominal_tp_syncs": "workflow.model.block_spec",
    "depth_warm_state": "workflow.model.depth_warm",
    "BLOCK_TYPES": "workflow.model.blocks",
    "Block": "workflow.model.blocks",
    "SequentialBlock": "workflow.model.blocks",
    "PalmBlock": "workflow.model.blocks",
    "CausalSelfAttention": "workflow.model.blocks",
    "MLP": "workflow.model.blocks",
    "register_block": "workflow.model.blocks",
    "make_norm": "workflow.model.blocks",
    "GPT": "workflow.model.gpt",
    "compile_gpt": "workflow.model.gpt",
    "TensorParallelBlock": "workflow.model.tp_blocks",
    "SPDBlock": "workflow.model.tp_blocks",
    "ParallelStreamsBlock": "workflow.model.tp_blocks",
    "parallelize_gpt": "workflow.model.parallelize",
    "tp_comm_counts": "workflow.model.parallelize",
    "tp_reduce_grads": "workflow.model.parallelize",
    "TPCommMode": "workflow.parallel.comm_mode",
}
# Torch-side names whose registry must hold every built-in block when handed out.
_NEEDS_ALL_BLOCKS = {"BLOCK_TYPES", "register_block", "Block", "GPT"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workflow.model' has no attribute {name!r}")
    if name in _NEEDS_ALL_BLOCKS:
        importlib.import_module("workflow.model.gpt")  # registers the tensor-parallel blocks too
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
