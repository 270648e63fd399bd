"""Tokenizer benchmarks (not tests): throughput, parallel speed-up, peak memory.

    .venv/bin/python bench/bench_tokenize.py [--mb 100] [--workers 2] [--json out.json]

1. Byte level: MB/s of the tokenizer + writer alone (``byte-tokenizer``, page cache, no
   fsync), and of ``prepare("enwik8")`` on ``--mb`` MB of real
   Wikipedia XML (the shared sample repeated) from a stored (uncompressed) zip, and from a
   deflated zip (adds zlib inflate, as the real enwik8.zip). Target >= 500 MB/s.
2. GPT-2 BPE: the Wikipedia sample's pages with ``parallel_encode`` on ``--workers``
   processes (pool start included) vs a single-thread per-document
   ``encode_ordinary`` loop, measured in the same run. Target speed-up >= 1.8x on 2 cores.
3. Peak memory (max RSS of the process and of its largest child) of every tokenizer on
   ``--mb`` MB, each in a fresh subprocess: byte (enwik8), char (shakespeare_char), GPT-2
   (shakespeare_gpt2, one process; openwebtext from JSON lines, worker processes) and
   charset (custom_text). Target < 1 GB each.

Needs the shared data (``$STAGERUN_SHARED_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import argparse
import bz2
import html
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.tokenize import parallel_encode, prepare  # noqa: E402
from workflow.tokenizers import gpt2_encoding  # noqa: E402

SHARED = Path(os.environ.get("STAGERUN_SHARED_DATA") or REPO.parent / "shared" / "data")
RANKS = SHARED / "gpt2" / "r50k_base.tiktoken"


def wiki_xml() -> bytes:
    return bz2.decompress((SHARED / "wikipedia" / "enwiki-sample.xml.bz2").read_bytes())


def wiki_pages() -> list[str]:
    texts = re.findall(rb"<text[^>]*>(.*?)</text>", wiki_xml(), flags=re.S)
    return [html.unescape(t.decode("utf-8")) for t in texts if t.strip()]


def corpus(n_bytes: int) -> bytes:
    """``n_bytes`` of real text: the Wikipedia sample repeated, cut at a line end."""
    base = wiki_xml()
    data = (base * (n_bytes // len(base) + 1))[:n_bytes]
    return data[:data.rfind(b"\n") + 1]


def rss_mb() -> tuple[float, float]:
    """(peak RSS of this process, peak RSS of its largest finished child) in MB.

    Own peak from /proc/self/status VmHWM (ru_maxrss would keep the peak of the forked
    bench parent across exec); children from RUSAGE_CHILDREN (forked workers; pages
    shared with the parent at fork count in both)."""
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    return hwm_kib / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# ------------------------------------------------------------------------------ children

def child(kind: str, work: Path, workers: int) -> dict:
    """Run one tokenizer on the prepared inputs in ``work``; returns seconds, MB and RSS."""
    out = work / f"out-{kind}"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    if kind in ("byte-stored", "byte-deflated"):
        raw = work / kind
        size = zipfile.ZipFile(raw / "enwik8.zip").getinfo("enwik8").file_size
        prepare("enwik8", raw, out, {"expected_bytes": None})
    elif kind == "byte-tokenizer":  # ByteTokenizer + SplitWriters only: no zip, no hash, no fsync
        from workflow.tokenize import SplitWriters
        from workflow.tokenizers import ByteTokenizer
        import workflow.io as wio
        wio.os.fsync = lambda fd: None  # measure tokenization, not the disk
        path = work / "text" / "input.txt"
        size = path.stat().st_size
        tok = ByteTokenizer()
        start = time.perf_counter()
        with open(path, "rb") as fin, SplitWriters(out, ("train",), "uint8", 256) as w:
            while chunk := fin.read(16 << 20):
                w.write("train", tok.encode(chunk))
    elif kind == "char":
        size = (work / "text" / "input.txt").stat().st_size
        prepare("shakespeare_char", work / "text", out)
    elif kind == "gpt2":
        size = (work / "text" / "input.txt").stat().st_size
        prepare("shakespeare_gpt2", work / "text", out, tokenizer_file=str(RANKS))
    elif kind == "gpt2-openwebtext":
        size = (work / "owt.jsonl").stat().st_size
        prepare("openwebtext", work, out, {"data_files": str(work / "owt.jsonl"), "val_fraction": 0.0005},
                tokenizer_file=str(RANKS), workers=workers)
    elif kind == "charset":
        size = (work / "custom" / "a.txt").stat().st_size
        prepare("custom_text", work / "custom", out, {"folder": str(work / "custom")})
    else:
        raise SystemExit(f"unknown kind {kind}")
    seconds = time.perf_counter() - start
    self_mb, child_mb = rss_mb()
    return {"kind": kind, "mb": size / 1e6, "seconds": seconds, "mb_per_s": size / 1e6 / seconds,
            "peak_rss_mb": self_mb, "peak_child_rss_mb": child_mb}


def make_inputs(work: Path, n_bytes: int) -> None:
    data = corpus(n_bytes)
    for kind, method in (("byte-stored", zipfile.ZIP_STORED), ("byte-deflated", zipfile.ZIP_DEFLATED)):
        (work / kind).mkdir()
        with zipfile.ZipFile(work / kind / "enwik8.zip", "w", compression=method, compresslevel=1) as zf:
            zf.writestr("enwik8", data)
    (work / "text").mkdir()
    text = data.decode("utf-8", errors="ignore")
    (work / "text" / "input.txt").write_text(text, encoding="utf-8")
    pages = wiki_pages()
    with open(work / "owt.jsonl", "w", encoding="utf-8") as handle:
        written = 0
        while written < n_bytes:
            for page in pages:
                line = json.dumps({"text": page}) + "\n"
                handle.write(line)
                written += len(line)
    (work / "custom").mkdir()
    rng = random.Random(0)
    with open(work / "custom" / "a.txt", "w") as handle:
        written = 0
        while written < n_bytes:
            a, b = rng.randrange(10 ** 6), rng.randrange(10 ** 6)
            doc = f"{a}+{b}\nH{a + b}.\nB{a - b}L\n\n"
            handle.write(doc)
            written += len(doc)


def run_child(kind: str, work: Path, workers: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), "--workers", str(workers)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ speed-up

def bench_parallel(workers: int, repeats: int = 3) -> dict:
    docs = wiki_pages()
    enc = gpt2_encoding(RANKS)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    serial, parallel = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        n_serial = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
        serial.append(time.perf_counter() - start)
        start = time.perf_counter()
        batches = (docs[i:i + 4] for i in range(0, len(docs), 4))
        n_parallel = sum(a.size for a in parallel_encode(batches, str(RANKS), workers))
        parallel.append(time.perf_counter() - start)
        assert n_serial == n_parallel, (n_serial, n_parallel)
    s, p = min(serial), min(parallel)
    return {"docs": len(docs), "mb": mb, "tokens": n_serial, "serial_s": s, "parallel_s": p,
            "serial_mb_per_s": mb / s, "parallel_mb_per_s": mb / p, "speedup": s / p, "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.work), args.workers)))
        return
    results = {"cpus": os.cpu_count(), "parallel_gpt2": bench_parallel(args.workers)}
    par = results["parallel_gpt2"]
    print(f"GPT-2 BPE, {par['docs']} Wikipedia pages ({par['mb']:.1f} MB): serial {par['serial_mb_per_s']:.1f} MB/s, "
          f"{par['workers']} workers {par['parallel_mb_per_s']:.1f} MB/s, speed-up {par['speedup']:.2f}x "
          f"(target >= 1.8x)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tok-") as tmp:
        work = Path(tmp)
        make_inputs(work, int(args.mb * 1e6))
        results["tokenizers"] = []
        for kind in ("byte-tokenizer", "byte-stored", "byte-deflated", "char", "charset", "gpt2", "gpt2-openwebtext"):
            r = run_child(kind, work, args.workers)
            results["tokenizers"].append(r)
            print(f"{kind:17s} {r['mb']:7.1f} MB {r['seconds']:7.2f} s {r['mb_per_s']:8.1f} MB/s  "
                  f"peak RSS {r['peak_rss_mb']:7.1f} MB (largest child {r['peak_child_rss_mb']:.1f} MB)", flush=True)
    print("targets: byte-tokenizer >= 500 MB/s; peak RSS < 1024 MB per tokenizer")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
