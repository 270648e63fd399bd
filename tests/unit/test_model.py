"""Tests of workflow.model: presets, parameter counts, block types, padded vocab, DepthWarm."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from workflow.model import BLOCK_TYPES, GPT, Block, SequentialBlock, depth_warm_state, register_block
from workflow.optim.registry import build_optimizers
from workflow.model.block_spec import BUILTIN_BLOCKS, TP_BLOCK_TYPES
from workflow.model.spec import MODEL_PRESETS, PRESET_REFERENCE_VOCAB, GPTConfig, build_model_config

REPO = Path(__file__).resolve().parents[2]


def tiny(**overrides) -> GPTConfig:
    """A small model config for fast tests (tp_size 2 for the tensor-parallel block types)."""
    fields = dict(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=32)
    if overrides.get("block_type") in TP_BLOCK_TYPES:
        fields["tp_size"] = 2
    fields.update(overrides)
    return GPTConfig(**fields)


def expected_num_parameters(c: GPTConfig, exclude_embeddings: bool = False) -> int:
    """Parameter count from the architecture formula (independent of the module code).

    Per layer: attention c_attn C x 3C + c_proj C x C = 4 C^2 (+ 4C biases), MLP
    2 * mlp_ratio * C^2 (+ mlp_ratio*C + C biases), norms of C (+ C LayerNorm bias):
    two in a sequential block and in the tensor-parallel blocks, one (shared) in a palm block.
    """
    C = c.n_embd
    norm = (C + (C if (c.resolved_norm == "layernorm" and c.bias) else 0)) if c.norm_affine else 0
    attn = 4 * C * C + (4 * C if c.bias else 0)
    mlp = 2 * c.mlp_ratio * C * C + ((c.mlp_ratio * C + C) if c.bias else 0)
    n_norms = {"sequential": 2, "palm": 1, "tp": 2, "spd": 2, "parallel": 2}[c.block_type]
    per_layer = attn + mlp + n_norms * norm
    body = c.n_layer * per_layer + norm  # + ln_f
    if exclude_embeddings:
        return body
    padded = math.ceil(c.vocab_size / c.pad_vocab_multiple) * c.pad_vocab_multiple
    emb = padded * C + (c.block_size * C if c.pos_embedding == "learned" else 0)
    head = 0 if c.tie_embeddings else padded * C
    return body + emb + head


def repeated_batch(vocab: int, T: int, B: int = 4, period: int = 7):
    """Random-but-learnable data: a fixed random sequence of `period` tokens, repeated."""
    g = torch.Generator().manual_seed(0)
    motif = torch.randint(0, vocab, (period,), generator=g)
    seq = motif.repeat(T // period + 2)
    rows = [seq[i: i + T + 1] for i in range(B)]
    data = torch.stack(rows)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()



# Tiny models run fastest on one intra-op thread (conftest.py's one_thread fixture).
pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------- presets and counts


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_preset_parameter_counts_match_formula(preset):
    cfg = build_model_config({"preset": preset}, PRESET_REFERENCE_VOCAB[preset])
    with torch.device("meta"):  # 'deep' at depth 24 is ~681M params: never materialized
        model = GPT(cfg)
    assert model.num_parameters() == expected_num_parameters(cfg)
    assert model.num_parameters(exclude_embeddings=True) == expected_num_parameters(cfg, True)
    assert str(model.num_parameters()) in model.describe().replace(",", "")


def test_preset_shapes():
    small = build_model_config({"preset": "nanogpt-small"}, 65)
    assert (small.block_size, small.n_embd, small.n_layer, small.n_head, small.vocab_size) == \
        (32, 64, 2, 8, 65)
    medium = build_model_config({"preset": "nanogpt-medium"}, 256)
    assert (medium.block_size, medium.n_embd, medium.n_layer, medium.n_head) == (128, 256, 4, 8)
    with torch.device("meta"):
        assert 3.2e6 < GPT(medium).num_parameters() < 3.4e6
    gpt2 = build_model_config({"preset": "gpt2-124m"}, 50257)
    assert gpt2.padded_vocab_size == 50304
    deep = build_model_config({"preset": "deep"}, 32)
    assert (deep.n_layer, deep.n_embd, deep.n_head, deep.head_dim) == (24, 1536, 12, 128)
    odd = build_model_config({"preset": "deep", "depth": 3}, 32)
    assert (odd.n_layer, odd.n_embd, odd.n_head, odd.head_dim) == (3, 192, 3, 64)
    # explicit overrides win over depth-derived dims; None means "preset's value"
    assert build_model_config({"preset": "deep", "depth": 2, "n_head": 1}, 32).n_head == 1
    assert build_model_config({"preset": "deep", "depth": None, "norm": None}, 32).n_layer == 24


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("block_type,bias", [(name, bias) for name in sorted(BLOCK_TYPES) for bias in (False, True)
                                             if not (bias and name in TP_BLOCK_TYPES)])  # tp blocks refuse bias
def test_parameter_count_variants(block_type, tie, bias):
    cfg = tiny(block_type=block_type, tie_embeddings=tie, bias=bias, pad_vocab_multiple=8)
    model = GPT(cfg)
    assert model.num_parameters() == expected_num_parameters(cfg)
    assert model.num_parameters(True) == expected_num_parameters(cfg, True)


def test_build_model_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"'n_layers'.*valid keys.*n_layer"):
        build_model_config({"preset": "nanogpt-small", "n_layers": 3}, 65)
    with pytest.raises(ValueError, match=r"'preset'.*'tiny'.*nanogpt-small"):
        build_model_config({"preset": "tiny"}, 65)
    with pytest.raises(ValueError, match=r"block_type.*'serial'.*palm"):
        build_model_config({"block_type": "serial"}, 65)
    with pytest.raises(ValueError, match=r"n_embd \(60\).*n_head \(8\)"):
        build_model_config({"n_embd": 60}, 65)
    with pytest.raises(ValueError, match=r"'depth'"):
        build_model_config({"preset": "deep", "depth": 0}, 32)


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("block_type", sorted(BLOCK_TYPES))
def test_forward_backward_shapes(block_type):
    torch.manual_seed(0)
    cfg = tiny(block_type=block_type)
    model = GPT(cfg)
    x, y = repeated_batch(cfg.vocab_size, T=10, B=3)
    logits, loss = model(x, y)
    assert logits.shape == (3, 10, cfg.vocab_size)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    # at init, predictions are near uniform: loss ~ ln(V)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    logits2, loss2 = model(x)
    assert loss2 is None and torch.equal(logits2, logits)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))


def test_palm_block_is_palm_formula():
    torch.manual_seed(0)
    cfg = tiny(block_type="palm")
    block = BLOCK_TYPES["palm"](cfg, 0)
    norms = [m for m in block.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 1 and isinstance(norms[0], nn.RMSNorm)  # ONE shared RMSNorm
    x = torch.randn(2, 5, cfg.n_embd)
    h = block.ln(x)
    expected = x + (block.attn(h) + block.mlp(h)) / math.sqrt(2)
    torch.testing.assert_close(block(x), expected)
    # the sequential block defaults to LayerNorm (nanoGPT) and can be switched
    assert tiny().resolved_norm == "layernorm"
    assert tiny(block_type="palm", norm="layernorm").resolved_norm == "layernorm"


def test_padded_vocab_logits_and_generate():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=50, pad_vocab_multiple=64)
    model = GPT(cfg)
    assert model.transformer.wte.weight.shape[0] == 64
    assert model.lm_head.weight is model.transformer.wte.weight
    # make the padded rows the most attractive: they must still never be predicted
    with torch.no_grad():
        model.lm_head.weight[50:] = 10.0 * model.transformer.ln_f.weight
    x, y = repeated_batch(50, T=8, B=2)
    logits, loss = model(x, y)
    assert logits.shape == (2, 8, 50)
    assert torch.isfinite(loss)
    model.eval()
    g = torch.Generator().manual_seed(1)
    out = model.generate(x[:, :3], max_new_tokens=20, temperature=1.0, generator=g)
    assert out.shape == (2, 23) and int(out.max()) < 50
    greedy = model.generate(x[:, :3], max_new_tokens=20, temperature=0.0)
    assert int(greedy.max()) < 50
    # generation beyond block_size crops the context
    long = model.generate(x[:, :3], max_new_tokens=cfg.block_size + 4, top_k=5,
                          generator=torch.Generator().manual_seed(2))
    assert long.shape == (2, 3 + cfg.block_size + 4)


def test_deterministic_given_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = GPT(tiny(dropout=0.1))
        x, y = repeated_batch(11, T=12)
        model.train()
        torch.manual_seed(7)
        outs.append((model(x, y)[1].item(), [p.detach().clone() for p in model.parameters()]))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))
    gens = []
    for _ in range(2):
        torch.manual_seed(123)
        model = GPT(tiny()).eval()
        gens.append(model.generate(torch.zeros(1, 1, dtype=torch.long), 10,
                                   generator=torch.Generator().manual_seed(5)))
    assert torch.equal(gens[0], gens[1])


def test_init_scales():
    torch.manual_seed(0)
    cfg = tiny(n_layer=8, n_embd=128, n_head=4, vocab_size=512)
    model = GPT(cfg)
    resid = torch.cat([p.flatten() for n, p in model.named_parameters()
                       if n.endswith("c_proj.weight")])
    other = model.transformer.h[0].attn.c_attn.weight
    assert abs(resid.std().item() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 0.001
    assert abs(other.std().item() - 0.02) < 0.001
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 0.001


# ---------------------------------------------------------------- registry


def test_block_registry_contract():
    for name, cls in BLOCK_TYPES.items():
        assert issubclass(cls, Block) and isinstance(cls.comm_syncs_per_layer, int), name
        assert cls.block_type == name
    # the torch-free list the Snakemake process validates against is the registry's built-ins
    assert set(BUILTIN_BLOCKS) == set(BLOCK_TYPES)
    for name, info in BUILTIN_BLOCKS.items():
        cls = BLOCK_TYPES[name]
        assert (cls.default_norm, cls.tensor_parallel, cls.comm_syncs_per_layer) == tuple(info), name

    @register_block("test-tp-like")
    class FakeTPBlock(SequentialBlock):
        comm_syncs_per_layer = 2

    try:
        model = GPT(tiny(block_type="test-tp-like"))
        assert "block_type=test-tp-like" in model.describe()
        assert tiny(block_pattern=["sequential", "test-tp-like"]).layer_block_types == ("sequential", "test-tp-like")
        x, y = repeated_batch(11, T=6)
        assert torch.isfinite(model(x, y)[1])
        with pytest.raises(ValueError, match="already registered"):
            register_block("test-tp-like")(FakeTPBlock)
    finally:
        del BLOCK_TYPES["test-tp-like"]


def test_import_prints_nothing():
    out = subprocess.run([sys.executable, "-c", "import workflow.model, workflow.optim.optimizers"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr == ""


def test_model_config_is_torch_free():
    """The Snakemake main process validates model configs without importing torch."""
    code = ("import sys; import workflow.model, workflow.model.spec, workflow.model.depth_warm\n"
            "from workflow.model import build_model_config, GPTConfig, depth_warm_state, MODEL_PRESETS\n"
            "build_model_config({'block_pattern': ['tp', 'spd'], 'tp_size': 2}, 65)\n"
            "GPTConfig(vocab_size=65, block_size=8, n_layer=2, n_head=2, n_embd=8, block_type='palm')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ---------------------------------------------------------------- DepthWarm


def test_depth_warm_state_schedule():
    cfg = dict(n_layer=6, depth_warm=True, depth_warm_start_layers=2, depth_warm_steps=100,
               depth_warm_drop_prob=0.4, depth_warm_drop_until=50)
    assert depth_warm_state(0, cfg) == (2, 0.4)
    assert depth_warm_state(24, cfg)[0] == 2 + (4 * 24) // 100  # 2
    assert depth_warm_state(25, cfg) == (3, pytest.approx(0.2))
    assert depth_warm_state(50, cfg) == (4, 0.0)
    assert depth_warm_state(99, cfg)[0] == 5
    assert depth_warm_state(100, cfg) == (6, 0.0)
    assert depth_warm_state(10_000, cfg) == (6, 0.0)
    actives = [depth_warm_state(s, cfg)[0] for s in range(120)]
    assert actives == sorted(actives)  # layers only join
    assert depth_warm_state(0, {**cfg, "depth_warm": False}) == (6, 0.0)
    assert depth_warm_state(0, {**cfg, "depth_warm_steps": 0}) == (6, 0.4)
    gcfg = tiny(n_layer=6, depth_warm=True, depth_warm_start_layers=2, depth_warm_steps=100,
                depth_warm_drop_prob=0.4, depth_warm_drop_until=50)
    assert depth_warm_state(25, gcfg) == depth_warm_state(25, cfg)
    with pytest.raises(ValueError):
        depth_warm_state(-1, cfg)


def test_depth_schedule_state_controls_blocks():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=4))
    x, y = repeated_batch(11, T=8)
    model.set_depth_schedule_state(1)
    model(x, y)[1].backward()
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None
    for i in (1, 2, 3):
        assert all(p.grad is None for p in model.transformer.h[i].parameters())
    # deterministic drops from the generator; eval mode ignores drops
    model.zero_grad(set_to_none=True)
    model.set_depth_schedule_state(4, 0.9, torch.Generator().manual_seed(3))
    runs_a = [model._blocks_to_run() for _ in range(20)]
    model.set_depth_schedule_state(4, 0.9, torch.Generator().manual_seed(3))
    runs_b = [model._blocks_to_run() for _ in range(20)]
    assert runs_a == runs_b and any(len(r) < 4 for r in runs_a)
    model.eval()
    assert model._blocks_to_run() == [0, 1, 2, 3]
    model.train()
    model.set_depth_schedule_state(4, 0.0)
    assert model._blocks_to_run() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        model.set_depth_schedule_state(5)
    with pytest.raises(ValueError):
        model.set_depth_schedule_state(2, 1.0)


# ---------------------------------------------------------------- learning


def _train(cfg: GPTConfig, train_cfg: dict, steps: int = 20, depth_warm: bool = False):
    torch.manual_seed(0)
    model = GPT(cfg)
    opts = build_optimizers(model, train_cfg)
    x, y = repeated_batch(cfg.vocab_size, T=cfg.block_size)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        if depth_warm:
            model.set_depth_schedule_state(*depth_warm_state(step, cfg), generator=gen)
        _, loss = model(x, y)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("block_type", sorted(BLOCK_TYPES))
def test_training_loss_falls(block_type):
    tp = {"tp_size": 2} if block_type in TP_BLOCK_TYPES else {}
    cfg = build_model_config({"preset": "nanogpt-small", "block_type": block_type, **tp}, 65)
    losses = _train(cfg, {"optimizer": "adamw", "lr": 3e-3})
    assert losses[-1] < 0.5 * losses[0], losses


def test_training_loss_falls_depth_warm():
    cfg = build_model_config({"preset": "nanogpt-small", "n_layer": 4, "depth_warm": True,
                              "depth_warm_start_layers": 1, "depth_warm_steps": 12,
                              "depth_warm_drop_prob": 0.5, "depth_warm_drop_until": 16}, 65)
    losses = _train(cfg, {"optimizer": "adamw", "lr": 3e-3}, depth_warm=True)
    assert losses[-1] < 0.5 * losses[0], losses
