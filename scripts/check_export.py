#!/usr/bin/env python3
"""Check an exported model directory with Hugging Face transformers itself: it must load with
AutoModelForCausalLM.from_pretrained and give the log-probs `tokbridge score` gives.

    python scripts/check_export.py EXPORT_DIR [TEXT]
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = Path(sys.argv[1])
text = sys.argv[2] if len(sys.argv) > 2 else "Tom has 1234 apples and buys 56 more."
binary = Path(__file__).resolve().parents[1] / "target" / "release" / "tokbridge"
ours = json.loads(subprocess.run([str(binary), "score", "--model", str(out), "--text", text, "--json"],
                                 check=True, capture_output=True, text=True).stdout)
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
ids = tok(text)["input_ids"]
assert ids == ours["ids"], f"token ids differ: {ids} vs {ours['ids']}"
with torch.no_grad():
    lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
ref = [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
worst = max(abs(a - b) for a, b in zip(ref, ours["logprobs"]))
print(f"{out}: transformers loads it ({type(model).__name__}); {len(ref)} log-probs, max |diff| {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)
