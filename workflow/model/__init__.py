"""GPT language model with per-layer block types, tensor-parallel blocks, presets and DepthWarm.

Modules (``workflow.model.<name>``):

``config``           GPTConfig, MODEL_PRESETS, PRESET_REFERENCE_VOCAB, build_model_config,
                     block patterns and sync-count arithmetic. **No torch**: the Snakemake main
                     process validates model configs with it.
``blocks``           norms, attention, MLP, the ``Block`` base class, ``BLOCK_TYPES`` /
                     ``register_block``, the ``sequential`` and ``palm`` blocks.
``tensor_parallel``  the ``tp`` / ``spd`` / ``parallel`` blocks, simulated and real execution,
                     communication counters (docs/tensor_parallel.md).
``depth_warm``       the DepthWarm schedule ``depth_warm_state`` (no torch).
``gpt``              the ``GPT`` model.

``from workflow.model import GPT, GPTConfig, build_model_config, depth_warm_state, BLOCK_TYPES``
keeps working: names are re-exported lazily (PEP 562 ``__getattr__``), so importing this
package or ``workflow.model.config`` never imports torch; asking for a torch name (GPT,
BLOCK_TYPES, ...) imports ``gpt`` (and with it every built-in block, so ``BLOCK_TYPES`` is
complete).

Nothing is printed on import.
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it
_EXPORTS = {
    "GPTConfig": "config",
    "MODEL_PRESETS": "config",
    "PRESET_REFERENCE_VOCAB": "config",
    "BUILTIN_BLOCKS": "config",
    "TP_BLOCK_TYPES": "config",
    "NORM_TYPES": "config",
    "build_model_config": "config",
    "expand_block_pattern": "config",
    "analytic_tp_syncs": "config",
    "nominal_tp_syncs": "config",
    "depth_warm_state": "depth_warm",
    "BLOCK_TYPES": "blocks",
    "Block": "blocks",
    "SequentialBlock": "blocks",
    "PalmBlock": "blocks",
    "CausalSelfAttention": "blocks",
    "MLP": "blocks",
    "register_block": "blocks",
    "make_norm": "blocks",
    "GPT": "gpt",
    "TensorParallelBlock": "tensor_parallel",
    "SPDBlock": "tensor_parallel",
    "ParallelStreamsBlock": "tensor_parallel",
    "parallelize_gpt": "tensor_parallel",
    "tp_comm_counts": "tensor_parallel",
    "tp_reduce_grads": "tensor_parallel",
    "TPCommMode": "tensor_parallel",
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
    value = getattr(importlib.import_module(f"workflow.model.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
