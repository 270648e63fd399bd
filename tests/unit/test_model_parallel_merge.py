"""``model.parallel_merge``: stagerun's ``reference`` merge against an independent oracle of the
seed's code, and the sync counts of both merge rules (simulated; the real 2-process gloo runs of
the same patterns are in tests/integration/test_tensor_parallel.py).

The oracle below is written for this test from the description of eduardburlacu/NanoTransformer
``tensor_parallel_model.py`` (``DistributedGPT``, ``TP_Block``, ``SPD_Block``, ``Parallel_Block``;
the shared references' README.md), not from stagerun's blocks: plain per-shard loops over weight
slices, one list of P residual streams inside a run of parallel blocks, and the run's last block
returning ``mean_p(stream_p) + sum_p(partial_p)``. It does not copy the reference's one-block-run
bug (``x.mean(0)`` over the batch of a replicated input); a one-block run returns ``x + sum_p
partial_p``. Weights are stagerun's (shared), so logits must agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workflow.model import GPT, tp_comm_counts
from workflow.model.block_spec import expand_block_pattern
from workflow.parallel.tp_spec import analytic_tp_syncs
from workflow.model.spec import build_model_config

pytestmark = pytest.mark.usefixtures("one_thread")

P = 2
SMALL = dict(n_head=4, n_embd=32, block_size=16, tp_size=P, n_layer=12)
#: The seed's patterns and their reference-code forward syncs at 12 layers.
PATTERNS = {
    "8comm": (["spd", "parallel"], 12),
    "6comm": (["spd", "parallel", "parallel"], 8),
    "6comm-final": (["spd", "parallel", "parallel", "parallel"], 6),
    "9comm": (["spd", "parallel", "parallel", "spd"], 9),
}
#: stagerun's ``sum`` rule: the counts of today (the parallel run's merge folded into the next spd).
SUM_SYNCS = {"8comm": 7, "6comm": 5, "6comm-final": 4, "9comm": 6}


# ---- the oracle ---------------------------------------------------------------------------

def _ln(x, w):
    return F.layer_norm(x, (x.shape[-1],), w, None, 1e-5)


def _shard_attention(h, W, p, n_head):
    """Shard p's heads of attention on h [B, T, C] through its c_proj columns: partial [B, T, C]."""
    B, T, C = h.shape
    rows = 3 * C // P
    qkv = h @ W["attn.c_attn.weight"][p * rows:(p + 1) * rows].T  # shard-major [q; k; v] rows
    q, k, v = qkv.split(C // P, dim=-1)
    hl = n_head // P
    q, k, v = (t.view(B, T, hl, C // n_head).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C // P)
    return y @ W["attn.c_proj.weight"][:, p * C // P:(p + 1) * C // P].T


def _shard_mlp(h, W, p):
    Fw = W["mlp.c_fc.weight"].shape[0]
    a = F.gelu(h @ W["mlp.c_fc.weight"][p * Fw // P:(p + 1) * Fw // P].T, approximate="tanh")
    return a @ W["mlp.c_proj.weight"][:, p * Fw // P:(p + 1) * Fw // P].T


def _worker(x, W, p, n_head):
    """The reference's forward_worker of SPD_Block / Parallel_Block on shard p's stream x:
    partial attention p_i, MLP of the stream plus ITS partial, returns p_i + mlp partial."""
    att = _shard_attention(_ln(x, W["ln_1.weight"]), W, p, n_head)
    return att + _shard_mlp(_ln(x + att, W["ln_2.weight"]), W, p)


def oracle_logits(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
    """DistributedGPT's wiring on ``model``'s weights: (logits [B, T, V], forward all-reduces)."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    types = cfg.layer_block_types
    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    syncs = 0
    streams = None  # inside a run of parallel blocks: P residual streams
    for i, kind in enumerate(types):
        W = {k[len(f"transformer.h.{i}."):]: v for k, v in sd.items() if k.startswith(f"transformer.h.{i}.")}
        if kind == "tp":
            x = x + sum(_shard_attention(_ln(x, W["ln_1.weight"]), W, p, cfg.n_head) for p in range(P))
            x = x + sum(_shard_mlp(_ln(x, W["ln_2.weight"]), W, p) for p in range(P))
            syncs += 2
        elif kind == "spd":
            x = x + sum(_worker(x, W, p, cfg.n_head) for p in range(P))
            syncs += 1
        else:  # parallel
            first = i == 0 or types[i - 1] != "parallel"
            last = i == len(types) - 1 or types[i + 1] != "parallel"
            if first:
                streams = [x for _ in range(P)]  # f: every shard starts from the replicated x
            partials = [_worker(streams[p], W, p, cfg.n_head) for p in range(P)]
            if last:  # g: mean of the shard streams + the summed partials of this block
                x = sum(streams) / P + sum(partials)
                streams = None
                syncs += 1
            else:
                streams = [s + z for s, z in zip(streams, partials)]
    x = _ln(x, sd["transformer.ln_f.weight"])
    return x @ sd["lm_head.weight"][: cfg.vocab_size].T, syncs


def build(pattern, merge, seed=0):
    cfg = build_model_config({**SMALL, "block_pattern": pattern, "parallel_merge": merge}, 65)
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():  # non-trivial norm gains and residual branches of a trained model's
        for name, p in model.named_parameters():  # size (GPT-2's init scales c_proj down), so a
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight"):  # wrong merge shows
                p.copy_(torch.rand_like(p) + 0.5)
            elif name.endswith("c_proj.weight"):
                p.mul_(20.0)
    return model


def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 65, (3, 16), generator=g)


# ---- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PATTERNS))
def test_reference_merge_equals_the_oracle_and_counts_its_syncs(name):
    pattern, reference_syncs = PATTERNS[name]
    model = build(pattern, "reference")
    idx = batch()
    expected, oracle_syncs = oracle_logits(model, idx)
    logits, loss = model(idx, idx)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    counted = tp_comm_counts(model)  # the sync points that ran in this forward / backward
    assert oracle_syncs == reference_syncs
    assert counted["forward"]["calls"] == reference_syncs
    assert counted["backward"]["calls"] == reference_syncs  # every run / spd splits once: f
    assert model.config.tp_syncs()["forward"] == reference_syncs
    # the sum rule computes a different function with fewer syncs
    other = build(pattern, "sum")
    other_logits, other_loss = other(idx, idx)
    assert (other_logits.detach() - expected).abs().max() > 0.05 * expected.abs().max()
    other_loss.backward()
    assert tp_comm_counts(other)["forward"]["calls"] == SUM_SYNCS[name] == other.config.tp_syncs()["forward"]


def test_one_block_run_has_no_batch_averaging():
    """A run of one parallel block adds its shards' partials to x; sample b's logits depend on
    sample b only (the reference's x.mean(0) on the replicated [B, T, C] input mixes samples)."""
    model = build(["spd", "parallel"], "reference")
    idx = batch()
    full = model(idx)[0].detach()
    alone = model(idx[:1])[0].detach()
    torch.testing.assert_close(alone, full[:1], rtol=1e-5, atol=1e-6)


def test_reference_on_other_blocks_changes_nothing():
    """Patterns without parallel blocks compute and count the same under both rules."""
    idx = batch()
    for pattern in (["tp", "spd"], ["spd"], ["tp"]):
        a, b = build(pattern, "sum"), build(pattern, "reference")
        torch.testing.assert_close(a(idx)[0], b(idx)[0], rtol=0, atol=0)
        layers = expand_block_pattern(pattern, 12)
        assert analytic_tp_syncs(layers, 2, "sum") == analytic_tp_syncs(layers, 2, "reference")


def test_reference_counts_equal_analytic_for_every_short_pattern():
    """Measured forward / backward syncs of the reference rule == analytic, for all patterns of
    up to 3 layers over tp, spd, parallel and an unsharded block (repeated to 6 layers)."""
    import itertools

    checked = 0
    for length in (1, 2, 3):
        for pattern in itertools.product(["parallel", "sequential", "spd", "tp"], repeat=length):
            if not set(pattern) & {"tp", "spd", "parallel"}:
                continue
            cfg = build_model_config({**SMALL, "n_layer": 6, "block_pattern": list(pattern),
                                      "parallel_merge": "reference"}, 11)
            model = GPT(cfg)
            x = torch.randint(0, 11, (1, 4))
            model(x, x)[1].backward()
            counted = tp_comm_counts(model)
            analytic = analytic_tp_syncs(cfg.layer_block_types, 2, "reference")
            assert (counted["forward"]["calls"], counted["backward"]["calls"]) == \
                (analytic["forward"], analytic["backward"]), pattern
            checked += 1
    assert checked == 4 ** 3 + 4 ** 2 + 4 - 3


def test_unknown_merge_rule_is_an_error():
    with pytest.raises(ValueError, match=r"parallel_merge 'mean' is unknown.*'sum', 'reference'"):
        build_model_config({**SMALL, "block_pattern": ["spd", "parallel"], "parallel_merge": "mean"}, 65)
    with pytest.raises(ValueError, match=r"parallel_merge 'x' is unknown"):
        analytic_tp_syncs(["spd"], 2, "x")
