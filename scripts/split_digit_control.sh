#!/usr/bin/env bash
# A control for the demo (RESULTS.md, "A cross-tokenizer student without multi-token chunks"):
# the demo's student with its own tokenizer except that digits are split one per token
# (recipes/demo/tokenizers/student-split-digits: the committed student tokenizer with
# `\p{N}{1,3}` replaced by `\p{N}` in its pre-tokenizer, nothing else), so every chunk of a
# response aligns 1:1 with the teacher's tokens while the vocabulary, the `▁` spaces and the chat
# template stay the student's. Warmed up like the demo's student (stop at 70% validation
# accuracy, evaluated every 5 steps so the stop lands near it), then SFT on the teacher's
# answers, OPD with DPCA, and DPCA after SFT at the demo's settings.
#   scripts/split_digit_control.sh DEMO_ROOT OUT [SEED]
# DEMO_ROOT is a finished `tokbridge run recipes/demo.yaml vars.root=DEMO_ROOT vars.seed=SEED`
# (its task, teacher and teacher answers are reused). Needs a built target/release/tokbridge.
set -euo pipefail
base=$1; out=$2; s=${3:-0}
tb=${TOKBRIDGE:-target/release/tokbridge}
p=logging.progress=false
run() { echo "== $*" >&2; "$tb" run "$@"; }
[ -e "$out/student-init/config.json" ] || run recipes/demo/04_student_init.yaml vars.seed=$s output_dir=$out/student-init tokenizer=recipes/demo/tokenizers/student-split-digits
[ -e "$out/student-warm/config.json" ] || run recipes/demo/05_student_warmup.yaml vars.seed=$s vars.root=$base output_dir=$out/student-warmup model.path=$out/student-init export_to=$out/student-warm eval.every=5 $p
[ -e "$out/eval-student-warm/eval.json" ] || run recipes/demo/09_eval_student.yaml vars.seed=$s vars.root=$base output_dir=$out/eval-student-warm model.path=$out/student-warm
[ -e "$out/sft-final/config.json" ] || run recipes/demo/12_sft.yaml vars.seed=$s vars.root=$base output_dir=$out/sft model.path=$out/student-warm export_to=$out/sft-final $p
[ -e "$out/opd-dpca/checkpoints/latest" ] || run recipes/demo/13_opd_dpca.yaml vars.seed=$s vars.root=$base output_dir=$out/opd-dpca student.path=$out/student-warm $p
[ -e "$out/opd-after-sft/checkpoints/latest" ] || run recipes/demo/15_opd_after_sft.yaml vars.seed=$s vars.root=$base output_dir=$out/opd-after-sft student.path=$out/sft-final $p
"$tb" compare "$base/eval-teacher" "$out/eval-student-warm" "$out/sft" "$out/opd-dpca" "$out/opd-after-sft" --out "$out/report"
