"""FLOPs of training a GPT and the peak FLOP/s of the GPU they run on (torch-free: the compute
plan prices studies with them in the Snakemake process; the trainer reports MFU with them)."""

from __future__ import annotations

# Peak dense bf16 tensor-core FLOP/s per GPU by device-name substring (first match wins, so
# more specific names come first). Vendor datasheets: NVIDIA H100 / H200 / A100 / L40S / L40 / L4 / A10.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5 (HBM3)
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of one GPU named ``device_name`` (torch.cuda.get_device_name),
    or None for CPUs and GPUs not in :data:`PEAK_BF16_FLOPS`."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def flops_per_token(cfg, seq_len: int, n_params_matmul: int) -> float:
    """Training FLOPs per token (forward + backward) of a GPT: ``6 N + 12 L H Q T``.

    N = parameters that take part in matmuls (blocks + lm_head; embeddings are lookups),
    L = n_layer, H = n_head, Q = head dim, T = ``seq_len`` (tokens). The second term is the
    attention score / value matmuls (full, not causal-halved, as in the source).
    Source: PaLM (Chowdhery et al. 2022) appendix B; nanoGPT model.py ``estimate_mfu``.
    """
    return 6.0 * n_params_matmul + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
