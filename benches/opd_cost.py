#!/usr/bin/env python3
"""The cost of one cross-tokenizer OPD step as responses grow: recipes/opd/tiny.yaml (the
fixture llama student and qwen3 teacher, 8 prompts per step) with every rollout sampled to
exactly N tokens (`rollout.ignore_eos`), N = 256, 512, 1024, 2048. Reports the median wall
time of steps 2-4 (step 1 warms up) and the peak resident memory. tokbridge only.

  python benches/opd_cost.py [--bin target/release/tokbridge]
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/tokbridge"))
    a = ap.parse_args()
    print("| response tokens | student tokens per step | seconds per step (median) | tokens/s | peak RSS |")
    print("|---|---|---|---|---|")
    for n in [256, 512, 1024, 2048]:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cmd = [a.bin, "run", "recipes/opd/tiny.yaml", f"output_dir={run}", f"rollout.max_new_tokens={n}",
                   "rollout.ignore_eos=true", "training.steps=4", "training.checkpoint_every=null", "eval=null",
                   "logging.progress=false", "logging.tensorboard=false", "teacher_max_length=16384"]
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
            rows = [json.loads(l) for l in open(run / "metrics.jsonl") if "opd/response_length" in l]
            times = [b["time_s"] - a_["time_s"] for a_, b in zip(rows, rows[1:])]
            med = statistics.median(times)
            tokens = rows[-1]["opd/response_length"] * 8
            peak = max(r.get("memory/peak_gib", 0) for r in rows)
            print(f"| {n} | {tokens:.0f} | {med:.2f} | {tokens / med:,.0f} | {peak:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
