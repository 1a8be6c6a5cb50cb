#!/usr/bin/env bash
# Exploration that pays: the revision losses, the supervised term, hindsight self-distillation
# and E3's pilot budgets against GRPO, with their blank-list controls, on the rare rubric task
# (360k generated tokens), the hidden-criterion rubric task (180k) and arithmetic (150k); 3 seeds,
# equal generated-token budgets (revision tokens count; the teacher's passes are logged as
# herl/teacher_tokens and in wall time). Two queues, one core each; then the report.
#   bash benchmarks/exploration_pays.sh [rare|rubric|arithmetic|report]  (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
export OMP_NUM_THREADS=1
OUT=runs/pays
RARE=(--seeds 3 --output $OUT/rubric_rare --set dataset=rubric_rare --set model=tiny-rare
      --set rubric_reward=strict --set max_generated_tokens=360000 --set max_steps=100000
      --set learning_rate=2e-4 --set eval_every=40 --set eval_size=500 --set eval_pass_k=1,4,16
      --set save_every=0 --set max_completion_length=12 --set plots=false --set progress=false
      --set herl.candidate_limit=2)
RUBRIC=(--seeds 3 --output $OUT/rubric --set dataset=rubric --set rubric_reward=strict
        --set max_generated_tokens=180000 --set max_steps=100000 --set learning_rate=2e-4
        --set eval_every=30 --set eval_size=500 --set eval_pass_k=1,4,16 --set save_every=0
        --set max_completion_length=12 --set plots=false --set progress=false
        --set herl.candidate_limit=2)
ARITH=(--seeds 3 --output $OUT/arithmetic --set learning_rate=2e-4
       --set max_generated_tokens=150000 --set max_steps=100000 --set eval_every=40
       --set eval_pass_k=1,4,16 --set save_every=0 --set plots=false --set progress=false)
stage=${1:-all}
if [[ $stage == rare || $stage == all ]]; then
  ( $EXPLORL compare grpo grpo+herl_distill grpo+herl_distill+herl_blank grpo+herl_sft \
        grpo+herl_sft+herl_blank grpo+e3_budget grpo+herl_teach_both "${RARE[@]}" ) &
  ( $EXPLORL compare grpo+herl_reference grpo+herl_luffy grpo+herl_luffy+herl_blank \
        grpo+herl_distill+e3_temperature "${RARE[@]}"
    # what collapses the hindsight context, one seed each: the revisions' negatives alone, and
    # the reference with the on-policy samples' advantages left as they were
    $EXPLORL compare grpo+herl_negatives grpo+herl_on_policy "${RARE[@]}" --seeds 1 ) &
  wait
fi
if [[ $stage == rubric || $stage == all ]]; then
  ( $EXPLORL compare grpo grpo+herl_reference "${RUBRIC[@]}" ) &
  ( $EXPLORL compare grpo+herl_distill grpo+herl_distill+herl_blank "${RUBRIC[@]}" ) &
  wait
fi
if [[ $stage == arithmetic || $stage == all ]]; then
  ( $EXPLORL compare grpo "${ARITH[@]}" ) &
  ( $EXPLORL compare grpo+e3_budget "${ARITH[@]}" ) &
  wait
fi
if [[ $stage == report || $stage == all ]]; then
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exploration_pays_report.py $OUT \
      docs/img/exploration_pays
fi
