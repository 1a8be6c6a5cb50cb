#!/usr/bin/env bash
# Multi-turn RL with a calculator tool: the tool-warm-started tiny model (model=tiny-tools)
# trained by GRPO on the arithmetic prompts with the tool (dataset=calculator: reward 1 for the
# right answer, -0.1 per call) against the same model, budget and prompts without it
# (dataset=arithmetic, single turn); 3 seeds, 150k model-generated tokens each (a tool's answers
# are not counted). Two queues, one core each; then the report (docs/agents.md).
#   bash benchmarks/calculator.sh [runs|report]  (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
export OMP_NUM_THREADS=1
OUT=runs/calculator
COMMON=(--seeds 3 --set model=tiny-tools --set max_generated_tokens=150000
        --set max_steps=100000 --set learning_rate=2e-4 --set max_completion_length=32
        --set eval_every=0 --set save_every=0 --set plots=false --set progress=false)
stage=${1:-all}
if [[ $stage == runs || $stage == all ]]; then
  ( $EXPLORL compare with_tool:dataset=calculator --output $OUT/with_tool "${COMMON[@]}" ) &
  ( $EXPLORL compare without_tool:dataset=arithmetic --output $OUT/without_tool \
        "${COMMON[@]}" ) &
  wait
fi
.venv/bin/python benchmarks/calculator_report.py $OUT > benchmarks/results/calculator.md
cat benchmarks/results/calculator.md
