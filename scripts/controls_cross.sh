#!/usr/bin/env bash
# Candidate scoring on the demo's own cross-tokenizer student (digit-packing llama student,
# digit-splitting qwen3 teacher): from the demo's warm start, at the demo's optimizer steps
# and prompts per step, SFT on teacher answers, OPD with DPCA alone, and DPCA with the
# teacher's distribution over the student's candidates (dpca.candidates, k = 16), each with
# its teacher cost in the report. Reuses what scripts/controls.sh made under the same ROOT.
#   scripts/controls_cross.sh [ROOT] [STEPS]      (needs a built target/release/tokbridge)
set -euo pipefail
root=${1:-runs/controls}
steps=${2:-160}
tb=${TOKBRIDGE:-target/release/tokbridge}
run() { echo "== $*" >&2; "$tb" run "$@"; }
for s in 01_task 02_teacher_tokenizer 03_student_tokenizer 04_teacher_init 05_teacher_sft 06_student_init 07_student_warmup 08_eval_teacher 09_eval_student 10_teacher_responses; do
  [ -e "$root/stages-$s.done" ] || { run recipes/demo/$s.yaml vars.root=$root; touch "$root/stages-$s.done"; }
done
d=$root/cross
common=(logging.progress=false vars.root=$root vars.steps=$steps "eval.scorers=[exact_match]")
[ -e "$d/sft/checkpoints/latest" ] || run recipes/demo/11_sft_on_teacher.yaml "${common[@]}" output_dir=$d/sft
[ -e "$d/opd-dpca/checkpoints/latest" ] || run recipes/demo/12_opd_dpca.yaml "${common[@]}" output_dir=$d/opd-dpca
[ -e "$d/opd-dpca-cand/checkpoints/latest" ] || run recipes/demo/12_opd_dpca.yaml "${common[@]}" output_dir=$d/opd-dpca-cand "dpca.candidates={k: 16}"
[ -e "$d/opd-cand-only/checkpoints/latest" ] || run recipes/demo/12_opd_dpca.yaml "${common[@]}" output_dir=$d/opd-cand-only "dpca.candidates={k: 16, weight: 1.0}" dpca.adv_clamp=0.000001
"$tb" compare $root/eval-teacher $root/eval-student-warm $d/sft $d/opd-dpca $d/opd-dpca-cand $d/opd-cand-only --out $d/report
