#!/usr/bin/env bash
# Regime B's length and diversity ablations (issue #35; RESULTS.md, "Twenty-second session"):
# regime B's task with some of its settings changed (e.g. `min_events=2 max_events=2`, or
# `paths=canonical`), its own teacher trained and evaluated by regime B's stages 01-05
# unchanged, then the split-digit student warmed up by the matched rule and compared at seed 0
# (SFT against OPD with DPCA) by scripts/demo_b_matched_warm_start.sh.
#   scripts/demo_b_ablation.sh ROOT [TASK_VAR=VALUE ...]
# Each finished stage is kept, so a rerun goes on where it stopped. Needs a built
# target/release/tokbridge (or TOKBRIDGE).
set -euo pipefail
root=$1; shift
tb=${TOKBRIDGE:-target/release/tokbridge}
run() { echo "== $*" >&2; "$tb" run "$@"; }
task=(); for v in "$@"; do task+=("vars.$v"); done
[ -e "$root/data/test.jsonl" ] || run recipes/demo_b/01_task.yaml vars.root="$root" "${task[@]}"
[ -e "$root/teacher-init/config.json" ] || run recipes/demo_b/02_teacher_init.yaml vars.root="$root"
[ -e "$root/teacher-first/config.json" ] || run recipes/demo_b/03_teacher_sft.yaml vars.root="$root"
[ -e "$root/teacher/config.json" ] || run recipes/demo_b/03b_teacher_sft_more.yaml vars.root="$root"
[ -e "$root/eval-teacher/eval.json" ] || run recipes/demo_b/04_eval_teacher.yaml vars.root="$root"
[ -e "$root/teacher-responses-warm/responses.jsonl" ] || run recipes/demo_b/05_teacher_responses_warm.yaml vars.root="$root"
TOKBRIDGE="$tb" scripts/demo_b_matched_warm_start.sh "$root" "$root/split" 0.28 0 recipes/demo/tokenizers/student-split-digits
