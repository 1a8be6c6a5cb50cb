#!/usr/bin/env bash
# The RLHF evidence on the arithmetic task, 3 seeds, equal generated tokens within each part:
# 1. PPO against GRPO with the exact checker (the default run's budget, 215k tokens);
# 2. the pipeline: the shipped model's own samples -> pairs -> a reward model -> PPO and GRPO
#    with the reward model as the only reward (107k tokens); the exact checker rides along at
#    weight 0, so train and held-out accuracy stay true.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
OUT=${OUT:-runs/rlhf}
mkdir -p "$OUT"
$EXPLORL compare grpo ppo --seeds 3 --output "$OUT/exact" \
    --set max_generated_tokens=214737 --set max_steps=2000
OMP_NUM_THREADS=1 $EXPLORL sample tiny --n 8 --size 10000 --seed 1 --out "$OUT/samples.jsonl"
OMP_NUM_THREADS=1 $EXPLORL sample tiny --n 8 --split eval --size 1000 --seed 2 \
    --out "$OUT/eval_samples.jsonl"
$EXPLORL pairs "$OUT/samples.jsonl" --out "$OUT/pairs.jsonl" --per-prompt 2
$EXPLORL pairs "$OUT/eval_samples.jsonl" --out "$OUT/eval_pairs.jsonl" --per-prompt 2
OMP_NUM_THREADS=1 $EXPLORL rm dataset="$OUT/pairs.jsonl" eval_dataset="$OUT/eval_pairs.jsonl" \
    num_epochs=12 output_dir="$OUT/rm" progress=false
cat > "$OUT/rm_reward.yaml" <<YAML
reward_funcs: [arithmetic, $OUT/rm]
reward_weights: [0.0, 1.0]
max_generated_tokens: 107000
max_steps: 2000
YAML
$EXPLORL compare grpo ppo --seeds 3 --output "$OUT/rm_reward" --config "$OUT/rm_reward.yaml"
.venv/bin/python benchmarks/rlhf_report.py "$OUT" docs/img/rlhf
