#!/usr/bin/env bash
# The OPD controls of shared/research/opd-recipes-and-controls.md, rerun with tokbridge's own
# recipes: the demo's teacher and task, and a student of the demo student's size that uses the
# TEACHER's tokenizer (every DPCA chunk is 1:1, so DPCA is textbook same-tokenizer OPD), warmed
# up to a weak and to a capable start. From each start, at the same optimizer steps and prompts
# per step: SFT on teacher answers (scoring its samples with eval.teacher), OPD with DPCA, and
# each full-distribution loss on-policy and with lmbda 0.5, all at the learning rate 3e-4 of the
# controls in shared/research. One compare report per start.
#   scripts/controls.sh [ROOT] [STEPS]      (needs a built target/release/tokbridge)
set -euo pipefail
root=${1:-runs/controls}
steps=${2:-120}
tb=${TOKBRIDGE:-target/release/tokbridge}
run() { echo "== $*" >&2; "$tb" run "$@"; }
for s in 01_task 02_teacher_init 03_teacher_sft 08_eval_teacher 11_teacher_responses; do
  [ -e "$root/stages-$s.done" ] || { run recipes/demo/$s.yaml vars.root=$root; touch "$root/stages-$s.done"; }
done
[ -e "$root/st-init/config.json" ] || run recipes/demo/06_control_init.yaml vars.root=$root output_dir=$root/st-init
common=(logging.progress=false vars.root=$root vars.steps=$steps vars.eval_every=40 vars.eval_examples=100 vars.sft_lr=3.0e-4 vars.opd_lr=3.0e-4)
for w in ${WARMUPS:-250 500}; do
  d=$root/w$w
  [ -e "$d/warm/config.json" ] || run recipes/demo/07_control_warmup.yaml vars.root=$root vars.control_warmup_steps=$w training.stop_at=null output_dir=$d/warmup model.path=$root/st-init export_to=$d/warm
  [ -e "$d/eval-warm/eval.json" ] || run recipes/demo/09_eval_student.yaml vars.root=$root output_dir=$d/eval-warm model.path=$d/warm vars.eval_examples=100
  [ -e "$d/sft/checkpoints/latest" ] || run recipes/demo/12_sft.yaml "${common[@]}" output_dir=$d/sft model.path=$d/warm export_to=null
  for loss in dpca forward_kl reverse_kl jsd; do
    [ -e "$d/opd-$loss/checkpoints/latest" ] || run recipes/demo/13_opd_dpca.yaml "${common[@]}" output_dir=$d/opd-$loss student.path=$d/warm loss=$loss
  done
  for loss in forward_kl reverse_kl jsd; do
    [ -e "$d/mix-$loss/checkpoints/latest" ] || run recipes/demo/13_opd_dpca.yaml "${common[@]}" output_dir=$d/mix-$loss student.path=$d/warm loss=$loss lmbda=0.5
  done
  "$tb" compare $root/eval-teacher $d/eval-warm $d/sft $d/opd-dpca $d/opd-forward_kl $d/opd-reverse_kl $d/opd-jsd $d/mix-forward_kl $d/mix-reverse_kl $d/mix-jsd --out $d/report
done
