#!/usr/bin/env python3
"""Cost of candidate scoring (`dpca.candidates`) per OPD step against plain DPCA.

Runs `tokbridge run RECIPE` for a few steps with no candidates and with k = 8, 16, 32
(positions: all), alternating the settings round by round, and prints per setting the median
seconds per step (steps after the first), the seconds spent scoring candidates, the teacher
tokens per step (the budget's count, tree nodes included) and the ratios to plain DPCA.

    python benches/candidates.py                      # fixture pair (llama <- qwen3), CPU
    python benches/candidates.py --recipe recipes/real/smollm2-to-gemma3.yaml --steps 3 --rounds 1
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(binary, recipe, steps, k, out, extra):
    over = [f"output_dir={out}", f"training.steps={steps}", "eval=null", "logging.progress=false", "logging.tensorboard=false"]
    if k:
        over.append(f"dpca.candidates={{k: {k}}}")
    subprocess.run([binary, "run", recipe, *over, *extra], cwd=ROOT, check=True, capture_output=True)
    rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    budget = [r["budget/teacher_forward_tokens"] for r in rows]
    tokens = [b - a for a, b in zip(budget, budget[1:])]
    rows = rows[1:]  # the first step warms up
    total = [r["time/rollout_s"] + r["time/teacher_s"] + r["time/old_logprobs_s"] + r.get("time/candidates_s", 0) + r["time/update_s"] for r in rows]
    return statistics.median(total), statistics.median(r.get("time/candidates_s", 0) for r in rows), statistics.median(tokens), statistics.median(r.get("cand/positions", 0) for r in rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", default="recipes/opd/tiny.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ks", default="0,8,16,32")
    p.add_argument("--bin", default=str(ROOT / "target/release/tokbridge"))
    p.add_argument("extra", nargs="*", help="more overrides for every run")
    a = p.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    results = {k: [] for k in ks}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for k in ks:
                results[k].append(run(a.bin, a.recipe, a.steps, k, f"{tmp}/r{r}k{k}", a.extra))
    base = statistics.median(x[0] for x in results[ks[0]])
    base_tokens = statistics.median(x[2] for x in results[ks[0]])
    print(f"recipe {a.recipe}, {a.steps} steps x {a.rounds} rounds (medians; first step of each run left out)")
    print("| candidates | s per step | of which candidates | positions scored | teacher tokens per step | time vs plain | teacher tokens vs plain |")
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        step, cand, tokens, pos = (statistics.median(x[i] for x in results[k]) for i in range(4))
        print(f"| {'none (plain DPCA)' if k == 0 else f'k = {k}'} | {step:.3f} | {cand:.3f} | {pos:.0f} | {tokens:.0f} | {step / base:.2f}x | {tokens / base_tokens:.2f}x |")


if __name__ == "__main__":
    main()
