#!/usr/bin/env bash
# The HeRL evidence: the built-in rubric task with a hidden criterion (rubric) and with every
# criterion stated (rubric_stated); strict reward; 3 seeds; equal generated-token budget
# (revision tokens count). Two compare processes, one core each; then the report and figures.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
COMMON=(--seeds 3 --set rubric_reward=strict --set max_generated_tokens=180000
        --set max_steps=100000 --set learning_rate=2e-4 --set eval_every=30 --set eval_size=500
        --set save_every=0 --set max_completion_length=12 --set plots=false --set progress=false
        --set herl.candidate_limit=2)
# the reference's revisions (herl.teach=revise), as these figures were measured
REF=herl:method=herl,herl.teach=revise
BLANK=herl_blank:method=herl,herl.teach=revise,herl.blank_hindsight=true
OMP_NUM_THREADS=1 $EXPLORL compare grpo:method=grpo $REF herl_original $BLANK \
    --output runs/herl/rubric --set dataset=rubric "${COMMON[@]}" &
( OMP_NUM_THREADS=1 $EXPLORL compare herl_hindsight \
    --output runs/herl/rubric --set dataset=rubric "${COMMON[@]}"
  OMP_NUM_THREADS=1 $EXPLORL compare grpo:method=grpo $REF $BLANK \
    --output runs/herl/rubric_stated --set dataset=rubric_stated "${COMMON[@]}" ) &
wait
OMP_NUM_THREADS=2 .venv/bin/python benchmarks/herl_report.py runs/herl docs/img/herl
