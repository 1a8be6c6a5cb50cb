#!/usr/bin/env bash
# The ILQL evidence, 3 seeds, the same offline data for every offline method of a task:
# the shipped model's samples (8 per prompt, 1000 training prompts) -> filtered behaviour
# cloning and ILQL (decoded at beta 0, 1 and 4), and GRPO at the same number of model calls
# (62 steps x 128 completions ~ the 8000 samples), on the arithmetic and the rubric task.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPLORL=.venv/bin/explorl
OUT=${OUT:-runs/ilql}
for task in arithmetic rubric; do
    mkdir -p "$OUT/$task"
    [ -f "$OUT/$task/samples.jsonl" ] || $EXPLORL sample tiny --dataset "$task" --n 8 \
        --size 1000 --seed 1 --out "$OUT/$task/samples.jsonl"
    $EXPLORL compare filtered_bc ilql --seeds 3 --output "$OUT/$task" \
        --set dataset="$OUT/$task/samples.jsonl" --set eval_dataset="$task" \
        --set max_steps=1000 --set eval_every=250
    $EXPLORL compare grpo --seeds 3 --output "$OUT/$task" --set dataset="$task" \
        --set max_steps=62 --set eval_every=0
    for seed in 0 1 2; do
        for beta in 0 1 4; do
            $EXPLORL eval "$OUT/$task/ilql/seed$seed" --dataset "$task" --pass-k "" \
                --ilql-beta "$beta" --json > "$OUT/$task/ilql/seed$seed/eval_beta$beta.json"
        done
    done
done
.venv/bin/python benchmarks/ilql_report.py "$OUT" docs/img/ilql
