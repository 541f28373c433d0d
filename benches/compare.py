#!/usr/bin/env python3
"""tokbridge against the Python stack on the same work, in one run, alternating sides.

  python benches/compare.py [--rounds 3] [--threads 2]

Builds the Rust benchmarks (`cargo bench --no-run`), then for each comparison runs the Rust
side and the Python side one after the other, `--rounds` times, and prints for each side the
median over rounds of its per-run median, the spread (min-max of the per-run medians), the
peak resident memory, and the ratio Python time / tokbridge time:

  1. training step (forward, backward, AdamW) of a ~30M llama, batch 8 x 256, float32:
     benches/step.rs train vs benches/python/step.py train (transformers + torch.optim.AdamW);
     `train_fused`: the same against AdamW(fused=True), transformers Trainer's default optimizer
     on torch >= 2.8 (tokbridge runs that kernel itself);
  2. batched KV-cache sampling, 8 prompts x 128 new tokens: step.rs sample vs `generate`;
  3. DPCA on ~1k-token responses between the real Qwen3 and Llama 3 tokenizers: benches/align.rs
     --real vs benches/python/dpca_ref.py (the paper's decode-and-compare loop);
  4. one on-policy cross-tokenizer step with the GOLD hybrid loss on the fixture models:
     `tokbridge run recipes/opd/tiny.yaml loss=gold_hybrid` vs TRL's GOLDTrainer
     (benches/python/gold_step.py).

The Python side needs benches/python/requirements.txt; the real tokenizers come from
scripts/assets.py. Prints a Markdown table for BENCHMARKS.md.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_binary(name):
    out = subprocess.run(["cargo", "bench", "--no-run", "--message-format=json", "--bench", name], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == name and msg.get("executable"):
            return msg["executable"]
    sys.exit(f"no executable for bench {name}")


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def opd_step(bin_path):
    """tokbridge's side of the GOLD comparison: recipes/opd/tiny.yaml with loss gold_hybrid."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [bin_path, "run", "recipes/opd/tiny.yaml", f"output_dir={run_dir}", "loss=gold_hybrid", "training.steps=6",
               "training.checkpoint_every=null", "eval=null", "logging.progress=false", "logging.tensorboard=false"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl") if "opd/response_length" in l]
    steps = [b["time_s"] - a["time_s"] for a, b in zip(rows, rows[1:])]
    return {"median_s": statistics.median(steps), "peak_rss_gib": max(r.get("memory/peak_gib", 0) for r in rows)}


def asset(name):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/assets.py"), "tokenizer", name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=["train", "sample", "dpca", "opd"])
    a = ap.parse_args()
    step, align = bench_binary("step"), bench_binary("align")
    th = ["--threads", str(a.threads)]
    qwen, llama = asset("qwen3"), asset("llama3")
    cases = {
        "train": ("training step, llama ~30M, batch 8 x 256, f32", [step, "train", *th, "--reps", "6"], [sys.executable, "benches/python/step.py", "train", *th, "--reps", "6"]),
        "train_fused": ("training step as above, Python with AdamW(fused=True) as Trainer uses", [step, "train", *th, "--reps", "6"], [sys.executable, "benches/python/step.py", "train", "--fused", *th, "--reps", "6"]),
        "sample": ("sampling, 8 prompts x 128 new tokens, KV cache", [step, "sample", *th], [sys.executable, "benches/python/step.py", "sample", *th]),
        "dpca": ("DPCA, ~1k-token responses, Qwen3 vs Llama 3 tokenizers", [align, "--real", qwen, llama], [sys.executable, "benches/python/dpca_ref.py", qwen, llama]),
        "opd": ("one on-policy GOLD-hybrid step, fixture llama <- qwen3, 8 prompts x 24 tokens", "opd", [sys.executable, "benches/python/gold_step.py", *th]),
    }
    rows = []
    for key in a.only:
        title, rust_cmd, py_cmd = cases[key]
        rust, py = [], []
        for r in range(a.rounds):
            rust.append(opd_step(str(ROOT / "target/release/tokbridge")) if rust_cmd == "opd" else run(rust_cmd))
            py.append(run(py_cmd))
            print(f"{key} round {r + 1}: tokbridge {rust[-1]['median_s']:.4f} s, python {py[-1]['median_s']:.4f} s", file=sys.stderr)
        med = lambda xs: statistics.median(x["median_s"] for x in xs)
        spread = lambda xs: f"{min(x['median_s'] for x in xs):.4g}–{max(x['median_s'] for x in xs):.4g}"
        ratios = [p["median_s"] / q["median_s"] for q, p in zip(rust, py)]
        mem = lambda xs: max((x.get("peak_rss_gib") or 0) for x in xs)
        rows.append((title, med(rust), spread(rust), mem(rust), med(py), spread(py), mem(py), statistics.median(ratios), min(ratios), max(ratios)))
    print("| work | tokbridge (s) | spread | peak RSS | Python (s) | spread | peak RSS | Python / tokbridge |")
    print("|---|---|---|---|---|---|---|---|")
    for t, rm, rs, rmem, pm, ps, pmem, ratio, lo, hi in rows:
        mem = lambda g: f"{g:.2f} GiB" if g else "–"
        print(f"| {t} | {rm:.4g} | {rs} | {mem(rmem)} | {pm:.4g} | {ps} | {mem(pmem)} | **{ratio:.2f}x** ({lo:.2f}–{hi:.2f}) |")


if __name__ == "__main__":
    main()
