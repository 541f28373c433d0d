#!/usr/bin/env bash
# Regime B's cross-tokenizer student from a warm start matched to the control's on sampled
# accuracy (RESULTS.md, "Twentieth session"): the student's warm-up (stage 07) continued on its
# own cosine schedule from its step-2,500 checkpoint, evaluating avg@4 at temperature 1 beside
# greedy accuracy every 100 steps, until avg@4 on the validation problems reaches TARGET (the
# control's warm start scored 27.6% on test). Then, at each of SEEDS, the teacher's samples, SFT
# on them and OPD with DPCA from it (stages 12-14, the comparison's settings).
#   scripts/demo_b_matched_warm_start.sh ROOT OUT [TARGET] [SEEDS] [TOKENIZER]
# ROOT has run stages 01-07 of recipes/demo_b.yaml (`vars.root=ROOT`); its task, teacher and the
# warm-up's checkpoints are reused. With TOKENIZER (e.g. recipes/demo/tokenizers/student-split-digits)
# a new student of the same architecture with that tokenizer is made (stage 06) and warmed up
# from its start by the same rule instead. Needs a built target/release/tokbridge.
set -euo pipefail
root=$1; out=$2; target=${3:-0.28}; seeds=${4:-0 1 2}; tokenizer=${5:-}
tb=${TOKBRIDGE:-target/release/tokbridge}
run() { echo "== $*" >&2; "$tb" run "$@"; }
mkdir -p "$out"
w=$out/student-warmup
matched=("training.stop_at={metric: eval/avg@4, at_least: $target}" "eval.scorers=[exact_match, {avg_at_k: {k: 4, temperature: 1.0, max_new_tokens: 320}}]")
if [ ! -e "$out/student-warm/config.json" ]; then
  if [ -n "$tokenizer" ]; then
    [ -e "$out/student-init/config.json" ] || run recipes/demo_b/06_student_init.yaml vars.root="$root" output_dir="$out/student-init" tokenizer="$tokenizer"
    resume=(); [ ! -e "$w/checkpoints/latest" ] || resume=(--resume)
    run recipes/demo_b/07_student_warmup.yaml vars.root="$root" output_dir="$w" model.path="$out/student-init" export_to="$out/student-warm" "${resume[@]}" "${matched[@]}"
  else
    if [ ! -e "$w/recipe.yaml" ]; then
      # The warm-up's run directory as it stood at step 2,500 (resuming cuts its metrics back).
      rm -rf "$w.tmp" && cp -r "$root/student-warmup" "$w.tmp"
      for c in "$w.tmp"/checkpoints/step-*; do
        [ "${c##*/step-}" -le 2500 ] || rm -rf "$c"
      done
      echo step-002500 > "$w.tmp/checkpoints/latest"
      mv "$w.tmp" "$w"
    fi
    run recipes/demo_b/07_student_warmup.yaml vars.root="$root" output_dir="$w" export_to="$out/student-warm" --resume "${matched[@]}"
  fi
fi
for s in $seeds; do
  r=$out/seed$s
  mkdir -p "$r"
  for d in data teacher; do ln -sfn "$root/$d" "$r/$d"; done
  ln -sfn "$out/student-warm" "$r/student-warm"
  [ "$s" != 0 ] || [ -e "$r/eval-student-warm/eval.json" ] || run recipes/demo_b/10_eval_student.yaml vars.root="$r"
  [ -e "$r/teacher-responses/responses.jsonl" ] || run recipes/demo_b/12_teacher_responses.yaml vars.root="$r" vars.seed=$s
  [ -e "$r/sft/checkpoints/latest" ] || run recipes/demo_b/13_sft.yaml vars.root="$r" vars.seed=$s
  [ -e "$r/opd-dpca/checkpoints/latest" ] || run recipes/demo_b/14_opd_dpca.yaml vars.root="$r" vars.seed=$s
done
