"""Tensor-parallel blocks: real (2 gloo processes) == simulated, tp == sequential, measured sync
counts == analytic counts, parameter parity of the comm study's six GPT-2 configurations,
pattern validation.

The real runs of every case happen in ONE ``torchrun --nproc_per_node 2 tests/integration/tp_worker.py``
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

from workflow.model import BLOCK_TYPES, GPT, TPCommMode, tp_comm_counts, tp_reduce_grads
from workflow.model.parallelize import qkv_from_shard_major, qkv_to_shard_major, tp_sharded_params
from workflow.model.block_spec import expand_block_pattern, nominal_tp_syncs
from workflow.parallel.tp_spec import analytic_tp_syncs
from workflow.model.spec import build_model_config

REPO = Path(__file__).resolve().parents[2]
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
    # the seed's corrected patterns (NanoTransformer commit "configs corrected")
    "6comm-final": ["spd", "parallel", "parallel", "parallel"],
    "9comm": ["spd", "parallel", "parallel", "spd"],
}
#: Measured forward / backward all-reduces per pass at 12 layers, tp_size 2 (docs/tensor_parallel.md).
EXPECTED_SYNCS = {"24comm": 24, "18comm": 18, "16comm": 16, "12comm": 12, "8comm": 7, "6comm": 5,
                  "18comm-clustered": 18, "6comm-final": 4, "9comm": 6}
#: The same under ``parallel_merge: reference`` (NanoTransformer's tensor_parallel_model.py: every
#: run of parallel blocks closes with its own all-reduce): the reference code's counts.
REFERENCE_SYNCS = {"8comm": 12, "6comm": 8, "6comm-final": 6, "9comm": 9}
SMALL = dict(n_head=4, n_embd=32, block_size=BATCH["T"], tp_size=2)
CASES = {
    **{f"block-{name}": {**SMALL, "n_layer": 3, "block_type": name} for name in ("tp", "spd", "parallel")},
    **{name: {**SMALL, "n_layer": 12, "block_pattern": pattern} for name, pattern in STUDY_PATTERNS.items()},
    # split streams merged before unsharded blocks, a tp block after a parallel block
    "mixed": {**SMALL, "n_layer": 6, "block_pattern": ["parallel", "sequential", "parallel", "tp", "spd", "palm"]},
    **{f"{name}-reference": {**SMALL, "n_layer": 12, "block_pattern": STUDY_PATTERNS[name], "parallel_merge": "reference"}
       for name in REFERENCE_SYNCS},
    "mixed-reference": {**SMALL, "n_layer": 6, "parallel_merge": "reference",
                        "block_pattern": ["parallel", "parallel", "sequential", "parallel", "tp", "spd"]},
    # the speedrun baseline's parts (rotary and QK-norm per shard of heads, ReLU^2, scale-free RMS norm)
    "modern": {**SMALL, "n_layer": 4, "block_pattern": ["tp", "spd", "parallel", "spd"], "pos_embedding": "rotary",
               "qk_norm": True, "mlp_activation": "relu2", "norm": "rmsnorm", "norm_affine": False},
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
         str(REPO / "tests" / "integration" / "tp_worker.py"), json.dumps(CASES), str(out)],
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
    analytic = analytic_tp_syncs(cfg.layer_block_types, cfg.tp_size, cfg.parallel_merge)
    act_bytes = logits.shape[0] * logits.shape[1] * cfg.n_embd * 4  # one [B, T, C] float32
    for runs in real_runs.values():
        real = runs[name]
        for phase in ("forward", "backward"):
            assert real["measured"][phase]["calls"] == analytic[phase], (phase, real["measured"])
            assert real["measured"][phase]["bytes"] == analytic[phase] * act_bytes
            assert real["counted"][phase] == real["measured"][phase]
            assert sim_counted[phase] == real["measured"][phase]  # simulated counts what a real rank runs
        # one gradient all-reduce per step: spd/parallel norm gains (none without norm_affine)
        # + the sharded squared norm
        n_local = sum(1 for t in cfg.layer_block_types if t in ("spd", "parallel")) * cfg.norm_affine
        assert real["grad_counted"] == {"calls": 1, "bytes": (2 * n_local * cfg.n_embd + 1) * 4}
    if name in EXPECTED_SYNCS:
        assert analytic == {"forward": EXPECTED_SYNCS[name], "backward": EXPECTED_SYNCS[name]}
    if name.endswith("-reference") and name[: -len("-reference")] in REFERENCE_SYNCS:
        expected = REFERENCE_SYNCS[name[: -len("-reference")]]  # 12 / 8 / 6 / 9, measured on 2 gloo ranks
        assert analytic == {"forward": expected, "backward": expected}


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
                       "18comm-clustered": 18, "6comm-final": 5, "9comm": 8}  # the write-up's rule
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


# ---------------------------------------------------------------- real tensor parallelism in the trainer


def tp_run_cfg(mode: str) -> dict:
    """4 layers mixing all three block types, tp_size 2; batch 8 (device batch 4)."""
    return {
        "study": "tp", "stage": "A", "variant": "mixed", "seed": 1337, "run_id": 0, "dataset": "shakespeare_char",
        "model": {"preset": "nanogpt-small", "n_layer": 4, "block_pattern": ["tp", "spd", "parallel", "spd"],
                  "tp_size": 2, "tp_mode": mode},
        "train": {"batch_size": 8, "device_batch_size": 4, "num_iterations": 20, "lr": 3e-3, "warmup_iters": 3,
                  "val_loss_every": 10, "log_every": 1, "val_tokens": 1024, "device": "cpu", "grad_clip": 0.5,
                  "checkpoint_every": 10},
    }


def run_torchrun(cfg: dict, out_dir: Path, meta: Path, nproc: int = 4, popen: bool = False):
    from test_jobs_resume import env, torchrun_cmd

    cmd = torchrun_cmd(cfg, out_dir, meta, nproc)
    if popen:
        log = open(out_dir.parent / f"{out_dir.name}.log", "w")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=out_dir.parent), log
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=out_dir.parent, timeout=280)


@pytest.fixture(scope="module")
def real_tp_reference(tmp_path_factory, shakespeare_char_meta) -> Path:
    """An uninterrupted real-TP run: 4 gloo processes = 2 data-parallel x 2 tensor-parallel."""
    out = tmp_path_factory.mktemp("tp_train") / "reference"
    proc = run_torchrun(tp_run_cfg("real"), out, shakespeare_char_meta)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.timeout(300)
def test_real_tp_training_on_a_dp_x_tp_mesh_equals_simulated(real_tp_reference, shakespeare_char_meta, tmp_path):
    """dp 2 x tp 2 (DDP over the dp dimension only, data sampled by dp rank) follows the same
    loss curve as one simulated process with 2 micro-steps; counts and the saved model agree."""
    from test_jobs_resume import rows_without_timings

    from workflow.parallel.process_groups import DistContext
    from workflow.train import configure_backends
    from workflow.training.sampling import load_model
    from workflow.training.trainer import Trainer

    ctx = DistContext()
    configure_backends(ctx)
    sim = Trainer(tp_run_cfg("simulated"), tmp_path / "sim", shakespeare_char_meta, ctx)
    assert sim.grad_accum_steps == 2
    sim_result = sim.run()
    real_result = json.loads((real_tp_reference / "result.json").read_text())
    real_rows = rows_without_timings(real_tp_reference / "metrics.jsonl")
    sim_rows = rows_without_timings(tmp_path / "sim" / "metrics.jsonl")
    assert [r["step"] for r in real_rows] == [r["step"] for r in sim_rows]
    for a, b in zip(real_rows, sim_rows):
        for key in ("train_loss", "val_loss"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:  # float reduction order differs; AdamW steps amplify it slowly
                assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
        expected = 4.0 if a["step"] > 0 else None  # [tp, spd, parallel, spd]: 2 + 1 + 0 + 1 per pass
        assert a["tp_syncs_forward"] == b["tp_syncs_forward"] == expected
        assert a["tp_syncs_backward"] == b["tp_syncs_backward"] == expected
    tp_real, tp_sim = real_result["tensor_parallel"], sim_result["tensor_parallel"]
    assert tp_real["tp_mode"] == "real" and tp_sim["tp_mode"] == "simulated"
    for key in ("syncs_nominal", "syncs_analytic", "syncs_measured", "syncs_measured_backward", "num_parameters"):
        assert tp_real[key] == tp_sim[key], key
    assert (tp_real["syncs_nominal"], tp_real["syncs_analytic"]) == (6, 4)
    per_worker = real_result["communication"]["per_worker"]
    assert real_result["world_size"] == len(per_worker) == 4
    for worker in per_worker:  # every rank: 20 steps x 1 micro-step x 4 all-reduces each way
        assert worker["calls"]["tp_forward"] == worker["calls"]["tp_backward"] == 80
        assert worker["calls"]["tp_grad"] == 20 and worker["calls"]["grad_all_reduce"] >= 20
    # simulated: 2 micro-steps per step on one process, the same per-pass collectives
    assert sim_result["communication"]["calls_by_kind"]["tp_forward"] == 160
    # the final model is whole (gathered shards) and equals the simulated one's parameters closely
    real_model, sim_model = load_model(real_tp_reference / "model.pt"), load_model(tmp_path / "sim" / "model.pt")
    assert real_model.num_parameters() == sim_model.num_parameters() == real_result["num_parameters"]
    for (name, a), b in zip(real_model.state_dict().items(), sim_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.timeout(300)
def test_real_tp_kill_and_rerun_resumes_with_identical_losses(real_tp_reference, shakespeare_char_meta, tmp_path):
    """SIGTERM to the torchrun agent of a dp 2 x tp 2 run, then the same command: every rank's
    shards come back from its own checkpoint file and the losses equal the uninterrupted run's."""
    import signal
    import time

    from test_jobs_resume import last_step, newest_step, rows_without_timings

    from workflow.training import checkpoint

    run_dir = tmp_path / "preempted"
    proc, log = run_torchrun(tp_run_cfg("real"), run_dir, shakespeare_char_meta, popen=True)
    deadline = time.monotonic() + 200
    while last_step(run_dir / "metrics.partial.jsonl") < 12 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be preempted"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    log.close()
    text = (tmp_path / "preempted.log").read_text()
    assert code != 0 and "PREEMPTED by signal at step" in text, text[-3000:]
    step = newest_step(run_dir)
    assert 12 <= step < 20
    slot = checkpoint.slots_newest_first(run_dir)[0][0]
    shapes = {r: torch.load(slot / f"rank-{r}.pt", weights_only=True)["model"]["transformer.h.1.mlp.c_fc.weight"]
              for r in range(4)}
    assert all(s.shape == (128, 64) for s in shapes.values())  # F/2 rows of shard tp_rank
    assert torch.equal(shapes[0], shapes[2]) and not torch.equal(shapes[0], shapes[1])  # dp replicas agree
    again = run_torchrun(tp_run_cfg("real"), run_dir, shakespeare_char_meta)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"at step {step}" in again.stdout
    ref = json.loads((real_tp_reference / "result.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_val_loss"] == ref["final_val_loss"]
    assert rows_without_timings(run_dir / "metrics.jsonl") == rows_without_timings(real_tp_reference / "metrics.jsonl")
