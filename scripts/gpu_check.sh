#!/usr/bin/env bash
# The GPU check of issue 8, for a machine with an NVIDIA GPU and PyTorch 2.11 installed (its
# libraries are what the binary runs on). It needs no Rust toolchain: build the binary elsewhere
# against the CUDA libtorch (`scripts/bootstrap --cuda`), carry it, and run
#
#   scripts/gpu_check.sh [BINARY]        (default target/release/tokbridge)
#
# It runs, in order, and writes a summary to $OUT_DIR/summary.md (default $OUT or /tmp):
#   1. parity of `tokbridge score` on every committed fixture: CUDA f32 within 1e-4 of CPU f32;
#      CUDA bf16 against transformers' bf16 on the same device (where Python has transformers),
#      no further from it than transformers' bf16 is from its own f32;
#   2. a training-step benchmark of a Llama-3.2-1B-shaped model in bf16 (recipes/gpu/*.yaml:
#      batch 8 × 1024 tokens, AdamW), with and without activation checkpointing, and LoRA r 16
#      on every projection: tokens/s, model FLOPs utilisation and peak memory;
#   3. a short cross-tokenizer OPD run (recipes/opd/tiny.yaml) with both models on the GPU in bf16;
#   4. decoding speed of the 1B-shaped model (bf16, KV cache), against transformers `generate`
#      when STEP_BENCH names the step benchmark's binary;
#   5. data parallelism: two ranks sharing the GPU over Gloo against one process;
#   6. NCCL: a group of one on GPU 0 against the process alone; with several GPUs, a rank per
#      GPU, the curve against one process and the scaling of the 1B-shaped training step;
#   7. ZeRO: the 1B-shaped training step on two ranks at stages 0, 1 and 2 (a GPU each where
#      there are two, else both sharing GPU 0 over Gloo): peak memory and state per rank.
# DEVICE=cpu SMALL=1 runs the same plumbing on a CPU at toy sizes (what CI-less checks use).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="$(realpath "${1:-target/release/tokbridge}")"
device="${DEVICE:-cuda}"
out="${OUT_DIR:-${OUT:-/tmp}/tokbridge-gpu-check}"
py="${PYTHON:-python3}"
peak_tflops="${PEAK_TFLOPS:-989}" # dense bf16 of an H100/H200 SXM
mkdir -p "$out"
summary="$out/summary.md"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

# The binary's rpath names the build machine's libtorch; elsewhere use Python's torch libraries.
if ldd "$bin" | grep -q "not found"; then
  site="$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
  extra="$site/torch/lib"
  if [ -d "$site/nvidia" ]; then
    extra="$extra:$(find "$site/nvidia" -maxdepth 3 -type d -name lib | paste -sd:)"
  fi
  export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ldd "$bin" | grep "not found"; then
  echo "gpu_check: the libraries above are missing" >&2
  exit 1
fi

say "# tokbridge GPU check ($(date -u +%F\ %T) UTC)"
say ""
say "- device: $device; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
say "- torch (Python): $("$py" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
say ""

# 1. Score parity. f32 on the device against f32 on the CPU (the CPU path matches transformers
# in tests/parity.rs): within 1e-4. bf16 differs from f32 by rounding, in transformers too
# (0.05-0.13 nats on these random fixtures), and GPU kernels round differently from CPU ones, so
# bf16 is held to transformers' own bf16 on the same device (where Python has transformers):
# no further from it than transformers' bf16 is from its own f32.
say "## 1. score parity (max |Δ log-prob| over each fixture's reference text)"
say ""
say "| fixture | $device f32 vs cpu f32 | $device bf16 vs transformers $device bf16 | transformers bf16 vs its f32 | $device bf16 vs cpu bf16 |"
say "|---|---|---|---|---|"
fail=0
for dir in tests/fixtures/models/*/; do
  name="$(basename "$dir")"
  text="$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["text"])' "$dir/reference.json")"
  for run in "cpu f32" "cpu bf16" "$device f32" "$device bf16"; do
    read -r dev dt <<< "$run"
    "$bin" score --model "$dir" --text "$text" --json --device "$dev" --dtype "$dt" > "$out/score-$name-$dev-$dt.json"
  done
  row="$("$py" - "$dir" "$device" "$out/score-$name"-{cpu-f32,cpu-bf16,$device-f32,$device-bf16}.json <<'PY'
import json, sys
cpu32, cpu16, dev32, dev16 = (json.load(open(p)) for p in sys.argv[3:])
assert cpu32["ids"] == dev32["ids"] == dev16["ids"], "token ids differ"
d = lambda a, b: max(abs(x - y) for x, y in zip(a, b))
a, e = d(dev32["logprobs"], cpu32["logprobs"]), d(dev16["logprobs"], cpu16["logprobs"])
try:
    import torch
    from transformers import AutoModelForCausalLM
    ids = torch.tensor([dev16["ids"]], device=sys.argv[2])
    def hf(dtype):
        m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype).to(sys.argv[2]).eval()
        with torch.no_grad():
            lp = m(ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
        return lp.tolist()
    h16, h32 = hf(torch.bfloat16), hf(torch.float32)
    b, t = d(dev16["logprobs"], h16), d(h16, h32)
    print(f"{a:.2e} {b:.2e} {t:.2e} {e:.2e} {int(a <= 1e-4 and b <= t)}")
except ImportError:
    print(f"{a:.2e} – – {e:.2e} {int(a <= 1e-4)}")
PY
)"
  read -r a b t e good <<< "$row"
  say "| $name | $a | $b | $t | $e |"
  [ "$good" = 1 ] || fail=1
done
say ""
if [ "$fail" = 1 ]; then say "**parity: FAILED** (f32 within 1e-4 of the CPU; bf16 no further from transformers' bf16 than that is from its f32)"; else say "parity: all within bounds (f32 within 1e-4 of the CPU; bf16 no further from transformers' bf16 than that is from its f32)"; fi
say ""

# 2. Training-step benchmark.
if [ -n "${SMALL:-}" ]; then
  shape=(hidden_size=64 intermediate_size=128 num_hidden_layers=2 num_attention_heads=4 num_key_value_heads=2 head_dim=16 vocab_size=1024 dtype=f32)
  bench=(data.max_length=128 training.batch_size=2 model.dtype=f32)
  steps=4
else
  shape=()
  bench=()
  steps="${BENCH_STEPS:-20}"
fi
"$py" - "$out/bench.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
words = "the of and to in is that for it with as was on be by at this from which or have an are".split()
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        text = " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(1200))
        f.write(json.dumps({"prompt": "Go.", "response": text}) + "\n")
PY
"$bin" run recipes/gpu/llama-1b-init.yaml "vars.root=$out" "${shape[@]}" 2>&1 | tail -1
say "## 2. training step, Llama-3.2-1B shape, bf16 weights, f32 master weights and moments"
say ""
say "| training | step time (median) | tokens/s | MFU | peak memory |"
say "|---|---|---|---|---|"
lora='model.lora={r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}'
for ckpt in false true lora; do
  run="$out/sft-bench-$ckpt"
  rm -rf "$run"
  case "$ckpt" in
    lora) mode=("training.activation_checkpointing=false" "$lora") ;;
    *) mode=("training.activation_checkpointing=$ckpt") ;;
  esac
  "$bin" run recipes/gpu/llama-1b-sft-bench.yaml "vars.root=$out" "output_dir=$run" "device=$device" \
    "${mode[@]}" "${bench[@]}" --stop-after "$steps" 2> "$run.log" || { tail -5 "$run.log"; exit 1; }
  row="$("$py" - "$run/metrics.jsonl" "$out/llama-1b/config.json" "$run/recipe.yaml" "$peak_tflops" <<'PY'
import json, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "train/loss" in l]
cfg = json.load(open(sys.argv[2]))
recipe = open(sys.argv[3]).read()
batch = int(re.search(r"batch_size: (\d+)", recipe).group(1))
seq = int(re.search(r"max_length: (\d+)", recipe).group(1))
times = [b["time_s"] - a["time_s"] for a, b in zip(rows, rows[1:])][2:] or [rows[-1]["time_s"]]
step = statistics.median(times)
h, L, v, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
hd, nh, kv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
per_layer = h * hd * (nh + 2 * kv) + nh * hd * h + 3 * h * inter
# Training FLOPs per token: 6 × (matrix parameters + the head) + 12 × layers × hidden × seq (attention).
flops_token = 6 * (L * per_layer + h * v) + 12 * L * nh * hd * seq
tps = batch * seq / step
mfu = tps * flops_token / (float(sys.argv[4]) * 1e12)
peak = max(r.get("memory/peak_gib", float("nan")) for r in rows)
print(f"{step * 1e3:.0f}ms {tps:,.0f} {100 * mfu:.1f}% {peak:.1f}GiB")
PY
)"
  read -r st tps mfu peak <<< "$row"
  case "$ckpt" in
    lora) label="LoRA r 16, every projection (MFU as if full)" ;;
    true) label="full, activation checkpointing" ;;
    *) label="full" ;;
  esac
  say "| $label | $st | $tps | $mfu | $peak |"
done
say ""
say "Tokens per step: batch × max_length (every example is longer and truncated). MFU against"
say "$peak_tflops TFLOP/s; FLOPs per token = 6 × (block matrices + head) + 12 × layers × hidden × seq."
say "Peak memory on CUDA: device memory in use after the step (the caching allocator's peak reservation + context)."
say ""

# 3. Cross-tokenizer OPD with both models on the device.
say "## 3. cross-tokenizer OPD (recipes/opd/tiny.yaml), student and teacher on $device in bf16"
say ""
run="$out/opd"
rm -rf "$run"
"$bin" run recipes/opd/tiny.yaml "output_dir=$run" "device=$device" student.dtype=bf16 teacher.dtype=bf16 \
  logging.progress=false 2> "$run.log" || { tail -5 "$run.log"; exit 1; }
grep "^model " "$run.log" | tee -a "$summary"
say ""
"$py" - "$run/metrics.jsonl" <<'PY' | tee -a "$summary"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "opd/logq_minus_logp" in l]
print("| step | logq − logp (nats/token) | masked | time (s) | peak GiB |")
print("|---|---|---|---|---|")
prev = 0.0
for r in rows:
    print(f"| {r['step']} | {r['opd/logq_minus_logp']:.3f} | {r['opd/masked_fraction']:.2f} | {r['time_s'] - prev:.2f} | {r.get('memory/peak_gib', float('nan')):.2f} |")
    prev = r["time_s"]
PY
say ""

# 4. Decoding speed: the KV-cache loop of `tokbridge generate` on the 1B-shaped model, batch 1.
# Two lengths, so that loading and the prefill cancel: per token = (t(N2) - t(N1)) / (N2 - N1).
say "## 4. decoding, Llama-3.2-1B shape, batch 1, bf16, KV cache"
say ""
gen_s() {
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" generate --model "$out/llama-1b" --prompt "The history of" --max-new-tokens "$1" --ignore-eos \
    --device "$device" --dtype bf16 > /dev/null
  t1=$(date +%s.%N)
  "$py" -c "print(f'{$t1 - $t0:.3f}')"
}
gen_s 8 > /dev/null # warm-up: the CUDA context and kernels
short=$(gen_s 32)
long=$(gen_s 288)
say "- 32 tokens: ${short} s, 288 tokens: ${long} s (load + prefill included)"
say "- per decoded token: $("$py" -c "print(f'{($long - $short) * 1000 / 256:.2f}')") ms"
say ""
# In-process against transformers `generate` on the same weights (greedy, 16-token prompts, 128
# new tokens), when the step benchmark's binary is given (STEP_BENCH, built against the same
# libtorch: `cargo bench --bench step --no-run`) and Python has transformers.
if [ -n "${STEP_BENCH:-}" ]; then
  say "| batch | tokbridge ms/token | decode forward alone | transformers ms/token | transformers / tokbridge |"
  say "|---|---|---|---|---|"
  for b in 1 8; do
    "$STEP_BENCH" sample --model "$out/llama-1b" --device "$device" --dtype bf16 --batch "$b" --reps 2 > "$out/tb-$b.json" 2> "$out/tb-$b.err" || { tail -3 "$out/tb-$b.err"; continue; }
    "$py" benches/python/step.py sample --model "$out/llama-1b" --device "$device" --dtype bf16 --batch "$b" --reps 2 > "$out/hf-$b.json" 2> /dev/null || echo '{}' > "$out/hf-$b.json"
    "$py" - "$b" "$out/tb-$b.json" "$out/hf-$b.json" "$out/tb-$b.err" <<'PY' | tee -a "$summary"
import json, re, sys
b = int(sys.argv[1])
tb, hf = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
alone = re.search(r"decode forward alone: ([0-9.]+) ms", open(sys.argv[4]).read())
ms = lambda r: 1e3 * r["median_s"] / 128
h = f"{ms(hf):.2f}" if hf else "–"
ratio = f"{ms(hf) / ms(tb):.2f}x" if hf else "–"
print(f"| {b} | {ms(tb):.2f} | {alone.group(1) if alone else '–'} | {h} | {ratio} |")
PY
  done
  say ""
fi

# 5. Data parallelism on the device: two ranks sharing the GPU through Gloo (NCCL refuses two
# ranks on one GPU) against one process with the combined batch; the curves should agree to
# float rounding. A machine with several GPUs gives each rank its own with `device=cuda`.
say "## 5. two ranks on $device (Gloo) against one process"
say ""
for r in sft opd; do
  case "$r" in
    sft) rec=recipes/sft/tiny.yaml; ex=() ;;
    opd) rec=recipes/opd/tiny.yaml; ex=(rollout.temperature=0) ;;
  esac
  dev="$device"; [ "$device" = cuda ] && dev=cuda:0
  for n in 1 2; do
    rm -rf "$out/dp-$r-$n"
    "$bin" run "$rec" "output_dir=$out/dp-$r-$n" eval=null "device=$dev" logging.progress=false "${ex[@]}" \
      --nproc "$n" 2> "$out/dp-$r-$n.log" || { tail -5 "$out/dp-$r-$n.log" | tee -a "$summary"; break; }
  done
  "$py" - "$out/dp-$r-1/metrics.jsonl" "$out/dp-$r-2/metrics.jsonl" "$r" <<'PY' | tee -a "$summary"
import json, sys
def losses(p):
    try:
        rows = [json.loads(l) for l in open(p)]
    except OSError:
        return [], 0.0
    return [r["train/loss"] for r in rows if "train/loss" in r], rows[-1].get("time_s", 0.0) if rows else 0.0
(a, ta), (b, tb) = losses(sys.argv[1]), losses(sys.argv[2])
if not a or len(a) != len(b):
    print(f"- {sys.argv[3]}: FAILED ({len(a)} vs {len(b)} steps)")
else:
    rel = max(abs(x - y) / max(abs(x), 1e-3) for x, y in zip(a, b))
    print(f"- {sys.argv[3]}: {len(a)} steps, max relative loss difference {rel:.1e}; wall {ta:.1f} s (1 process) vs {tb:.1f} s (2 ranks)")
PY
done
say ""

# 6. NCCL. On one GPU: a group of one against the process alone. Across GPUs (a rank per GPU,
# `device=cuda` = cuda:LOCAL_RANK): the tiny SFT curve against one process, then the 1B-shaped
# training step at 1 and N ranks with the per-rank batch held at 8 (weak scaling): s/step,
# tokens/s, efficiency, and the fraction of gradient buckets all-reduced during the backward.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
say "## 6. data parallelism over NCCL"
say ""
if [ "$device" != cuda ] || [ "${gpus:-0}" -lt 1 ]; then
  say "- no GPU: not run."
else
  # A group of one on GPU 0 (torchrun's variables, WORLD_SIZE=1): NCCL's process group, the
  # reducer's hooks on CUDA tensors and the all-reduce, against the process alone.
  port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  rm -rf "$out/nccl-alone" "$out/nccl-one"
  "$bin" run recipes/sft/tiny.yaml "output_dir=$out/nccl-alone" eval=null device=cuda logging.progress=false 2> "$out/nccl-alone.log" || tail -5 "$out/nccl-alone.log" | tee -a "$summary"
  RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" \
    "$bin" run recipes/sft/tiny.yaml "output_dir=$out/nccl-one" eval=null device=cuda logging.progress=false 2> "$out/nccl-one.log" || tail -5 "$out/nccl-one.log" | tee -a "$summary"
  { grep -h "through NCCL\|through Gloo" "$out/nccl-one.log" || true; } | head -1 | sed 's/^/- group of one: /' | tee -a "$summary"
  "$py" - "$out/nccl-alone/metrics.jsonl" "$out/nccl-one/metrics.jsonl" <<'PY' | tee -a "$summary"
import json, sys
try:
    a, b = ([json.loads(x) for x in open(p) if "train/loss" in x] for p in sys.argv[1:])
    rel = max(abs(x["train/loss"] - y["train/loss"]) / max(abs(x["train/loss"]), 1e-3) for x, y in zip(a, b)) if a and len(a) == len(b) else float("nan")
    print(f"- group of one on cuda:0: {len(b)} steps, max relative loss difference to the process alone {rel:.1e}, buckets overlapped {b[-1].get('dist/overlapped', 'none')}")
except (OSError, KeyError, ValueError) as e:
    print(f"- group of one on cuda:0: FAILED ({e})")
PY
fi
if [ "$device" = cuda ] && [ "${gpus:-0}" -eq 1 ]; then
  say "- one GPU: NCCL across GPUs and the scaling row need at least 2; not run."
elif [ "$device" = cuda ] && [ "${gpus:-0}" -ge 2 ]; then
  n="$gpus"
  for k in 1 "$n"; do
    rm -rf "$out/nccl-sft-$k"
    "$bin" run recipes/sft/tiny.yaml "output_dir=$out/nccl-sft-$k" eval=null device=cuda logging.progress=false \
      --nproc "$k" 2> "$out/nccl-sft-$k.log" || tail -5 "$out/nccl-sft-$k.log" | tee -a "$summary"
  done
  { grep -h "through NCCL\|through Gloo" "$out/nccl-sft-$n.log" || true; } | head -2 | sed 's/^/- /' | tee -a "$summary"
  say ""
  say "| ranks | global batch | step time (median) | tokens/s | scaling efficiency | buckets overlapped |"
  say "|---|---|---|---|---|---|"
  base=""
  for k in 1 "$n"; do
    run="$out/nccl-bench-$k"
    rm -rf "$run"
    "$bin" run recipes/gpu/llama-1b-sft-bench.yaml "vars.root=$out" "output_dir=$run" device=cuda \
      "training.batch_size=$((8 * k))" "${bench[@]}" --stop-after "$steps" --nproc "$k" 2> "$run.log" || { tail -5 "$run.log" | tee -a "$summary"; continue; }
    row="$("$py" - "$run/metrics.jsonl" "$k" "$base" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "train/loss" in l]
times = [b["time_s"] - a["time_s"] for a, b in zip(rows, rows[1:])][2:] or [rows[-1]["time_s"]]
step = statistics.median(times)
k = int(sys.argv[2])
tps = 8 * k * 1024 / step
eff = f"{tps / (k * float(sys.argv[3])):.2f}" if sys.argv[3] else "1.00"
ov = f'{statistics.mean(r.get("dist/overlapped", float("nan")) for r in rows[1:]):.2f}' if k > 1 else "–"
print(f"{tps:.0f} | {k} | {8 * k} | {step * 1e3:.0f} ms | {tps:,.0f} | {eff} | {ov} |")
PY
)"
    [ -z "$base" ] && base="${row%% |*}"
    say "| ${row#* | }"
  done
  "$py" - "$out/nccl-sft-1/metrics.jsonl" "$out/nccl-sft-$n/metrics.jsonl" <<'PY' | tee -a "$summary"
import json, sys
l = lambda p: [json.loads(x)["train/loss"] for x in open(p) if "train/loss" in x]
try:
    a, b = l(sys.argv[1]), l(sys.argv[2])
    rel = max(abs(x - y) / max(abs(x), 1e-3) for x, y in zip(a, b)) if a and len(a) == len(b) else float("nan")
    print(f"\n- tiny SFT over NCCL: {len(a)} vs {len(b)} steps, max relative loss difference {rel:.1e}")
except OSError as e:
    print(f"\n- tiny SFT over NCCL: FAILED ({e})")
PY
fi
say ""

# 7. ZeRO on the 1B shape: two ranks, stages 0, 1 and 2, the same steps; rank 0's peak device
# memory, the optimizer state and the summed gradients each rank holds.
say "## 7. ZeRO stages on two ranks, Llama-3.2-1B shape"
say ""
say "| stage | step time (median) | peak memory, rank 0 | optimizer state per rank | summed gradients held (owned + buckets) | final loss |"
say "|---|---|---|---|---|---|"
zdev="$device"; [ "$device" = cuda ] && [ "${gpus:-0}" -lt 2 ] && zdev=cuda:0
for z in 0 1 2; do
  run="$out/zero-$z"
  rm -rf "$run"
  "$bin" run recipes/gpu/llama-1b-sft-bench.yaml "vars.root=$out" "output_dir=$run" "device=$zdev" \
    "training.zero=$z" "${bench[@]}" --stop-after "$steps" --nproc 2 2> "$run.log" || { tail -5 "$run.log" | tee -a "$summary"; continue; }
  "$py" - "$run/metrics.jsonl" "$z" <<'PY' | tee -a "$summary"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "train/loss" in l]
times = [b["time_s"] - a["time_s"] for a, b in zip(rows, rows[1:])][2:] or [rows[-1]["time_s"]]
r = rows[-1]
held = r.get("memory/owned_gradient_mib", 0.0) + r.get("memory/gradient_buckets_peak_mib", float("nan"))
print(f"| {sys.argv[2]} | {statistics.median(times) * 1e3:.0f} ms | {max(x.get('memory/peak_gib', float('nan')) for x in rows):.2f} GiB | {r['memory/optimizer_state_mib_max_rank'] / 1024:.2f} GiB | {held / 1024:.2f} GiB | {r['train/loss']:.5f} |")
PY
done
say ""
[ "$fail" = 0 ] || { echo "gpu_check: parity failed" >&2; exit 1; }
echo "gpu_check: done; summary in $summary" >&2
