#!/usr/bin/env python3
"""TRL's GOLD trainer (`trl.experimental.gold`, the other cross-tokenizer on-policy trainer)
on the work of `tokbridge run recipes/opd/tiny.yaml loss=gold_hybrid`: the fixture llama
student and qwen3 teacher (different tokenizers), fully on-policy (lmbda 1), ULD hybrid loss,
8 prompts per step, 24 new tokens, CPU, float32. Prints one JSON line with the median seconds
per optimizer step (after the first) and the peak resident memory.

  python benches/python/gold_step.py [--steps 6] [--threads 2]
  python benches/python/gold_step.py --real     the real pair of recipes/real/smollm2-to-gemma3.yaml

`--real`: SmolLM2-135M-Instruct teaching Gemma-3-270M (converted by scripts/real_run.sh into
runs/real/), the prompts of recipes/real/prompts.jsonl, 48 new tokens, lr 1e-5. Gemma-3-270M
has no chat template, so the prompts go in as tokbridge's plain template renders them (the
text and a newline). `--bf16`: the Trainer's bfloat16 mixed precision (float32 weights,
autocast on the CPU), as tokbridge's `dtype: bf16` keeps float32 master weights.
"""
import argparse
import json
import os
import resource
import statistics
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl.experimental.gold import GOLDConfig, GOLDTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Timer(TrainerCallback):
    def __init__(self):
        self.times, self.t0 = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.real:
        student, teacher = os.path.join(ROOT, "runs/real/gemma3-270m"), os.path.join(ROOT, "runs/real/smollm2")
        rows = [json.loads(l) for l in open(os.path.join(ROOT, "recipes/real/prompts.jsonl"))]
        data = Dataset.from_list([{"prompt": r["prompt"] + "\n", "completion": ""} for r in rows])
        lr, new_tokens = 1e-5, 48
    else:
        student = os.path.join(ROOT, "tests/fixtures/models/llama")
        teacher = os.path.join(ROOT, "tests/fixtures/models/qwen3")
        rows = [json.loads(l) for l in open(os.path.join(ROOT, "tests/fixtures/data/arith_train.jsonl"))]
        data = Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]} for r in rows])
        lr, new_tokens = 1e-3, 24
    with tempfile.TemporaryDirectory() as out:
        cfg = GOLDConfig(output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=a.steps,
                         learning_rate=lr, lmbda=1.0, max_completion_length=new_tokens, temperature=1.0, use_uld_loss=True,
                         uld_use_hybrid_loss=True, use_extended_uld=not a.real, teacher_tokenizer_name_or_path=teacher, report_to=[], logging_steps=1,
                         save_strategy="no", use_cpu=True, bf16=a.bf16, dataloader_num_workers=0, seed=0)
        timer = Timer()
        tok = AutoTokenizer.from_pretrained(student)
        tok.pad_token = tok.pad_token or tok.eos_token  # tokbridge pads with EOS the same way
        trainer = GOLDTrainer(model=AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32),
                              teacher_model=AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32),
                              args=cfg, train_dataset=data, processing_class=tok,
                              callbacks=[timer])
        trainer.train()
    steps = timer.times[1:]
    print(json.dumps({"side": "trl-gold", "mode": "opd_step", "median_s": statistics.median(steps), "min_s": min(steps),
                      "max_s": max(steps), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == "__main__":
    main()
