#!/usr/bin/env python3
"""The PyTorch/transformers side of benches/step.rs: the same llama configuration, random
initialisation, float32, CPU, thread count, and the same work.

  python benches/python/step.py train   forward + backward + torch.optim.AdamW, batch 8 x 256
  python benches/python/step.py train --fused   the same with AdamW(fused=True) (Trainer's default)
  python benches/python/step.py sample  model.generate, 8 prompts of 16 tokens, 128 new tokens greedy
  python benches/python/step.py sample --model DIR --batch 1   a real model (float32)
  python benches/python/step.py sample --model DIR --device cuda --dtype bf16   on a GPU

Prints one JSON line like the Rust side. Pinned versions: benches/python/requirements.txt.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "sample"])
    for k, v in dict(hidden=384, layers=8, heads=6, kv_heads=2, inter=1536, vocab=32000, batch=8, seq=256,
                     new_tokens=128, reps=10, threads=2).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    ap.add_argument("--model", help="a model directory to load instead of the random llama")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--fused", action="store_true", help="torch.optim.AdamW(fused=True), the Trainer's default on torch >= 2.8")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, tie_word_embeddings=True)
    if a.model:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(a.device)
        a.vocab = min(model.config.get_text_config().vocab_size, 32000)
    else:
        model = LlamaForCausalLM(cfg).to(dtype=dtype, device=a.device)
    params = sum(p.numel() for p in model.parameters())
    times = []
    if a.mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=a.fused)
        ids = torch.randint(a.vocab, (a.batch, a.seq), device=a.device)
        for rep in range(a.reps + 2):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            sync()
            if rep >= 2:
                times.append(time.perf_counter() - t0)
        tokens = a.batch * a.seq
    else:
        model.eval()
        g = torch.Generator().manual_seed(1)
        prompts = torch.randint(a.vocab, (a.batch, 16), generator=g).to(a.device)
        for rep in range(min(a.reps, 5) + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=a.new_tokens,
                                     min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
            sync()
            assert out.shape[1] == 16 + a.new_tokens
            if rep >= 1:
                times.append(time.perf_counter() - t0)
        tokens = a.batch * a.new_tokens
    times.sort()
    median = statistics.median(times)
    print(json.dumps({"side": "transformers", "mode": a.mode, "params": params, "median_s": median, "min_s": times[0],
                      "max_s": times[-1], "tokens_per_s": tokens / median,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == "__main__":
    main()
