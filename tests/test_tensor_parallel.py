"""Tensor-parallel blocks: real (2 gloo processes) == simulated, tp == sequential, measured sync
counts == analytic counts, parameter parity of the comm study's six GPT-2 configurations,
pattern validation.

The real runs of every case happen in ONE ``torchrun --nproc_per_node 2 tests/tp_worker.py``
launch (module fixture ``real_runs``); the simulated model is built here from the same seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workflow.model import (
    GPT,
    BLOCK_TYPES,
    TPCommMode,
    build_model_config,
    tp_comm_counts,
    tp_reduce_grads,
)
from workflow.model.config import analytic_tp_syncs, expand_block_pattern, nominal_tp_syncs
from workflow.model.tensor_parallel import qkv_from_shard_major, qkv_to_shard_major, tp_sharded_params

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tp_worker import BATCH, batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: The comm study's six configurations (name -> pattern) and the clustered-placement control.
STUDY_PATTERNS = {
    "24comm": ["tp"],
    "18comm": ["tp", "spd"],
    "16comm": ["tp", "spd", "spd"],
    "12comm": ["spd"],
    "8comm": ["spd", "parallel"],
    "6comm": ["spd", "parallel", "parallel"],
    "18comm-clustered": ["spd"] * 6 + ["tp"] * 6,
}
#: Measured forward / backward all-reduces per pass at 12 layers, tp_size 2 (docs/tensor_parallel.md).
EXPECTED_SYNCS = {"24comm": 24, "18comm": 18, "16comm": 16, "12comm": 12, "8comm": 7, "6comm": 5,
                  "18comm-clustered": 18}
SMALL = dict(n_head=4, n_embd=32, block_size=BATCH["T"], tp_size=2)
CASES = {
    **{f"block-{name}": {**SMALL, "n_layer": 3, "block_type": name} for name in ("tp", "spd", "parallel")},
    **{name: {**SMALL, "n_layer": 12, "block_pattern": pattern} for name, pattern in STUDY_PATTERNS.items()},
    # split streams merged before unsharded blocks, a tp block after a parallel block
    "mixed": {**SMALL, "n_layer": 6, "block_pattern": ["parallel", "sequential", "parallel", "tp", "spd", "palm"]},
}


def simulated(name: str):
    """Simulated model of a case after forward, backward and tp_reduce_grads (as the worker)."""
    cfg = build_model_config(CASES[name], BATCH["vocab"])
    torch.manual_seed(0)
    model = GPT(cfg)
    x, y = batch()
    logits, loss = model(x, y)
    loss.backward()
    counted = tp_comm_counts(model)
    norm = tp_reduce_grads(model, BATCH["clip"])
    return cfg, model, logits, loss, norm, counted


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """{rank: {case: saved}} from one 2-process torchrun over every case."""
    out = tmp_path_factory.mktemp("tp_real")
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         str(REPO / "tests" / "tp_worker.py"), json.dumps(CASES), str(out)],
        capture_output=True, text=True, timeout=300, cwd=out,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CASES))
def test_real_equals_simulated_forward_and_gradients(name, real_runs):
    cfg, model, logits, loss, norm, _ = simulated(name)
    sharded = tp_sharded_params(cfg)
    params = dict(model.named_parameters())
    for rank, runs in real_runs.items():
        real = runs[name]
        torch.testing.assert_close(real["logits"], logits.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(real["loss"], loss.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(real["norm"], norm.detach(), rtol=1e-5, atol=0)
        assert real["num_parameters"] == model.num_parameters()
        assert set(real["grads"]) == set(params)
        for pname, grad in real["grads"].items():
            expected = params[pname].grad
            if pname in sharded:  # this rank's slice of the weight
                expected = expected.chunk(cfg.tp_size, dim=sharded[pname])[rank]
            assert grad.shape == expected.shape, pname
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7, msg=f"{name}: {pname}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CASES))
def test_measured_counts_equal_counters_and_analytic(name, real_runs):
    """CommDebugMode's count of the collectives that ran (DTensor's and the hand-written
    ones) == the model's counters == the analytic count from the pattern; bytes too."""
    cfg, _, logits, _, _, sim_counted = simulated(name)
    analytic = analytic_tp_syncs(cfg.layer_block_types, cfg.tp_size)
    act_bytes = logits.shape[0] * logits.shape[1] * cfg.n_embd * 4  # one [B, T, C] float32
    for runs in real_runs.values():
        real = runs[name]
        for phase in ("forward", "backward"):
            assert real["measured"][phase]["calls"] == analytic[phase], (phase, real["measured"])
            assert real["measured"][phase]["bytes"] == analytic[phase] * act_bytes
            assert real["counted"][phase] == real["measured"][phase]
            assert sim_counted[phase] == real["measured"][phase]  # simulated counts what a real rank runs
        # one gradient all-reduce per step: spd/parallel norm gains + the sharded squared norm
        n_local = sum(1 for t in cfg.layer_block_types if t in ("spd", "parallel"))
        assert real["grad_counted"] == {"calls": 1, "bytes": (2 * n_local * cfg.n_embd + 1) * 4}
    if name in EXPECTED_SYNCS:
        assert analytic == {"forward": EXPECTED_SYNCS[name], "backward": EXPECTED_SYNCS[name]}


def test_simulated_forward_count_equals_analytic_for_every_pattern():
    """Measured (counted while running) forward syncs of the simulated model == analytic, for all
    patterns of up to 3 layers over tp, spd, parallel and an unsharded block, repeated to 6 layers."""
    import itertools

    names = ["parallel", "sequential", "spd", "tp"]
    checked = 0
    for length in (1, 2, 3):
        for pattern in itertools.product(names, repeat=length):
            if not set(pattern) & {"tp", "spd", "parallel"}:
                continue
            cfg = build_model_config({**SMALL, "n_layer": 6, "block_pattern": list(pattern)}, 11)
            model = GPT(cfg)
            x = torch.randint(0, 11, (1, 4))
            model(x, x)[1].backward()
            counted = tp_comm_counts(model)
            analytic = analytic_tp_syncs(cfg.layer_block_types, 2)
            assert (counted["forward"]["calls"], counted["backward"]["calls"]) == \
                (analytic["forward"], analytic["backward"]), pattern
            assert counted["passes"] == 1
            checked += 1
    assert checked == 4 ** 3 + 4 ** 2 + 4 - 3


def test_tp_block_equals_unsharded_sequential_block():
    cfg_tp = build_model_config({**SMALL, "block_type": "tp", "n_layer": 1}, 11)
    cfg_seq = build_model_config({**SMALL, "block_type": "sequential", "tp_size": 1, "n_layer": 1}, 11)
    torch.manual_seed(0)
    seq = BLOCK_TYPES["sequential"](cfg_seq, 0)
    tp = BLOCK_TYPES["tp"](cfg_tp, 0)
    state = seq.state_dict()
    state["attn.c_attn.weight"] = qkv_to_shard_major(state["attn.c_attn.weight"], 2)
    tp.load_state_dict(state)
    assert torch.equal(qkv_from_shard_major(tp.attn.c_attn.weight, 2), seq.attn.c_attn.weight)
    with torch.no_grad():  # non-trivial norm gains
        for block in (seq, tp):
            block.ln_1.weight.copy_(torch.linspace(0.5, 1.5, cfg_tp.n_embd))
    x1 = torch.randn(3, 7, cfg_tp.n_embd, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out_seq, out_tp = seq(x1), tp(x2)
    torch.testing.assert_close(out_tp, out_seq, rtol=1e-5, atol=1e-6)
    (out_seq * torch.arange(out_seq.numel()).view_as(out_seq).sin()).sum().backward()
    (out_tp * torch.arange(out_tp.numel()).view_as(out_tp).sin()).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6)
    grads_tp = {n: p.grad for n, p in tp.named_parameters()}
    for n, p in seq.named_parameters():
        expected = qkv_to_shard_major(p.grad, 2) if n == "attn.c_attn.weight" else p.grad
        torch.testing.assert_close(grads_tp[n], expected, rtol=1e-5, atol=1e-6, msg=n)
    # spd differs from tp: the dropped sync changes what the MLP reads
    spd = BLOCK_TYPES["spd"](build_model_config({**SMALL, "block_type": "spd", "n_layer": 1}, 11), 0)
    spd.load_state_dict(tp.state_dict())
    assert not torch.allclose(spd(x1.detach()), out_tp.detach(), atol=1e-4)


def test_parameter_parity_gpt2_124m_six_configurations():
    counts = {}
    for name, pattern in STUDY_PATTERNS.items():
        cfg = build_model_config({"preset": "gpt2-124m", "block_pattern": pattern, "tp_size": 2}, 50257)
        with torch.device("meta"):
            counts[name] = GPT(cfg).num_parameters()
    with torch.device("meta"):
        reference = GPT(build_model_config({"preset": "gpt2-124m"}, 50257)).num_parameters()
    assert reference == 124_373_760
    for name, n in counts.items():
        assert abs(n - reference) / reference < 0.01, (name, n)
    assert max(counts.values()) - min(counts.values()) <= 0.01 * min(counts.values())


def test_pattern_validation_errors():
    with pytest.raises(ValueError, match=r"block_pattern.*\['tp', 'spd', 'spd', 'spd', 'spd'\].*5 entries.*n_layer = 12"):
        build_model_config({"preset": "gpt2-124m", "tp_size": 2, "block_pattern": ["tp"] + ["spd"] * 4}, 50257)
    with pytest.raises(ValueError, match=r"block_pattern'\[1\]: unknown block type 'spd2'.*valid"):
        build_model_config({"tp_size": 2, "block_pattern": ["tp", "spd2"]}, 65)
    with pytest.raises(ValueError, match=r"non-empty list"):
        expand_block_pattern([], 4)
    # the old PaLM name: a clear error naming the rename, never silently another block
    for model in ({"block_type": "parallel"}, {"block_pattern": ["sequential", "parallel"]}):
        with pytest.raises(ValueError, match=r"'parallel' is tensor-parallel.*tp_size >= 2.*renamed 'palm'"):
            build_model_config(model, 65)
    with pytest.raises(ValueError, match=r"tp_size is 2 but no layer uses a tensor-parallel block"):
        build_model_config({"tp_size": 2}, 65)
    with pytest.raises(ValueError, match=r"tp_size \(3\) must divide n_head \(8\)"):
        build_model_config({"tp_size": 3, "block_type": "tp"}, 65)
    with pytest.raises(ValueError, match=r"bias must be false"):
        build_model_config({"tp_size": 2, "block_type": "spd", "bias": True}, 65)
    with pytest.raises(ValueError, match=r"dropout must be 0"):
        build_model_config({"tp_size": 2, "block_type": "spd", "dropout": 0.1}, 65)
    with pytest.raises(ValueError, match=r"tp_mode 'fake'"):
        build_model_config({"tp_size": 2, "block_type": "spd", "tp_mode": "fake"}, 65)
    # an explicit list of n_layer names and a repeated pattern
    cfg = build_model_config({"tp_size": 2, "n_layer": 4, "block_pattern": ["tp", "spd"]}, 65)
    assert cfg.layer_block_types == ("tp", "spd", "tp", "spd")
    assert build_model_config({"tp_size": 2, "n_layer": 3, "block_pattern": ["tp", "palm", "spd"]},
                              65).layer_block_types == ("tp", "palm", "spd")


def test_nominal_and_analytic_counts_of_the_study():
    nominal = {name: nominal_tp_syncs(expand_block_pattern(p, 12)) for name, p in STUDY_PATTERNS.items()}
    assert nominal == {"24comm": 24, "18comm": 18, "16comm": 16, "12comm": 12, "8comm": 8, "6comm": 6,
                       "18comm-clustered": 18}
    for name, pattern in STUDY_PATTERNS.items():
        assert analytic_tp_syncs(expand_block_pattern(pattern, 12), 2)["forward"] == EXPECTED_SYNCS[name]
    assert analytic_tp_syncs(expand_block_pattern(["spd"], 12), 1) == {"forward": 0, "backward": 0}


def test_comm_mode_counts_a_dtensor_mlp_and_misses_nothing_hand_written():
    """TPCommMode counts collectives that bypass ``dist.all_reduce`` (DTensor's functional
    collectives); in the simulated model there are none to count, only the counters'."""
    cfg = build_model_config({**SMALL, "n_layer": 2, "block_type": "spd"}, 11)
    model = GPT(cfg)
    x = torch.randint(0, 11, (1, 4))
    with TPCommMode() as mode:
        model(x, x)[1].backward()
    assert mode.calls == {"forward": 0, "backward": 0}
    assert tp_comm_counts(model)["forward"]["calls"] == 2
