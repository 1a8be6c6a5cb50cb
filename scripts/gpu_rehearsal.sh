#!/usr/bin/env bash
# The GPU check as it will run on the GPU machine, rehearsed on this CPU: a fresh virtualenv
# holding only that machine's packages (transformers 5.17.0, accelerate 1.15.0, peft,
# safetensors, numpy, pyyaml, tqdm, matplotlib, tensorboard, pandas, pyarrow, pytest; torch is
# the local CPU wheel), no install of explorl, no datasets or math-verify; then
# `benchmarks/gpu_check.py --device cpu --small`. Exits non-zero when a section fails.
#   bash scripts/gpu_rehearsal.sh [OUT_DIR]     (default: runs/gpu_rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gpu
OUT=${1:-runs/gpu_rehearsal}
python3 -m venv --clear $VENV
$VENV/bin/python -m pip install --quiet --upgrade pip
$VENV/bin/python -m pip install --quiet "torch==2.13.0"
$VENV/bin/python -m pip install --quiet "transformers==5.17.0" "accelerate==1.15.0" peft \
    safetensors numpy pyyaml tqdm matplotlib tensorboard pandas pyarrow pytest
for absent in datasets math_verify reasoning_gym trl deepspeed explorl; do
  if $VENV/bin/python -c "import $absent" 2>/dev/null; then
    echo "gpu_rehearsal: $absent is installed, and the GPU machine does not have it" >&2
    exit 1
  fi
done
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} $VENV/bin/python benchmarks/gpu_check.py --device cpu \
    --small --out "$OUT"
