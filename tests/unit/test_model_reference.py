"""The ``modded-nanogpt-2024-10`` preset against the record it is named after, and its composition
with the other model features.

The reference model and Muon rule below are written here from the description of
KellerJordan/modded-nanogpt's record of 2024-10-14 ("ModernArch",
records/track_1_short/2024-10-14_ModernArch/; docs/speedrun_reference.md gives file and line of
each part): separate c_q / c_k / c_v, rotary embeddings (base 10,000, half-split rotation)
then QK RMS-norm, causal attention, ReLU^2 MLP, parameter-free RMS norm before each sub-block and
at the end, no position table, no biases, a head tied to the padded embedding. Independent code:
it shares nothing with workflow.model but the weights copied into it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workflow.model import BLOCK_TYPES, GPT
from workflow.model.parallelize import qkv_to_shard_major
from workflow.optim.registry import build_optimizers
from workflow.model.spec import build_model_config

pytestmark = pytest.mark.usefixtures("one_thread")

PRESET = "modded-nanogpt-2024-10"
SPEEDRUN_TRAIN = dict(optimizer="muon", lr=0.0036, muon_lr=0.00036, beta1=0.9, beta2=0.95, weight_decay=0.0,
                      muon_momentum=0.95, muon_nesterov=True, muon_ns_steps=5, muon_update_scale="max_dim",
                      muon_split_qkv=True)


# ------------------------------------------------------------------ the record, written from its description

def record_forward(w: dict, idx: torch.Tensor, n_layer: int, n_head: int, vocab: int) -> torch.Tensor:
    """Logits [B, T, vocab] of the record's GPT with weights ``w`` (record names: transformer.wte,
    transformer.h.i.attn.c_q/c_k/c_v/c_proj, transformer.h.i.mlp.c_fc/c_proj; lm_head = wte)."""
    rms = lambda t: F.rms_norm(t, (t.size(-1),))  # noqa: E731
    x = w["wte"][idx]
    B, T, C = x.shape
    hd = C // n_head
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def rotary(t):  # [B, T, H, hd]
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat([t1 * cos + t2 * sin, t1 * (-sin) + t2 * cos], 3)

    for i in range(n_layer):
        p = lambda name: w[f"h.{i}.{name}"]  # noqa: E731
        h = rms(x)
        q, k, v = (F.linear(h, p(f"attn.c_{n}")).view(B, T, n_head, hd) for n in "qkv")
        q, k = rms(rotary(q)), rms(rotary(k))  # the record: rotary, then QK norm
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, C), p("attn.c_proj"))
        x = x + F.linear(F.relu(F.linear(rms(x), p("mlp.c_fc"))).square(), p("mlp.c_proj"))
    return F.linear(rms(x), w["wte"]).float()[..., :vocab]


def record_weights(model: GPT, sd: dict | None = None) -> dict:
    """The stagerun model's weights (or another state dict of its names, e.g. gradients) under the
    record's names (c_attn split into c_q, c_k, c_v)."""
    sd = model.state_dict() if sd is None else sd
    w = {"wte": sd["transformer.wte.weight"]}
    for i in range(model.config.n_layer):
        pre = f"transformer.h.{i}."
        w[f"h.{i}.attn.c_q"], w[f"h.{i}.attn.c_k"], w[f"h.{i}.attn.c_v"] = sd[pre + "attn.c_attn.weight"].chunk(3)
        for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            w[f"h.{i}.{name}"] = sd[pre + name + ".weight"]
    return w


def randomized(model: GPT) -> GPT:
    """Every weight random (the preset zero-inits the projections, which would hide the blocks)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_preset_has_the_records_shape():
    cfg = build_model_config({"preset": PRESET}, 50257)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.head_dim, cfg.padded_vocab_size) == (12, 6, 768, 128, 50304)
    with torch.device("meta"):
        model = GPT(cfg)
    assert "wpe" not in model.transformer
    # 12 x 12 C^2 matrices + the tied 50304 x C embedding; no norm gains, no biases (the record's 124M)
    assert model.num_parameters() == 12 * 12 * 768 ** 2 + 50304 * 768 == 123_568_128
    torch.manual_seed(0)
    small = GPT(build_model_config({"preset": PRESET, "n_layer": 2, "n_embd": 64, "head_dim": 16}, 65))
    assert small.config.n_head == 4
    assert all(float(p.detach().abs().max()) == 0 for n, p in small.named_parameters() if n.endswith("c_proj.weight"))


@pytest.mark.parametrize("block_size,n_embd,head_dim,vocab", [(64, 768, 128, 1000), (16, 64, 16, 50257)])
def test_preset_logits_equal_the_records_on_shared_weights(block_size, n_embd, head_dim, vocab):
    """The record's widths (6 heads of 128) and its padded GPT-2 vocabulary (at a small width)."""
    cfg = build_model_config({"preset": PRESET, "n_layer": 2, "block_size": block_size, "n_embd": n_embd,
                              "head_dim": head_dim}, vocab)
    torch.manual_seed(0)
    model = randomized(GPT(cfg)).eval()
    idx = torch.randint(0, vocab, (2, block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        ref = record_forward(record_weights(model), idx, cfg.n_layer, cfg.n_head, vocab)
    assert ours.shape == ref.shape == (2, block_size, vocab)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # and it is not GPT-2: the default architecture on the same weights gives other logits
    gpt2 = GPT(build_model_config({"preset": "gpt2-124m", "n_layer": 2, "block_size": block_size, "n_embd": n_embd,
                                   "n_head": n_embd // head_dim}, vocab)).eval()
    gpt2.load_state_dict({**gpt2.state_dict(), **{k: v for k, v in model.state_dict().items()}}, strict=False)
    assert not torch.allclose(gpt2(idx)[0], ours, atol=1e-2)


# ------------------------------------------------------------------ Muon: the record's update rule

def record_newton_schulz(G: torch.Tensor) -> torch.Tensor:
    """The record's quintic Newton-Schulz, 5 steps (float32 here; the record runs it in bfloat16)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm() + 1e-7)
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(5):
        A = X @ X.T
        B = A @ X
        X = a * X + b * B + c * A @ B
    return X.T if G.size(0) > G.size(1) else X


def record_muon_step(weights: dict, grads: dict, bufs: dict, lr: float, momentum: float = 0.95) -> None:
    """The record's Muon on its separate matrices: buf = m buf + g; g = g + m buf (Nesterov);
    W -= lr * sqrt(max(rows, cols)) * NS(g)."""
    for name, g in grads.items():
        buf = bufs.setdefault(name, torch.zeros_like(g))
        buf.mul_(momentum).add_(g)
        u = g + momentum * buf
        weights[name] -= lr * max(u.shape) ** 0.5 * record_newton_schulz(u)


def test_muon_steps_equal_the_records_update_rule():
    cfg = build_model_config({"preset": PRESET, "n_layer": 2, "block_size": 16, "n_embd": 64, "head_dim": 16}, 65)
    torch.manual_seed(0)
    model = randomized(GPT(cfg))
    adamw, muon = build_optimizers(model, SPEEDRUN_TRAIN)
    # the record's split: AdamW (0.9, 0.95, no decay) at lr on the tied embedding/head, Muon at 0.1 lr on the blocks
    assert [p for g in adamw.param_groups for p in g["params"]] == [model.transformer.wte.weight]
    assert {g["lr"] for g in adamw.param_groups} == {0.0036} and adamw.defaults["betas"] == (0.9, 0.95)
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.0}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for p in model.transformer.h.parameters()}
    ref = {k: v.clone() for k, v in record_weights(model).items() if k.startswith("h.")}
    bufs: dict = {}
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # momentum buffers matter from the second step
        grads = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        muon.step()
        rec_grads = record_weights(model, grads)
        record_muon_step(ref, {k: v for k, v in rec_grads.items() if k.startswith("h.")}, bufs, lr=0.00036)
    ours = record_weights(model)
    for name, expected in ref.items():
        torch.testing.assert_close(ours[name], expected, rtol=0, atol=1e-6, msg=name)
    moved = (ours["h.0.attn.c_q"] - record_weights(randomized(GPT(cfg)))["h.0.attn.c_q"]).pow(2).mean().sqrt()
    assert 0.00036 < float(moved) < 4 * 0.00036  # max_dim scale: an update of RMS about lr per step


def test_muon_without_the_new_keys_is_unchanged_and_split_differs():
    cfg = build_model_config({"preset": "nanogpt-small"}, 65)
    results = []
    for extra in ({}, {"muon_update_scale": "shape", "muon_split_qkv": False}, {"muon_split_qkv": True}):
        torch.manual_seed(0)
        model = GPT(cfg)
        _, muon = build_optimizers(model, {"optimizer": "muon", **extra})
        for p in model.parameters():
            p.grad = torch.ones_like(p) + torch.arange(p.numel()).view_as(p).sin()
        muon.step()
        results.append(model.transformer.h[0].attn.c_attn.weight.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.allclose(results[0], results[2], atol=1e-6)


def test_muon_split_is_the_same_for_shard_major_tp_weights():
    """A simulated tp block's c_attn rows are shard-major; Muon's q/k/v split must not care."""
    common = {"preset": PRESET, "n_layer": 1, "block_size": 16, "n_embd": 64, "head_dim": 16}
    models = []
    for block, tp in (("sequential", 1), ("tp", 2)):
        torch.manual_seed(0)
        models.append(randomized(GPT(build_model_config({**common, "block_type": block, "tp_size": tp}, 65))))
    seq, tp = models
    w0 = seq.transformer.h[0].attn.c_attn.weight.detach().clone()
    grad = torch.randn(w0.shape, generator=torch.Generator().manual_seed(2))
    for model, layout in ((seq, lambda t: t), (tp, lambda t: qkv_to_shard_major(t, 2))):
        with torch.no_grad():
            model.transformer.h[0].attn.c_attn.weight.copy_(layout(w0))
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        model.transformer.h[0].attn.c_attn.weight.grad = layout(grad).clone()
        build_optimizers(model, SPEEDRUN_TRAIN)[1].step()
    assert not torch.allclose(seq.transformer.h[0].attn.c_attn.weight, w0, atol=1e-5)
    torch.testing.assert_close(tp.transformer.h[0].attn.c_attn.weight,
                               qkv_to_shard_major(seq.transformer.h[0].attn.c_attn.weight, 2), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ composition

MODERN = {"pos_embedding": "rotary", "qk_norm": True, "mlp_activation": "relu2", "norm": "rmsnorm",
          "norm_affine": False}


@pytest.mark.parametrize("activation", ["relu2", "gelu"])
def test_tp_block_with_rotary_and_qk_norm_equals_the_sequential_block(activation):
    small = {"n_head": 4, "n_embd": 32, "block_size": 16, "n_layer": 1, **MODERN, "mlp_activation": activation}
    seq = BLOCK_TYPES["sequential"](build_model_config({**small, "tp_size": 1}, 11), 0)
    for name in ("tp", "spd"):
        block = BLOCK_TYPES[name](build_model_config({**small, "block_type": name, "tp_size": 2}, 11), 0)
        state = {k: v.clone() for k, v in seq.state_dict().items()}
        state["attn.c_attn.weight"] = qkv_to_shard_major(state["attn.c_attn.weight"], 2)
        block.load_state_dict(state)
        x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(0))
        if name == "tp":  # Megatron tp is the unsharded block exactly
            torch.testing.assert_close(block(x), seq(x), rtol=1e-5, atol=1e-6)
        else:  # spd's MLP reads the shard's own stream: differs, but attention alone agrees
            h = block.ln_1(x)
            torch.testing.assert_close(block.attn.sharded(h).sum(0), seq.attn(seq.ln_1(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_type", ["sequential", "palm", "tp", "spd", "parallel"])
def test_curriculum_crop_and_depth_warm_compose_with_the_preset(block_type):
    tp = {"tp_size": 2} if block_type in ("tp", "spd", "parallel") else {}
    cfg = build_model_config({"preset": PRESET, "n_layer": 2, "block_size": 16, "n_embd": 32, "head_dim": 8,
                              "block_type": block_type, **tp, "depth_warm": True, "depth_warm_steps": 4}, 65)
    torch.manual_seed(0)
    model = randomized(GPT(cfg)).eval()
    idx = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(1))
    full, _ = model(idx)
    cropped, _ = model(idx[:, :8])  # a curriculum rung: shorter windows, positions from 0
    torch.testing.assert_close(cropped, full[:, :8], rtol=1e-5, atol=1e-6)
    model.set_depth_schedule_state(1)  # DepthWarm: layer 0 only
    one = GPT(build_model_config({**cfg.__dict__, "n_layer": 1, "depth_warm": False}, 65)).eval()
    one.load_state_dict({k: v for k, v in model.state_dict().items() if ".h.1." not in k})
    torch.testing.assert_close(model(idx)[0], one(idx)[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(idx)[0], full, atol=1e-4)
