"""Tests of workflow.optim.optimizers: Newton–Schulz, Muon, optimizer grouping, LR schedules, curriculum."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from workflow.model import GPT
from workflow.optim.optimizers import Muon, split_muon_params, zeropower_via_newtonschulz5
from workflow.optim.registry import build_optimizers
from workflow.model.spec import build_model_config
from workflow.optim.schedules import curriculum_block_size, lr_multiplier, set_lr

# Band of the singular values after 5 quintic Newton–Schulz steps with (3.4445, -4.7750, 2.0315).
# The iteration acts on each singular value s of G/||G||_F by the scalar map
# f(s) = a s + b s^3 + c s^5; its 5-fold composition maps [2e-3, 1] into [0.682, 1.202]
# (computed on a dense grid; f(1) = 0.7015 and the map oscillates around 1 instead of
# converging, by design: Keller Jordan, https://kellerjordan.github.io/posts/muon/, and the
# modded-nanogpt docstring describe the result as U S' V^T with S'_ii roughly in (0.5, 1.5)).
# We test [0.68, 1.21] with a small float32 round-off margin, on matrices whose normalized
# singular values are all above 2e-3 (rectangular Gaussians are well conditioned).
NS_BAND = (0.68 - 0.01, 1.21 + 0.01)


# Tiny models run fastest on one intra-op thread (conftest.py's one_thread fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


def _scalar_ns(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = (3.4445, -4.7750, 2.0315)
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (3, 32, 96)])
def test_newton_schulz_near_orthogonal(shape):
    g = torch.Generator().manual_seed(0)
    G = torch.randn(*shape, generator=g, dtype=torch.float64).float()
    X = zeropower_via_newtonschulz5(G, steps=5)
    assert X.shape == G.shape and X.dtype == torch.float32
    s_in = torch.linalg.svdvals(G / G.norm(dim=(-2, -1), keepdim=True))
    assert s_in.min() > 2e-3  # precondition of the band
    s_out = torch.linalg.svdvals(X)
    assert NS_BAND[0] <= s_out.min().item() and s_out.max().item() <= NS_BAND[1], s_out
    # each singular value follows the scalar quintic map (same singular vectors)
    torch.testing.assert_close(s_out, _scalar_ns(s_in.double()).float().sort(
        dim=-1, descending=True).values, atol=2e-3, rtol=0)
    # X is close to the polar factor U V^T
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    rel = (X - U @ Vh).norm() / (U @ Vh).norm()
    assert rel < 0.35


def test_newton_schulz_bfloat16_and_errors():
    G = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    X = zeropower_via_newtonschulz5(G, dtype=torch.bfloat16)
    s = torch.linalg.svdvals(X.float())
    assert 0.6 < s.min() and s.max() < 1.3  # bf16 round-off widens the band slightly
    with pytest.raises(ValueError, match="matrix"):
        zeropower_via_newtonschulz5(torch.randn(5))


def test_muon_step_matches_formula():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(48, 16))  # rows > cols: scale sqrt(48/16)
    W0 = W.detach().clone()
    grads = [torch.randn(48, 16) for _ in range(2)]
    opt = Muon([W], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    buf = torch.zeros(48, 16)
    expected = W0.clone()
    for g in grads:
        W.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        u = 0.1 * g + 0.9 * buf
        expected = expected * (1 - 0.1 * 0.01) - 0.1 * math.sqrt(3.0) * \
            zeropower_via_newtonschulz5(u)
    torch.testing.assert_close(W.detach(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(grads[-1], W.grad)  # the gradient is not modified in place
    with pytest.raises(ValueError, match="2 dims"):
        Muon([nn.Parameter(torch.zeros(4))])
    # parameters without a gradient are skipped
    V = nn.Parameter(torch.ones(4, 4))
    Muon([V]).step()
    assert torch.equal(V.detach(), torch.ones(4, 4))


def _newton_schulz_reference(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's iteration as written (one matrix, plain matmuls): the numerics the
    fused and batched implementation must keep."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    if G.size(0) > G.size(1):
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if G.size(0) > G.size(1) else X


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_batched_newton_schulz_equals_one_matrix_at_a_time(shape):
    G = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3))
    batched = zeropower_via_newtonschulz5(G)
    assert batched.shape == G.shape
    for i in range(5):
        reference = _newton_schulz_reference(G[i])
        torch.testing.assert_close(batched[i], reference, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(zeropower_via_newtonschulz5(G[i]), reference, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("nesterov, weight_decay", [(True, 0.0), (False, 0.05)])
def test_batched_muon_step_equals_the_per_matrix_loop(nesterov, weight_decay):
    """Muon steps the same-shaped hidden matrices of a GPT together; the parameters after three
    steps equal the per-matrix formula with the reference Newton-Schulz (float tolerance)."""
    model = _model(n_layer=3)
    params = split_muon_params(model)["muon"]
    assert len({tuple(p.shape) for p in params}) < len(params)  # several matrices per shape
    expected = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    opt = Muon(params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = 0.9 * bufs[i] + 0.1 * g
            u = (0.1 * g + 0.9 * bufs[i]) if nesterov else bufs[i]
            scale = max(1.0, u.size(0) / u.size(1)) ** 0.5
            expected[i] = expected[i] * (1 - 0.05 * weight_decay) - 0.05 * scale * _newton_schulz_reference(u)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-5, rtol=1e-5)


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(build_model_config({"preset": "nanogpt-small", **overrides}, 65))


def test_adamw_grouping():
    model = _model()
    (opt,) = build_optimizers(model, {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.1,
                                      "beta1": 0.8, "beta2": 0.95})
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert all(g["lr"] == 2e-3 and g["betas"] == (0.8, 0.95) for g in opt.param_groups)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_parameters()  # tied head counted once, nothing missing


@pytest.mark.parametrize("tie", [True, False])
def test_muon_grouping(tie):
    model = _model(tie_embeddings=tie)
    cfg = {"optimizer": "muon", "lr": 1e-3, "muon_lr": 0.03, "embed_lr": 0.3,
           "head_lr": 0.004, "adam_lr": 0.02}
    adamw, muon = build_optimizers(model, cfg)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, Muon)
    parts = split_muon_params(model)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert muon_ids == {id(p) for p in parts["muon"]}
    assert id(model.transformer.wte.weight) not in muon_ids
    assert id(model.lm_head.weight) not in muon_ids
    assert all(p.ndim == 2 for p in parts["muon"])
    lrs = {g["lr"] for g in adamw.param_groups}
    assert lrs == ({0.3, 0.02} if tie else {0.3, 0.004, 0.02})
    assert muon.param_groups[0]["lr"] == 0.03
    n_opt = sum(p.numel() for o in (adamw, muon) for g in o.param_groups for p in g["params"])
    assert n_opt == model.num_parameters()


def test_unknown_optimizer_and_schedule():
    with pytest.raises(ValueError, match=r"'optimizer'.*'lamb'.*adamw"):
        build_optimizers(_model(), {"optimizer": "lamb"})
    with pytest.raises(ValueError, match=r"'schedule'.*'step'.*cosine"):
        lr_multiplier(0, {"schedule": "step"})


def test_schedules_at_boundaries():
    base = dict(num_iterations=100, warmup_iters=10, min_lr_ratio=0.1)
    for schedule in ("cosine", "linear", "constant", "trapezoidal"):
        cfg = dict(base, schedule=schedule, warmdown_iters=40)
        assert lr_multiplier(0, cfg) == pytest.approx(0.1)   # (0 + 1) / 10
        assert lr_multiplier(9, cfg) == pytest.approx(1.0)   # end of warmup
        assert lr_multiplier(10, cfg) == pytest.approx(1.0)  # first post-warmup step
    cos = dict(base, schedule="cosine")
    assert lr_multiplier(55, cos) == pytest.approx(0.55)     # midpoint: (1 + r) / 2
    assert lr_multiplier(100, cos) == pytest.approx(0.1)
    assert lr_multiplier(500, cos) == pytest.approx(0.1)
    lin = dict(base, schedule="linear")
    assert lr_multiplier(55, lin) == pytest.approx(0.55)
    assert lr_multiplier(100, lin) == pytest.approx(0.1)
    assert lr_multiplier(50, dict(base, schedule="constant")) == 1.0
    trap = dict(base, schedule="trapezoidal", warmdown_iters=40)
    assert lr_multiplier(60, trap) == pytest.approx(1.0)     # last constant step (N - D)
    assert lr_multiplier(61, trap) == pytest.approx(39 / 40)
    assert lr_multiplier(99, trap) == pytest.approx(1 / 40)  # last training step
    assert lr_multiplier(100, trap) == 0.0
    assert lr_multiplier(150, trap) == 0.0
    assert lr_multiplier(99, dict(trap, warmdown_iters=0)) == 1.0
    # no warmup: step 0 is the peak
    assert lr_multiplier(0, dict(base, warmup_iters=0, schedule="cosine")) == 1.0
    with pytest.raises(ValueError):
        lr_multiplier(-1, cos)


def test_inv_sqrt_schedule():
    cfg = dict(schedule="inv_sqrt", num_iterations=100, warmup_iters=0, min_lr_ratio=0.5)
    assert lr_multiplier(0, cfg) == 1.0                      # t = 1
    assert lr_multiplier(3, cfg) == pytest.approx(0.5)       # 1 / sqrt(4)
    assert lr_multiplier(99, cfg) == pytest.approx(0.1)      # 1 / sqrt(100); min_lr_ratio unused
    assert lr_multiplier(500, cfg) == lr_multiplier(100, cfg)
    warm = dict(cfg, warmup_iters=4)
    assert lr_multiplier(3, warm) == 1.0 and lr_multiplier(4, warm) == 1.0
    assert lr_multiplier(7, warm) == pytest.approx(0.5)


def test_set_lr_scales_initial_lr():
    model = _model()
    opts = build_optimizers(model, {"optimizer": "muon", "lr": 1e-3, "muon_lr": 0.02})
    built = [[g["lr"] for g in o.param_groups] for o in opts]
    cfg = dict(schedule="linear", num_iterations=10, warmup_iters=0, min_lr_ratio=0.0)
    mult = set_lr(opts, 5, cfg)
    assert mult == pytest.approx(0.5)
    assert set_lr(opts, 6, cfg) == pytest.approx(0.4)  # scales the recorded peak, not the last lr
    for o, lrs in zip(opts, built):
        for g, lr in zip(o.param_groups, lrs):
            assert g["initial_lr"] == lr and g["lr"] == pytest.approx(0.4 * lr)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)  # any optimizer: the schedule records its peak lr
    set_lr([plain], 5, cfg)
    assert plain.param_groups[0]["initial_lr"] == 0.1 and plain.param_groups[0]["lr"] == pytest.approx(0.05)


def test_curriculum_steps_and_plateau():
    assert curriculum_block_size(0, {}) is None
    steps = {"curriculum_block_sizes": [256, 512, 768, 1024], "curriculum_advance": "steps",
             "curriculum_steps": [100, 200, 300]}
    assert [curriculum_block_size(s, steps) for s in (0, 99, 100, 199, 200, 300, 10**6)] == \
        [256, 256, 512, 512, 768, 1024, 1024]
    with pytest.raises(ValueError, match="curriculum_steps"):
        curriculum_block_size(0, dict(steps, curriculum_steps=[100, 200]))
    with pytest.raises(ValueError, match="curriculum_block_sizes"):
        curriculum_block_size(0, dict(steps, curriculum_block_sizes=[512, 256]))
    plateau = {"curriculum_block_sizes": [256, 512, 1024], "curriculum_advance": "plateau",
               "curriculum_patience": 2, "curriculum_min_delta": 0.01}
    hist = [(0, 3.0), (10, 2.5), (20, 2.495), (30, 2.6), (40, 2.0), (50, 1.999), (60, 1.9995)]
    # stale at 20 (improvement < min_delta) and 30 -> rung 1 from step 30 on; then 40 sets
    # best on the new rung, 50 and 60 are stale -> rung 2 from step 60 on.
    assert curriculum_block_size(25, plateau, hist) == 256
    assert curriculum_block_size(30, plateau, hist) == 512
    assert curriculum_block_size(59, plateau, hist) == 512
    assert curriculum_block_size(60, plateau, hist) == 1024
    assert curriculum_block_size(1000, plateau, hist + [(70, 1.0)]) == 1024  # top rung stays
    assert curriculum_block_size(1000, plateau, []) == 256


def _train(train_cfg: dict, steps: int = 20) -> list[float]:
    torch.manual_seed(0)
    cfg = build_model_config({"preset": "nanogpt-small"}, 65)
    model = GPT(cfg)
    opts = build_optimizers(model, train_cfg)
    motif = torch.randint(0, 65, (7,), generator=torch.Generator().manual_seed(0))
    seq = motif.repeat(8)
    x = torch.stack([seq[i: i + 32] for i in range(4)])
    y = torch.stack([seq[i + 1: i + 33] for i in range(4)])
    losses = []
    for step in range(steps):
        set_lr(opts, step, train_cfg)
        _, loss = model(x, y)
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_loss_falls(optimizer):
    cfg = {"optimizer": optimizer, "lr": 3e-3, "muon_lr": 0.02, "num_iterations": 20,
           "warmup_iters": 2, "schedule": "cosine"}
    losses = _train(cfg)
    assert losses[-1] < 0.5 * losses[0], losses
    assert _train(cfg, steps=5) == losses[:5]  # deterministic on CPU
