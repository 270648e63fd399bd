"""Gossip topologies, msgn, point-to-point mixing and the DSGDm / DeMuon update rules.

The real-process checks share one spawn of 4 gloo workers (``real_run``): each worker runs
every scenario and saves what it saw (results, the point-to-point operations it posted, the
collectives it called, its counter) to ``rank{r}.pt``; the tests below read those files.
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workflow.parallel.comm import CommCounter
from workflow.parallel.process_groups import DistContext
from workflow.strategies import STRATEGIES, build_strategy
from workflow.strategies.gossip import GossipOptimizer, msgn
from workflow.strategies.mixing import (
    TOPOLOGIES,
    consensus_distance,
    distributed_consensus_distance,
    gossip,
    mixing_matrix,
    neighbours,
)
from workflow.study.schema import validate_section

WORLD = 4
DIM = 37            # length of the vectors the workers mix
ROUNDS = 8          # gossip rounds of the consensus check
OPT_STEPS = 5       # optimizer steps of the update-rule check
LR, MOMENTUM = 0.05, 0.8


def _totals(counter: CommCounter) -> dict[str, list[int]]:
    """{kind: [calls, bytes]} of a counter."""
    snap = counter.snapshot()
    return {kind: [snap["calls"][kind], snap["bytes"][kind]] for kind in snap["calls"]}


def _vectors(seed: int = 0) -> torch.Tensor:
    """[WORLD, DIM] float64: row r is worker r's vector (every process can rebuild all rows)."""
    return torch.randn(WORLD, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _targets() -> dict[str, torch.Tensor]:
    """Per-worker minimizers c_r of f_r(x) = 0.5 ||x - c_r||^2 (heterogeneous local functions)."""
    g = torch.Generator().manual_seed(7)
    return {"weight": torch.randn(WORLD, 3, 5, generator=g, dtype=torch.float64),
            "bias": torch.randn(WORLD, 5, generator=g, dtype=torch.float64)}


def _initial_params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"weight": torch.randn(3, 5, generator=g, dtype=torch.float64),
            "bias": torch.randn(5, generator=g, dtype=torch.float64)}


# --------------------------------------------------------------------------------------
# The spawned workers
# --------------------------------------------------------------------------------------


def _spy() -> tuple[list, list]:
    """Wrap torch.distributed's batched point-to-point call and every collective / blocking
    send-recv so that each call is logged, then passed on unchanged (real messages)."""
    p2p_log: list = []
    other_log: list = []
    real_batch = dist.batch_isend_irecv

    def batch(ops):
        for op in ops:
            p2p_log.append(("send" if op.op is dist.isend else "recv", op.peer, op.tensor.numel()))
        return real_batch(ops)

    dist.batch_isend_irecv = batch
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
                 "reduce_scatter_tensor", "all_to_all_single", "send", "recv"):
        real = getattr(dist, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            other_log.append(_name)
            return _real(*args, **kwargs)

        setattr(dist, name, wrapped)
    return p2p_log, other_log


def _run_optimizer(algorithm: str, mode: int, W: torch.Tensor, rank: int, counter,
                   steps: int, state: dict | None = None, params: dict | None = None):
    """``steps`` GossipOptimizer steps on f_rank; returns (params, optimizer state_dict)."""
    values = params if params is not None else _initial_params()
    weight = torch.nn.Parameter(values["weight"].clone())
    bias = torch.nn.Parameter(values["bias"].clone())
    opt = GossipOptimizer([weight, bias], W, algorithm=algorithm, lr=LR, momentum=MOMENTUM,
                          msgn=mode, counter=counter)
    if state is not None:
        opt.load_state_dict(state)
    c = _targets()
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((weight - c["weight"][rank]) ** 2).sum() + 0.5 * ((bias - c["bias"][rank]) ** 2).sum()
        loss.backward()
        opt.step()
    return {"weight": weight.detach().clone(), "bias": bias.detach().clone()}, opt.state_dict()


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    res: dict = {}
    X = _vectors()
    x = X[rank].clone()
    p2p_log, other_log = _spy()

    # 1) one gossip call per topology, then two more on ring and exp (message counts per pair)
    for topology in ("ring", "exp"):
        counter = CommCounter(enabled=True)
        start = len(p2p_log), len(other_log)
        W = mixing_matrix(topology, WORLD)
        res[f"mixed_{topology}"] = gossip(x, W, counter)
        for _ in range(2):
            gossip(x, W, counter)
        res[f"p2p_{topology}"] = p2p_log[start[0]:]
        res[f"collectives_{topology}"] = other_log[start[1]:]
        res[f"counter_{topology}"] = _totals(counter)

    # 2) complete graph: point-to-point W x versus the all-reduce average
    Wc = mixing_matrix("complete", WORLD)
    counter = CommCounter(enabled=True)
    res["complete_p2p"] = gossip(x, Wc, counter, all_reduce_if_complete=False)
    res["counter_complete_p2p"] = _totals(counter)
    counter = CommCounter(enabled=True)
    start = len(other_log)
    res["complete_all_reduce"] = gossip(x, Wc, counter)
    res["collectives_complete"] = other_log[start:]
    res["counter_complete"] = _totals(counter)
    direct = x.clone()
    dist.all_reduce(direct)
    res["all_reduce_mean"] = direct / WORLD

    # 3) mixing alone on the ring: the iterates of ROUNDS rounds, and the distributed distance
    W = mixing_matrix("ring", WORLD)
    y, trace, dist_trace = x.clone(), [x.clone()], [distributed_consensus_distance(x)]
    for _ in range(ROUNDS):
        y = gossip(y, W)
        trace.append(y.clone())
        dist_trace.append(distributed_consensus_distance(y))
    res["ring_trace"] = torch.stack(trace)
    res["ring_distance"] = dist_trace

    # 4) update rules on ring / exp; DeMuon resumed from a torch.save'd state mid-run
    for algorithm, mode, topology in (("dsgdm", 0, "ring"), ("demuon", 2, "ring"),
                                      ("demuon", 1, "exp"), ("demuon", 0, "exp")):
        counter = CommCounter(enabled=True)
        W = mixing_matrix(topology, WORLD)
        params, state = _run_optimizer(algorithm, mode, W, rank, counter, OPT_STEPS)
        key = f"{algorithm}_{mode}_{topology}"
        res[f"opt_{key}"] = params
        res[f"opt_counter_{key}"] = _totals(counter)
        if algorithm == "demuon":
            mid, state = _run_optimizer(algorithm, mode, W, rank, None, 2)
            buffer = io.BytesIO()
            torch.save({"params": mid, "optimizer": state}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            resumed, _ = _run_optimizer(algorithm, mode, W, rank, None, OPT_STEPS - 2,
                                        state=saved["optimizer"], params=saved["params"])
            res[f"opt_resumed_{key}"] = resumed

    # 5) the strategy built from its validated config section: optimizer wiring, scored model
    train_cfg = validate_section({"lr": LR, "strategy": {"name": "gossip", "topology": "exp"}}, "train", "train")
    ctx = DistContext(rank=rank, world_size=WORLD, backend="gloo", launcher="spawn")
    counter = CommCounter(enabled=True)
    strategy = build_strategy(train_cfg, ctx, counter)
    model = torch.nn.Linear(3, 2, bias=True)
    with torch.no_grad():
        model.weight.fill_(float(rank))
        model.bias.fill_(-float(rank))
    (opt,) = strategy.build_optimizers(model)
    res["strategy_optimizer"] = (type(opt).__name__, opt.param_groups[0]["algorithm"], opt.param_groups[0]["msgn"],
                                 opt.param_groups[0]["momentum"], torch.equal(opt.mixing_matrix, mixing_matrix("exp", WORLD)))
    with strategy.scored_model(model) as name:
        res["scored"] = (name, model.weight.detach().clone(), model.bias.detach().clone())
    res["after_scored"] = (model.weight.detach().clone(), model.bias.detach().clone())
    res["scored_counter"] = _totals(counter)
    dist.barrier()
    dist.destroy_process_group()
    torch.save(res, f"{out_dir}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> list[dict]:
    """Spawn WORLD gloo workers once; return each rank's results."""
    out = tmp_path_factory.mktemp("gossip")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# --------------------------------------------------------------------------------------
# Topologies
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("n", range(2, 10))
def test_mixing_matrix_doubly_stochastic(topology, n):
    W = mixing_matrix(topology, n)
    assert W.shape == (n, n) and W.dtype == torch.float64
    assert (W >= 0).all() and (torch.diagonal(W) > 0).all()
    torch.testing.assert_close(W.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(W.sum(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    degree = {"ring": min(2, n - 1), "complete": n - 1, "exp": math.floor(math.log2(n - 1)) + 1}[topology]
    assert ((W > 0).sum(1) == degree + 1).all()
    assert torch.allclose(W[W > 0], torch.tensor(1.0 / (degree + 1), dtype=torch.float64))
    # connected: W's second largest singular value is below 1, so mixing contracts
    assert torch.linalg.svdvals(W)[1] < 1 - 1e-9


def test_neighbours_and_bad_input():
    assert neighbours("ring", 4, 0) == ([1, 3], [1, 3])
    assert neighbours("ring", 2, 1) == ([0], [0])
    exp8 = neighbours("exp", 8, 0)
    assert exp8.recv_from == [1, 2, 4] and exp8.send_to == [4, 6, 7]
    assert neighbours("complete", 5, 2).recv_from == [0, 1, 3, 4]
    assert torch.equal(mixing_matrix("complete", 6), torch.full((6, 6), 1 / 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="'topology'.*'torus'"):
        mixing_matrix("torus", 4)
    with pytest.raises(ValueError, match="rank 4"):
        neighbours("ring", 4, 4)
    with pytest.raises(ValueError, match="shape"):
        gossip(torch.zeros(3), mixing_matrix("ring", 3))   # no process group: world_size 1


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_consensus_distance_shrinks_under_mixing(topology):
    n = 8
    W = mixing_matrix(topology, n)
    X = torch.randn(n, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma2 = float(torch.linalg.svdvals(W)[1])
    dists = [consensus_distance(X)]
    for _ in range(6):
        X_next = W @ X
        torch.testing.assert_close(X_next.mean(0), X.mean(0))       # the average is preserved
        X = X_next
        dists.append(consensus_distance(X))
    for before, after in zip(dists, dists[1:]):
        assert after <= sigma2 ** 2 * before * (1 + 1e-9) + 1e-18
        assert after < before or before < 1e-20
    assert consensus_distance(torch.ones(3, 4)) == 0.0
    assert consensus_distance(torch.tensor([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# msgn
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (32, 32)])
def test_msgn_svd_is_orthogonal_and_newton_schulz_approximates_it(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    exact = msgn(G, 2)
    torch.testing.assert_close(torch.linalg.svdvals(exact), torch.ones(min(shape)), atol=1e-5, rtol=0)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(exact, U @ Vh, atol=1e-5, rtol=0)
    ns = msgn(G, 1)
    s = torch.linalg.svdvals(ns)
    assert s.min() > 0.5 and s.max() < 1.5                      # Muon's NS: near 1, not at 1
    cos = float((ns * exact).sum() / (ns.norm() * exact.norm()))
    assert cos > 0.95                                           # same direction as U V^T
    assert torch.equal(msgn(G, 0), G)


def test_msgn_shapes_vectors_and_errors():
    v = torch.tensor([3.0, -4.0])
    for mode in (1, 2):
        torch.testing.assert_close(msgn(v, mode), torch.tensor([0.6, -0.8]))
        assert torch.equal(msgn(torch.zeros(4), mode), torch.zeros(4))
        assert msgn(torch.tensor(-2.5), mode) == -1.0
    assert torch.equal(msgn(torch.zeros(5, 3), 2), torch.zeros(5, 3))   # not a random basis
    t = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = msgn(t, 2)
    assert out.shape == t.shape and out.dtype == torch.float64
    torch.testing.assert_close(torch.linalg.svdvals(out.reshape(4, 6)), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="'msgn'.*3"):
        msgn(v, 3)


# --------------------------------------------------------------------------------------
# Update rules (single process: W = [[1]]) and their checkpointable state
# --------------------------------------------------------------------------------------


def test_single_worker_update_rules_match_the_formulas():
    W = torch.ones(1, 1, dtype=torch.float64)
    p = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64))
    opt = GossipOptimizer([p], W, algorithm="dsgdm", lr=0.1, momentum=0.5, msgn=0)
    m, x = torch.zeros(2, 2, dtype=torch.float64), p.detach().clone()
    for _ in range(3):
        p.grad = 2 * p.detach().clone()
        m = 0.5 * m + 0.5 * p.grad
        x = x - 0.1 * m
        opt.step()
        torch.testing.assert_close(p.detach(), x)
    # DeMuon on one worker: V tracks M exactly, so x <- x - lr msgn(M)
    q = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64))
    opt = GossipOptimizer([q], W, algorithm="demuon", lr=0.1, momentum=0.5, msgn=2)
    m, x = torch.zeros(2, 2, dtype=torch.float64), q.detach().clone()
    for _ in range(3):
        q.grad = 2 * q.detach().clone() + 1
        m = 0.5 * m + 0.5 * q.grad
        U, _, Vh = torch.linalg.svd(m)
        x = x - 0.1 * U @ Vh
        opt.step()
        torch.testing.assert_close(q.detach(), x)
        torch.testing.assert_close(opt.state[q]["tracker"], m)
    with pytest.raises(ValueError, match="'algorithm'"):
        GossipOptimizer([q], W, algorithm="adam", lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="'momentum'"):
        GossipOptimizer([q], W, algorithm="demuon", lr=0.1, momentum=1.0)


def test_optimizer_state_is_weights_only_safe(tmp_path):
    W = torch.ones(1, 1)
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = GossipOptimizer([p], W, algorithm="demuon", lr=0.02, momentum=0.8, msgn=1)
    p.grad = torch.randn(3, 4)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert set(loaded["state"][0]) == {"momentum_buffer", "tracker"}
    assert loaded["param_groups"][0]["algorithm"] == "demuon" and loaded["param_groups"][0]["msgn"] == 1


# --------------------------------------------------------------------------------------
# Real processes (gloo, 4 workers)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["ring", "exp"])
def test_real_gossip_messages_go_to_neighbours_only(real_run, topology):
    W = mixing_matrix(topology, WORLD)
    X = _vectors()
    calls = 3
    pairs: Counter = Counter()
    for rank, res in enumerate(real_run):
        torch.testing.assert_close(res[f"mixed_{topology}"], W[rank] @ X, rtol=0, atol=1e-12)
        assert res[f"collectives_{topology}"] == []                      # no all-reduce
        peers = neighbours(topology, WORLD, rank)
        log = Counter((kind, peer) for kind, peer, numel in res[f"p2p_{topology}"] if numel == DIM)
        assert len(res[f"p2p_{topology}"]) == sum(log.values())
        assert log == Counter({**{("send", k): calls for k in peers.send_to},
                               **{("recv", j): calls for j in peers.recv_from}})
        for kind, peer in log.elements():
            pairs[(rank, peer) if kind == "send" else (peer, rank), kind] += 1
        nbytes = DIM * 8
        assert res[f"counter_{topology}"] == {
            "gossip": [calls * len(peers.send_to), calls * len(peers.send_to) * nbytes],
            "gossip_recv": [calls * len(peers.recv_from), calls * len(peers.recv_from) * nbytes]}
    # every message sent from i to k was received by k from i, and only on graph edges
    edges = {(j, i) for i in range(WORLD) for j in range(WORLD) if i != j and W[i, j] > 0}
    assert {pair for pair, _ in pairs} == edges
    for pair in edges:
        assert pairs[pair, "send"] == pairs[pair, "recv"] == calls
    expected_degree = {"ring": 2, "exp": 2}[topology]
    assert all(len(neighbours(topology, WORLD, r).send_to) == expected_degree for r in range(WORLD))


def test_real_complete_graph_equals_all_reduce_average(real_run):
    X = _vectors()
    for res in real_run:
        torch.testing.assert_close(res["complete_p2p"], X.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(res["complete_p2p"], res["all_reduce_mean"], rtol=0, atol=1e-12)
        torch.testing.assert_close(res["complete_all_reduce"], res["all_reduce_mean"], rtol=0, atol=0)
        assert res["collectives_complete"] == ["all_reduce"]
        assert res["counter_complete"] == {"gossip": [1, DIM * 8]}
        assert res["counter_complete_p2p"]["gossip"] == [WORLD - 1, (WORLD - 1) * DIM * 8]
    # point-to-point on the complete graph: every rank computes the bitwise same average
    assert all(torch.equal(real_run[0]["complete_p2p"], res["complete_p2p"]) for res in real_run)


def test_real_consensus_distance_shrinks_under_mixing(real_run):
    W = mixing_matrix("ring", WORLD)
    sigma2 = float(torch.linalg.svdvals(W)[1])
    traces = torch.stack([res["ring_trace"] for res in real_run], dim=1)   # [ROUNDS + 1, WORLD, DIM]
    X = _vectors()
    dists = []
    for t in range(ROUNDS + 1):
        torch.testing.assert_close(traces[t], torch.linalg.matrix_power(W, t) @ X, rtol=0, atol=1e-12)
        dists.append(consensus_distance(traces[t]))
        for res in real_run:
            assert res["ring_distance"][t] == pytest.approx(dists[t], rel=1e-9, abs=1e-15)
    for before, after in zip(dists, dists[1:]):
        assert after < before and after <= sigma2 ** 2 * before * (1 + 1e-9)
    assert dists[-1] < 0.05 * dists[0]


def _simulate(algorithm: str, mode: int, W: torch.Tensor) -> dict[str, torch.Tensor]:
    """The update rule on stacked [WORLD, ...] tensors with dense W (no communication)."""
    c = _targets()
    X = {k: v.expand(WORLD, *v.shape).clone() for k, v in _initial_params().items()}
    M = {k: torch.zeros_like(v) for k, v in X.items()}
    V = {k: torch.zeros_like(v) for k, v in X.items()}

    def mix(T):
        return torch.einsum("ij,j...->i...", W, T)

    for _ in range(OPT_STEPS):
        G = {k: X[k] - c[k] for k in X}
        new_M = {k: MOMENTUM * M[k] + (1 - MOMENTUM) * G[k] for k in X}
        if algorithm == "dsgdm":
            X = {k: mix(X[k] - LR * new_M[k]) for k in X}
        else:
            V = {k: mix(V[k] + new_M[k] - M[k]) for k in X}
            X = {k: mix(X[k] - LR * torch.stack([msgn(V[k][i], mode) for i in range(WORLD)])) for k in X}
        M = new_M
    return X


@pytest.mark.parametrize("algorithm,mode,topology", [("dsgdm", 0, "ring"), ("demuon", 2, "ring"),
                                                     ("demuon", 1, "exp"), ("demuon", 0, "exp")])
def test_real_update_rules_match_the_stacked_simulation(real_run, algorithm, mode, topology):
    W = mixing_matrix(topology, WORLD)
    expected = _simulate(algorithm, mode, W)
    key = f"{algorithm}_{mode}_{topology}"
    kinds = ["gossip"] if algorithm == "dsgdm" else ["gossip", "gossip_tracker"]
    numel = 3 * 5 + 5
    for rank, res in enumerate(real_run):
        for name in ("weight", "bias"):
            tol = 1e-5 if mode == 1 else 1e-10          # NS runs in float32
            torch.testing.assert_close(res[f"opt_{key}"][name], expected[name][rank], rtol=0, atol=tol)
        peers = neighbours(topology, WORLD, rank)
        expected_counts = {}
        for kind in kinds:
            expected_counts[kind] = [OPT_STEPS * len(peers.send_to), OPT_STEPS * len(peers.send_to) * numel * 8]
            expected_counts[kind + "_recv"] = [OPT_STEPS * len(peers.recv_from),
                                               OPT_STEPS * len(peers.recv_from) * numel * 8]
        assert res[f"opt_counter_{key}"] == expected_counts
        if algorithm == "demuon":   # a save / load(weights_only=True) after 2 steps changes nothing
            for name in ("weight", "bias"):
                assert torch.equal(res[f"opt_resumed_{key}"][name], res[f"opt_{key}"][name])
    # the workers still differ: no hidden global averaging
    finals = torch.stack([res[f"opt_{key}"]["weight"] for res in real_run])
    assert consensus_distance(finals) > 0


def test_real_strategy_scores_the_average_and_keeps_each_worker_model(real_run):
    assert STRATEGIES["gossip"].models_differ
    mean = sum(range(WORLD)) / WORLD
    for rank, res in enumerate(real_run):
        # schema defaults: demuon, msgn 1, momentum 0.8
        assert res["strategy_optimizer"] == ("GossipOptimizer", "demuon", 1, 0.8, True)
        name, weight, bias = res["scored"]
        assert name == "average"
        assert torch.allclose(weight, torch.full((2, 3), mean)) and torch.allclose(bias, torch.full((2,), -mean))
        assert torch.equal(res["after_scored"][0], torch.full((2, 3), float(rank)))   # restored
        assert res["scored_counter"] == {"eval": [1, (6 + 2) * 4]}


# --------------------------------------------------------------------------------------
# The trainer with the gossip strategy (torchrun, 4 gloo workers)
# --------------------------------------------------------------------------------------


def test_trainer_with_gossip_on_exp_graph(tmp_path, shakespeare_char_meta):
    """End to end: 4 workers of the real trainer on the exponential graph, DeMuon with exact
    msgn. Workers differ (consensus_distance > 0), evaluation reports the averaged model and the
    workers' own val_loss, and the only training messages are point-to-point gossip: per step and
    worker 2 sends (hops 1 and 2) of the parameters and 2 of the trackers."""
    steps = 8
    cfg = {"study": "g", "stage": "A", "variant": "v", "seed": 5, "run_id": 0, "dataset": "shakespeare_char",
           "model": {"preset": "nanogpt-small", "n_layer": 1},
           "train": {"batch_size": 8, "num_iterations": steps, "lr": 0.02, "schedule": "inv_sqrt", "grad_clip": 0,
                     "val_loss_every": 4, "log_every": 4, "val_tokens": 256, "device": "cpu",
                     "strategy": {"name": "gossip", "topology": "exp", "algorithm": "demuon", "msgn": 2}}}
    repo = Path(__file__).resolve().parents[2]
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nnodes", "1", "--nproc_per_node",
           str(WORLD), "-m", "workflow.train", "--run-config", json.dumps(cfg), "--out-dir", str(tmp_path / "run"),
           "--meta", str(shakespeare_char_meta), "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["val_loss"] is not None]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert evals[0]["consensus_distance"] == 0.0                    # same initial model everywhere
    assert all(r["consensus_distance"] > 0 for r in evals[1:])      # then the workers differ
    assert all(r["val_loss_workers"] is not None and r["val_loss_workers"] != r["val_loss"] for r in evals[1:])
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert rows[-1]["lr"] == pytest.approx(0.02 / math.sqrt(steps))  # inv_sqrt at the last step (t = 8)
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["scored_model"] == "average"
    comm = result["communication"]
    param_bytes = result["num_parameters"] * 4
    assert set(comm["bytes_by_kind"]) == {"gossip", "gossip_recv", "gossip_tracker", "gossip_tracker_recv",
                                          "eval", "metrics"}
    for kind in ("gossip", "gossip_tracker"):
        assert comm["calls_by_kind"][kind] == steps * WORLD * 2
        assert comm["bytes_by_kind"][kind] == steps * WORLD * 2 * param_bytes
