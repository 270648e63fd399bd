"""A tiny nanoGPT-style training script (the example study's baseline): a bigram model on the
dataset in nanoGPT's layout, trained with SGD in numpy, on a CPU in seconds.

    python train.py --dataset=DIR --max_iters=200 --lr=20 --batch_size=32 --seed=1337 --out_dir=OUT

It keeps the script contract of README "Your own training script": settings from ``--key=value``
arguments (nanoGPT's configurator style), data from ``DIR/train.bin``, ``DIR/val.bin`` (uint16)
and ``DIR/meta.pkl`` (vocab_size), nanoGPT's log lines (``step N: train loss X, val loss Y`` at
each evaluation, ``iter N: loss X, time Tms, mfu M%``), and on SIGTERM / SIGUSR1 a checkpoint in
``$STAGERUN_CHECKPOINT_DIR`` and exit 75; started again, it resumes from the checkpoint.
"""

import os
import pickle
import signal
import sys
import time

import numpy as np

import model

# ---- settings (nanoGPT style: defaults here, --key=value overrides) ----
dataset = "data"
out_dir = "out"
max_iters = 200
eval_interval = 50
eval_iters = 20
log_interval = 10
batch_size = 32
block_size = 64
lr = 20.0
seed = 1337
for arg in sys.argv[1:]:
    key, _, value = arg.removeprefix("--").partition("=")
    if key not in globals() or not _:
        sys.exit(f"unknown or malformed argument {arg!r}")
    globals()[key] = type(globals()[key])(value)

checkpoint_dir = os.environ.get("STAGERUN_CHECKPOINT_DIR") or os.path.join(out_dir, "checkpoint")
checkpoint = os.path.join(checkpoint_dir, "ckpt.npz")
stop = []
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
signal.signal(signal.SIGUSR1, lambda s, f: stop.append(s))

with open(os.path.join(dataset, "meta.pkl"), "rb") as f:
    vocab_size = pickle.load(f)["vocab_size"]
data = {split: np.memmap(os.path.join(dataset, f"{split}.bin"), dtype=np.uint16, mode="r") for split in ("train", "val")}


def get_batch(split, rng):
    d = data[split]
    starts = rng.integers(0, len(d) - block_size - 1, size=batch_size)
    x = np.stack([d[i:i + block_size] for i in starts]).astype(np.int64).ravel()
    y = np.stack([d[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64).ravel()
    return x, y


def estimate_loss(W):
    eval_rng = np.random.default_rng(0)  # the same evaluation batches for every run
    return {split: float(np.mean([model.loss(W, *get_batch(split, eval_rng)) for _ in range(eval_iters)]))
            for split in ("train", "val")}


rng = np.random.default_rng(seed)
W = model.init(vocab_size, rng)
step = 0
if os.path.exists(checkpoint):
    saved = np.load(checkpoint, allow_pickle=False)
    W, step = saved["W"], int(saved["step"])
    rng.bit_generator.state = pickle.loads(saved["rng"].tobytes())
    print(f"resuming from step {step}", flush=True)

while True:
    if step % eval_interval == 0 or step == max_iters:
        losses = estimate_loss(W)
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
    if step == max_iters:
        break
    if stop:
        os.makedirs(checkpoint_dir, exist_ok=True)
        tmp = checkpoint + ".tmp.npz"
        np.savez(tmp, W=W, step=step, rng=np.frombuffer(pickle.dumps(rng.bit_generator.state), dtype=np.uint8))
        os.replace(tmp, checkpoint)
        print(f"signal {stop[0]}: checkpoint at step {step}, exiting 75", flush=True)
        sys.exit(75)
    t0 = time.perf_counter()
    x, y = get_batch("train", rng)
    loss, grad = model.loss_and_grad(W, x, y)
    W -= lr * grad
    if step % log_interval == 0:
        print(f"iter {step}: loss {loss:.4f}, time {(time.perf_counter() - t0) * 1000:.2f}ms, mfu -100.00%", flush=True)
    step += 1
