#!/usr/bin/env python3
"""Sampling on a real model against transformers `generate` and against the machine's floor;
with `--opd`, one OPD step on the real pair against TRL's GOLDTrainer and the floor.

  python benches/real.py [--model runs/real/gemma3-270m] [--rounds 2] [--threads 2]
  python benches/real.py --opd [--steps 4] [--rounds 2] [--dtype f32|bf16] [--loss dpca|gold_hybrid]

The model is a converted GGUF (scripts/real_run.sh converts Gemma-3-270M and SmolLM2-135M into
runs/real/). For batch 1 and 8, 16-token prompts and 128 new tokens (greedy, no early stop),
the two sides run one after the other, `--rounds` times: `cargo bench --bench step -- sample
--model DIR` and benches/python/step.py sample --model DIR (both float32, same thread count).

The floor of one decode step of batch B: every weight is read once (the head over the whole
vocabulary included), so time >= max(weight bytes / memory bandwidth, 2 * params * B / matmul
throughput), with the bandwidth (a streaming sum over 1 GiB) and the matmul throughput (float32
GEMM) measured here with torch on the same threads. Prints a Markdown table for BENCHMARKS.md.

`--opd`: recipes/real/smollm2-to-gemma3.yaml (SmolLM2-135M-Instruct teaching Gemma-3-270M, 8
prompts x 48 new tokens at temperature 1) for `--steps` steps against benches/python/gold_step.py
--real (TRL's GOLDTrainer, same models, prompts, batch, tokens and learning rate), alternating,
`--rounds` times; the median step after the first of each run. `--loss gold_hybrid` runs
tokbridge with GOLD's own loss (ULD over sorted distributions plus the matched-token term) for
the same work on both sides; the recipe's DPCA is the default. The floor of the step is the
work no implementation can skip, each part at the better of the measured rates: sampling (the
prompts' blocks and one head row each, then a decode step per new token, each reading every
weight), the teacher's forward over its tokens (its head at the response positions only), and
the update (forward and backward, 6 flops per weight and token, the head at the response
positions only; AdamW reading and writing 7 floats per parameter). Token counts are the run's
own (metrics.jsonl) and the prompts' mean length under the student's tokenizer.
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


def floor_rates(threads, dtype="f32"):
    import torch
    torch.set_num_threads(threads)
    x = torch.ones(1 << 28)  # 1 GiB of float32
    x.sum()
    bw = []
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        bw.append(x.numel() * 4 / (time.perf_counter() - t0))
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=kind), torch.randn(2048, 2048, dtype=kind)
    a @ b
    fl = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        fl.append(2 * 2048 ** 3 / (time.perf_counter() - t0))
    return max(bw), max(fl)


def sizes(model_dir):
    """(parameters, embedding parameters) of a Hugging Face checkpoint, tied head counted once."""
    from safetensors import safe_open
    total = 0
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        for k in f.keys():
            n = 1
            for d in f.get_slice(k).get_shape():
                n *= d
            total += n
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return total, cfg["vocab_size"] * cfg["hidden_size"]


def opd_floor(student, teacher, batch, prompt_len, new_tokens, teacher_tokens, bw, flops, weight_bytes=4):
    """Seconds no implementation of one OPD step can go below on this machine (see the docstring)."""
    (ps, es), (pt, et) = sizes(student), sizes(teacher)
    body_s, body_t = ps - es, pt - et
    work = lambda fl, bytes_: max(fl / flops, bytes_ / bw)
    prefill = work(2 * body_s * batch * prompt_len + 2 * es * batch, ps * weight_bytes)
    decode = (new_tokens - 1) * work(2 * ps * batch, ps * weight_bytes)
    responses = batch * new_tokens
    teacher_s = work(2 * body_t * teacher_tokens + 2 * et * responses, pt * weight_bytes)
    update = 6 * (body_s * batch * (prompt_len + new_tokens) + es * responses) / flops + 7 * 4 * ps / bw
    return {"sampling": prefill + decode, "teacher": teacher_s, "update": update, "total": prefill + decode + teacher_s + update}


def opd_main(a, bw, flops):
    import tempfile
    recipe = "recipes/real/smollm2-to-gemma3.yaml"
    student, teacher = ROOT / "runs/real/gemma3-270m", ROOT / "runs/real/smollm2"
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(student / "tokenizer.json"))
    prompts = [json.loads(l)["prompt"] for l in open(ROOT / "recipes/real/prompts.jsonl")]
    # The plain template: the text and a newline, after the BOS token.
    prompt_len = statistics.mean(len(tok.encode(p + "\n").ids) for p in prompts)
    ours, gold, parts, counts = [], [], [], []
    for r in range(a.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(ROOT / "target/release/tokbridge"), "run", recipe, f"output_dir={tmp}/run", f"training.steps={a.steps}", "eval=null",
                   "logging.progress=false", "logging.tensorboard=false", f"student.dtype={a.dtype}", f"teacher.dtype={a.dtype}", f"loss={a.loss}"]
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
            rows = [json.loads(l) for l in open(f"{tmp}/run/metrics.jsonl") if "time/rollout_s" in l]
        steps = [b["time_s"] - x["time_s"] for x, b in zip(rows, rows[1:])]
        ours.append(statistics.median(steps))
        parts.append({k: statistics.median(m[f"time/{k}_s"] for m in rows[1:]) for k in ("rollout", "teacher", "old_logprobs", "update")})
        counts.extend((m["opd/teacher_tokens"], m["opd/response_length"], m.get("memory/peak_gib", 0)) for m in rows)
        py = [sys.executable, "benches/python/gold_step.py", "--real", "--steps", str(a.steps), "--threads", str(a.threads)]
        if a.dtype == "bf16":
            py.append("--bf16")
        gold.append(run(py))
        print(f"opd round {r + 1}: tokbridge {ours[-1]:.2f} s {parts[-1]}, TRL GOLD {gold[-1]['median_s']:.2f} s", file=sys.stderr)
    teacher_tokens = statistics.mean(c[0] for c in counts)
    new_tokens = statistics.mean(c[1] for c in counts)
    floor = opd_floor(student, teacher, 8, prompt_len, new_tokens, teacher_tokens, bw, flops, 2 if a.dtype == "bf16" else 4)
    t, g = statistics.median(ours), statistics.median(x["median_s"] for x in gold)
    part = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    print("| dtype, loss | tokbridge s/step | rollout | teacher | old log-probs | update | peak | TRL GOLDTrainer s/step | peak | GOLD / tokbridge | floor s/step | tokbridge / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.dtype}, {a.loss} | {t:.2f} | {part['rollout']:.2f} | {part['teacher']:.2f} | {part['old_logprobs']:.2f} | {part['update']:.2f} | "
          f"{max(c[2] for c in counts):.2f} GiB | {g:.2f} | {max(x['peak_rss_gib'] for x in gold):.2f} GiB | **{g / t:.2f}x** | {floor['total']:.2f} | {t / floor['total']:.2f}x |")
    print(f"\nfloor: sampling {floor['sampling']:.2f} s, teacher {floor['teacher']:.2f} s, update {floor['update']:.2f} s; "
          f"prompt {prompt_len:.1f} student tokens, {new_tokens:.0f} new, {teacher_tokens:.0f} teacher tokens per step; "
          f"{bw / 1e9:.1f} GB/s, {flops / 1e9:.0f} GFLOP/s measured here")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/real/gemma3-270m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--opd", action="store_true")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--loss", default="dpca", choices=["dpca", "gold_hybrid"])
    a = ap.parse_args()
    model = str((ROOT / a.model).resolve())
    bw, flops = floor_rates(a.threads, a.dtype)
    print(f"measured: streaming read {bw / 1e9:.1f} GB/s, {a.dtype} GEMM {flops / 1e9:.0f} GFLOP/s", file=sys.stderr)
    if a.opd:
        return opd_main(a, bw, flops)
    rust = bench_binary("step")
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
