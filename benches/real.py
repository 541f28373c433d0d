#!/usr/bin/env python3
"""Sampling on a real model against transformers `generate` and against the machine's floor.

  python benches/real.py [--model runs/real/gemma3-270m] [--rounds 2] [--threads 2]

The model is a converted GGUF (scripts/real_run.sh converts Gemma-3-270M and SmolLM2-135M into
runs/real/). For batch 1 and 8, 16-token prompts and 128 new tokens (greedy, no early stop),
the two sides run one after the other, `--rounds` times: `cargo bench --bench step -- sample
--model DIR` and benches/python/step.py sample --model DIR (both float32, same thread count).

The floor of one decode step of batch B: every weight is read once (the head over the whole
vocabulary included), so time >= max(weight bytes / memory bandwidth, 2 * params * B / matmul
throughput), with the bandwidth (a streaming sum over 1 GiB) and the matmul throughput (float32
GEMM) measured here with torch on the same threads. Prints a Markdown table for BENCHMARKS.md.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
from compare import bench_binary, run  # noqa: E402


def floor_rates(threads):
    import torch
    torch.set_num_threads(threads)
    x = torch.ones(1 << 28)  # 1 GiB of float32
    x.sum()
    bw = []
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        bw.append(x.numel() * 4 / (time.perf_counter() - t0))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    fl = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        fl.append(2 * 2048 ** 3 / (time.perf_counter() - t0))
    return max(bw), max(fl)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/real/gemma3-270m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()
    model = str((ROOT / a.model).resolve())
    rust = bench_binary("step")
    bw, flops = floor_rates(a.threads)
    print(f"measured: streaming read {bw / 1e9:.1f} GB/s, float32 GEMM {flops / 1e9:.0f} GFLOP/s", file=sys.stderr)
    rows = []
    for batch in (1, 8):
        common = ["sample", "--model", model, "--batch", str(batch), "--new-tokens", str(a.new_tokens), "--threads", str(a.threads), "--reps", "2"]
        sides = {"tokbridge": [], "transformers": []}
        params = None
        for _ in range(a.rounds):
            r = run([rust, *common])
            sides["tokbridge"].append(r["median_s"])
            params = r["params"]
            p = run([sys.executable, "benches/python/step.py", *common])
            sides["transformers"].append(p["median_s"])
        steps = a.new_tokens
        per_step = {k: statistics.median(v) / steps for k, v in sides.items()}
        floor = max(params * 4 / bw, 2 * params * batch / flops)
        rows.append((batch, params, per_step, floor))
    print("| batch | tokbridge ms/token step | transformers ms/token step | transformers / tokbridge | floor ms | tokbridge / floor |")
    print("|---|---|---|---|---|---|")
    for batch, params, per, floor in rows:
        t, h = per["tokbridge"] * 1e3, per["transformers"] * 1e3
        print(f"| {batch} | {t:.1f} | {h:.1f} | {h / t:.2f}x | {floor * 1e3:.1f} | {t / (floor * 1e3):.2f}x |")
    print(f"\n{params / 1e6:.1f}M parameters; floor from {bw / 1e9:.1f} GB/s and {flops / 1e9:.0f} GFLOP/s measured here")


if __name__ == "__main__":
    main()
