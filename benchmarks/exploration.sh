#!/usr/bin/env bash
# Exploration, side by side: HeRL's variants and the exploration baselines on the rare rubric
# task (the hidden criterion is met by chance about 1% of the time; model=tiny-rare), and the
# baselines on the arithmetic task at lr 2e-4. 3 seeds, equal generated-token budgets (revision
# and dropped-group tokens count). Two queues, one core each; then the report and figures.
#   bash benchmarks/exploration.sh [rare|arithmetic|report]  (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
export OMP_NUM_THREADS=1
RARE=(--seeds 3 --output runs/exploration/rubric_rare --set dataset=rubric_rare
      --set model=tiny-rare --set rubric_reward=strict --set max_generated_tokens=360000
      --set max_steps=100000 --set learning_rate=2e-4 --set eval_every=40 --set eval_size=500
      --set eval_pass_k=1,4,16 --set save_every=0 --set max_completion_length=12
      --set plots=false --set progress=false --set herl.candidate_limit=2)
ARITH=(--seeds 3 --output runs/exploration/arithmetic --set learning_rate=2e-4
       --set max_generated_tokens=150000 --set max_steps=100000 --set eval_every=40
       --set eval_pass_k=1,4,16 --set save_every=0 --set plots=false --set progress=false)
# HeRL training revisions under both prompts, revisions kept out of the group's statistics
HERL_ON_POLICY="grpo+herl_both_on_policy:loss_type=grpo,advantage_estimator=grpo,"\
"scale_rewards=group,method=herl,herl.teach=revise,herl.context=both,herl.baseline=on_policy"
stage=${1:-all}
if [[ $stage == rare || $stage == all ]]; then
  ( $EXPLORL compare grpo grpo+herl_reference grpo+herl_reference+herl_blank \
        grpo+herl_original grpo+top_entropy \
        grpo+e3_budget "${RARE[@]}" ) &
  ( $EXPLORL compare grpo+herl_both "$HERL_ON_POLICY" grpo+dynamic_sampling \
        grpo+adaptive_entropy grpo+e3_temperature "${RARE[@]}" ) &
  wait
fi
if [[ $stage == arithmetic || $stage == all ]]; then
  ( $EXPLORL compare grpo grpo+clip_higher grpo+top_entropy grpo+e3_budget "${ARITH[@]}" ) &
  ( $EXPLORL compare grpo+dynamic_sampling grpo+adaptive_entropy grpo+e3_temperature \
        "${ARITH[@]}"
    # clip-higher acts only when a batch takes more than one optimizer step: at one step the
    # ratio is exactly 1 (grpo+clip_higher above equals grpo); two passes, with their control
    G2="loss_type=grpo,advantage_estimator=grpo,scale_rewards=group,num_iterations=2"
    $EXPLORL compare "grpo_2_iterations:$G2" "clip_higher_2_iterations:$G2,epsilon_high=0.28" \
        "${ARITH[@]}" ) &
  wait
fi
if [[ $stage == report || $stage == all ]]; then
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exploration_report.py runs/exploration \
      docs/img/exploration
fi
