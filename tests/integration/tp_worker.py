"""Real tensor-parallel forward/backward of many block patterns in ONE torchrun launch.

Not a test module: tests/integration/test_tensor_parallel.py runs
``torchrun --nproc_per_node 2 tests/integration/tp_worker.py CASES_JSON OUT_DIR`` (gloo, CPU) and compares
what every rank saves (``OUT_DIR/rank{r}.pt``) with the simulated model it builds itself.

Per case (name -> model overrides): the full model is built with seed 0 on every rank, sharded
by ``parallelize_gpt`` on a (dp=1, tp=2) DeviceMesh, run forward and backward on a fixed batch
under ``TPCommMode`` (CommDebugMode + bytes), then ``tp_reduce_grads`` with clipping. Saved:
logits, loss, the rank's gradients (local shards), the global gradient norm, the model's
counters and TPCommMode's measured calls/bytes of the forward and the backward pass.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from workflow.model import GPT, TPCommMode, tp_comm_counts, tp_reduce_grads
from workflow.model.parallelize import parallelize_gpt
from workflow.model.spec import build_model_config

BATCH = dict(B=2, T=16, vocab=65, clip=0.05)


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, BATCH["vocab"], (BATCH["B"], BATCH["T"] + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def main() -> None:
    cases, out_dir = json.loads(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size() // 2, 2), mesh_dim_names=("dp", "tp"))
    x, y = batch()
    saved = {}
    for name, overrides in cases.items():
        cfg = build_model_config(overrides, BATCH["vocab"])
        torch.manual_seed(0)
        model = parallelize_gpt(GPT(cfg), mesh["tp"])
        with TPCommMode() as fwd:
            logits, loss = model(x, y)
        with TPCommMode() as bwd:
            loss.backward()
        counted = tp_comm_counts(model)
        norm = tp_reduce_grads(model, BATCH["clip"])
        saved[name] = {
            "logits": logits.detach(), "loss": loss.detach(), "norm": norm.detach(),
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()},
            "counted": counted, "grad_counted": tp_comm_counts(model)["grad"],
            "measured": {"forward": {"calls": fwd.calls["forward"] + fwd.calls["backward"],
                                     "bytes": fwd.bytes["forward"] + fwd.bytes["backward"]},
                         "backward": {"calls": bwd.calls["forward"] + bwd.calls["backward"],
                                      "bytes": bwd.bytes["forward"] + bwd.bytes["backward"]}},
            "num_parameters": model.num_parameters(),
        }
    torch.save(saved, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
