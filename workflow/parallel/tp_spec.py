"""Tensor-parallel sync arithmetic without torch: how many all-reduces a layer pattern costs.

The Snakemake process and the model config (workflow.model.spec) count with it; the measured
counts of workflow.model.tp_blocks must equal it (tests/integration/test_tensor_parallel.py).
"""

from __future__ import annotations

from typing import Sequence

#: How a run of ``parallel`` blocks rejoins one stream (``GPTConfig.parallel_merge``).
PARALLEL_MERGES = ("sum", "reference")


def analytic_tp_syncs(layer_types: Sequence[str], tp_size: int, parallel_merge: str = "sum") -> dict[str, int]:
    """Tensor-parallel all-reduces of one forward and one backward pass of a layer pattern.

    Exact semantics of ``workflow.model.tp_blocks`` (``docs/tensor_parallel.md``): the
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

    ``parallel_merge="reference"`` (NanoTransformer's ``tensor_parallel_model.py``): a run of
    parallel blocks closes with its own all-reduce before whatever follows it (an spd block
    then splits the replicated stream again: 1 backward). E.g. at 12 layers, forward / backward:
    ``[spd, parallel] x 6`` 12 / 12 (sum: 7 / 7), ``[spd, parallel, parallel] x 4`` 8 / 8
    (5 / 5), ``[spd, parallel, parallel, parallel] x 3`` 6 / 6 (4 / 4),
    ``[spd, parallel, parallel, spd] x 3`` 9 / 9 (6 / 6).

    Args:
        layer_types: block name per layer (:func:`expand_block_pattern`).
        tp_size: tensor-parallel degree.
        parallel_merge: "sum" | "reference" (:data:`PARALLEL_MERGES`).

    Returns:
        ``{"forward": int, "backward": int}`` all-reduces per pass (all of one [B, T, C] tensor).

    Raises:
        ValueError: an unknown ``parallel_merge``.
    """
    if parallel_merge not in PARALLEL_MERGES:
        raise ValueError(f"parallel_merge {parallel_merge!r} is unknown; valid: {list(PARALLEL_MERGES)}")
    if tp_size < 2:
        return {"forward": 0, "backward": 0}
    forward = backward = 0
    split = False
    for name in layer_types:
        if split and parallel_merge == "reference" and name != "parallel":  # the run closes itself
            forward += 1
            split = False
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
