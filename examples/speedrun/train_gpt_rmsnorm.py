"""train_gpt.py with RMSNorm instead of LayerNorm (a modified copy; config/studies/speedrun_script.yaml)."""

import glob
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Hyperparameters:
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"
    num_iterations: int = int(os.environ.get("STAGE_NUM_ITERATIONS", 5100))
    lr: float = float(os.environ.get("STAGE_LR", 1.8e-3))
    batch_size: int = int(os.environ.get("STAGE_BATCH_SIZE", 512))       # global sequences per step
    warmdown_iters: int = int(os.environ.get("STAGE_WARMDOWN_ITERS", 1450))
    val_loss_every: int = int(os.environ.get("STAGE_VAL_LOSS_EVERY", 125))
    val_tokens: int = int(os.environ.get("STAGE_VAL_TOKENS", 10485760))
    seq_len: int = 1024
    seed: int = int(os.environ.get("STAGERUN_SEED", 0))


args = Hyperparameters()
for arg in sys.argv[1:]:
    key, _, value = arg.removeprefix("--").partition("=")
    setattr(args, key, type(getattr(args, key))(value))


# ---- model: GPT-2 small (pre-norm, tied embeddings) ----
class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab=50304, d=768, layers=12, heads=12, seq_len=1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.RMSNorm(d)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# ---- data: modded-nanogpt shards ----
def load_shard(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1, f"{path}: not a modded-nanogpt shard"
    return np.memmap(path, dtype=np.uint16, mode="r", offset=1024, shape=(int(header[2]),))


class Loader:
    def __init__(self, pattern, batch, seq_len, rank, world):
        self.files = sorted(glob.glob(pattern))
        assert self.files, f"no shard matches {pattern}"
        self.batch, self.seq_len, self.rank, self.world = batch, seq_len, rank, world
        self.shard, self.pos, self.tokens = 0, 0, load_shard(self.files[0])

    def next(self, device):
        span = self.batch * self.seq_len
        if self.pos + span * self.world + 1 > len(self.tokens):
            self.shard = (self.shard + 1) % len(self.files)
            self.pos, self.tokens = 0, load_shard(self.files[self.shard])
        start = self.pos + self.rank * span
        buf = torch.from_numpy(self.tokens[start:start + span + 1].astype(np.int64))
        self.pos += span * self.world
        x, y = buf[:-1].view(self.batch, self.seq_len), buf[1:].view(self.batch, self.seq_len)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def main():
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
    torch.manual_seed(args.seed)
    model = GPT().to(device)
    model = torch.nn.parallel.DistributedDataParallel(torch.compile(model), device_ids=[local])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    per_rank = args.batch_size // world
    micro = min(per_rank, 64)
    accum = per_rank // micro
    train = Loader(args.train_files, micro, args.seq_len, rank, world)
    n = args.num_iterations

    def lr_scale(step):  # trapezoidal: constant, then linear warmdown to 0
        return 1.0 if step < n - args.warmdown_iters else max(0.0, (n - step) / args.warmdown_iters)

    torch.cuda.synchronize()
    train_ms, t0 = 0.0, time.perf_counter()
    for step in range(n + 1):
        last = step == n
        if last or (args.val_loss_every and step % args.val_loss_every == 0):
            torch.cuda.synchronize()
            train_ms += 1000 * (time.perf_counter() - t0)
            model.eval()
            val = Loader(args.val_files, micro, args.seq_len, rank, world)
            steps = args.val_tokens // (micro * args.seq_len * world)
            loss = torch.zeros((), device=device)
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                for _ in range(steps):
                    loss += model(*val.next(device)) / steps
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            if rank == 0:
                print(f"step:{step}/{n} val_loss:{loss.item():.4f} train_time:{train_ms:.0f}ms "
                      f"step_avg:{train_ms / max(step, 1):.2f}ms", flush=True)
            model.train()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        if last:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_scale(step)
        for i in range(accum):
            x, y = train.next(device)
            model.require_backward_grad_sync = i == accum - 1
            with torch.autocast("cuda", torch.bfloat16):
                loss = model(x, y)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == 0 and step % 10 == 0:
            elapsed = train_ms + 1000 * (time.perf_counter() - t0)
            print(f"step:{step + 1}/{n} train_loss:{loss.item():.4f} train_time:{elapsed:.0f}ms "
                  f"step_avg:{elapsed / (step + 1):.2f}ms", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
