#!/usr/bin/env bash
# HeRL over episodes on the calculator task: the tool-using tiny model (model=tiny-tools)
# trained by GRPO, by HeRL (the default teach=distill: each failed episode re-scored by the
# initial model shown its missed criterion and its draft), by HeRL with the criteria lists left
# blank (the control: the same teacher passes, no hindsight), and by HeRL's revisions in the
# LUFFY form (revision episodes trained under the original prompt, as exploration-pays.md
# runs them); 3 seeds, 150k model-generated tokens each (revision episodes count), the settings
# of benchmarks/calculator.sh. Two queues, one core each.
#   bash benchmarks/calculator_herl.sh [runs|report]  (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
export OMP_NUM_THREADS=1
OUT=runs/calculator_herl
COMMON=(--seeds 3 --set model=tiny-tools --set dataset=calculator
        --set max_generated_tokens=150000 --set max_steps=100000 --set learning_rate=2e-4
        --set max_completion_length=32 --set eval_every=0 --set save_every=0 --set plots=false
        --set progress=false)
stage=${1:-all}
if [[ $stage == runs || $stage == all ]]; then
  ( $EXPLORL compare grpo:method=grpo --output $OUT/grpo "${COMMON[@]}"
    $EXPLORL compare herl_blank:method=herl,herl.blank_hindsight=true --output $OUT/herl_blank \
        "${COMMON[@]}" ) &
  ( $EXPLORL compare herl:method=herl --output $OUT/herl "${COMMON[@]}"
    $EXPLORL compare herl_revise:method=herl,herl.teach=revise,herl.context=original,\
herl.revision_loss=luffy,herl.gamma=0.1,scale_rewards=none --output $OUT/herl_revise \
        "${COMMON[@]}" ) &
  wait
fi
.venv/bin/python benchmarks/calculator_herl_report.py $OUT > benchmarks/results/calculator_herl.md
cat benchmarks/results/calculator_herl.md
