#!/usr/bin/env python3
"""SFT with packed rows against padded batches (`data.packing`), on the real SmolLM2-135M.

Makes 256 GSM8K-shaped examples of varied length (a question of 1-6 sentences, an answer of
1-8 worked lines: 60-330 tokens), then runs `recipes/sft/tiny.yaml` on them with the model
converted from the GGUF that scripts/assets.py fetches, batch 8, max_length 1024, 6 steps,
padded and packed, and prints the losses, the padded share of the tokens, response tokens per
second (steps 2-6) and peak memory. Needs the release binary (cargo build --release).
    python benches/packing.py
"""
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "tokbridge"


def main():
    gguf = subprocess.run([sys.executable, ROOT / "scripts" / "assets.py", "gguf", "smollm2"], check=True, capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="tokbridge-packing-"))
    model = tmp / "smollm2"
    subprocess.run([BIN, "convert", "--gguf", gguf, "--out", model], check=True, capture_output=True)
    rng = random.Random(0)
    with open(tmp / "varied.jsonl", "w") as f:
        for _ in range(256):
            q = " ".join(f"Sam has {rng.randint(10, 999)} apples and gives {rng.randint(1, 9)} away." for _ in range(rng.randint(1, 6)))
            a = "\n".join(f"{rng.randint(10, 999)} - {rng.randint(1, 9)} = {rng.randint(10, 999)}." for _ in range(rng.randint(1, 8)))
            f.write(json.dumps({"prompt": q + " How many are left?", "response": f"{a}\n#### {rng.randint(1, 999)}"}) + "\n")
    print("| | loss steps 1-3 | padding | response tokens/s | peak GiB |\n|---|---|---|---|---|")
    for packing in ["false", "true"]:
        out = tmp / f"run-{packing}"
        subprocess.run([BIN, "run", "recipes/sft/tiny.yaml", f"output_dir={out}", "logging.progress=false", "eval=null", "data.eval=null",
                        f"model.path={model}", f"data.train={tmp / 'varied.jsonl'}", "data.max_length=1024", "training.steps=6",
                        "training.batch_size=8", "training.grad_accum=1", "training.checkpoint_every=null", "optimizer.lr=1e-5",
                        f"data.packing={packing}"], check=True, cwd=ROOT, capture_output=True)
        rows = [json.loads(line) for line in open(out / "metrics.jsonl") if "train/loss" in line]
        losses = " ".join(f"{r['train/loss']:.5f}" for r in rows[:3])
        padding = sum(r["train/padding"] for r in rows) / len(rows)
        speed = sum(r["train/tokens_per_s"] for r in rows[1:]) / len(rows[1:])
        print(f"| {'packed' if packing == 'true' else 'padded'} | {losses} | {padding:.3f} | {speed:.0f} | {rows[-1].get('memory/peak_gib', 0):.2f} |")


if __name__ == "__main__":
    main()
