#!/usr/bin/env bash
# Candidate scoring on a weak cross-tokenizer student: the demo's student (digit-packing llama
# tokenizer, digit-splitting qwen3 teacher) warmed up only 1,000 steps, the start from which DPCA
# lowered it in earlier controls. From that start, at the demo's optimizer steps and prompts per
# step and the demo's chosen learning rates: SFT on teacher answers, OPD with DPCA alone, DPCA
# with the teacher's distribution over the student's candidates (k = 16), and the candidate term
# alone (DPCA's advantages clamped to ~0), each with its teacher cost in the report. (The
# demo itself compares the same methods from its capable 3,000-step start.)
#   scripts/controls_cross.sh [ROOT] [WARMUP_STEPS]     (needs a built target/release/tokbridge)
set -euo pipefail
root=${1:-runs/controls}
warmup=${2:-1000}
tb=${TOKBRIDGE:-target/release/tokbridge}
run() { echo "== $*" >&2; "$tb" run "$@"; }
for s in 01_task 02_teacher_init 03_teacher_sft 04_student_init 08_eval_teacher 11_teacher_responses; do
  [ -e "$root/stages-$s.done" ] || { run recipes/demo/$s.yaml vars.root=$root; touch "$root/stages-$s.done"; }
done
d=$root/cross-w$warmup
[ -e "$d/warm/config.json" ] || run recipes/demo/05_student_warmup.yaml vars.root=$root vars.warmup_steps=$warmup training.stop_at=null output_dir=$d/warmup export_to=$d/warm
[ -e "$d/eval-warm/eval.json" ] || run recipes/demo/09_eval_student.yaml vars.root=$root output_dir=$d/eval-warm model.path=$d/warm
common=(logging.progress=false vars.root=$root)
[ -e "$d/sft/checkpoints/latest" ] || run recipes/demo/12_sft.yaml "${common[@]}" output_dir=$d/sft model.path=$d/warm export_to=null
[ -e "$d/opd-dpca/checkpoints/latest" ] || run recipes/demo/13_opd_dpca.yaml "${common[@]}" output_dir=$d/opd-dpca student.path=$d/warm
[ -e "$d/opd-candidates/checkpoints/latest" ] || run recipes/demo/14_opd_candidates.yaml "${common[@]}" output_dir=$d/opd-candidates student.path=$d/warm
[ -e "$d/opd-candidates-only/checkpoints/latest" ] || run recipes/demo/14_opd_candidates.yaml "${common[@]}" output_dir=$d/opd-candidates-only student.path=$d/warm dpca.adv_clamp=0.000001
"$tb" compare $root/eval-teacher $d/eval-warm $d/sft $d/opd-dpca $d/opd-candidates $d/opd-candidates-only --out $d/report
