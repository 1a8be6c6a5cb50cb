#!/usr/bin/env bash
# The tests marked openenv (a real OpenEnv server on 127.0.0.1) in .venv-openenv: explorl with
# its openenv extra, which pulls a web stack (fastapi, uvicorn, gradio) the core does not need.
# Called by .ci/run. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-openenv
.venv-openenv/bin/python -m pip install --quiet --upgrade pip
.venv-openenv/bin/python -m pip install --quiet "torch==2.13.0"
.venv-openenv/bin/python -m pip install --quiet -e ".[dev,openenv]"
.venv-openenv/bin/python -m pytest -q -m openenv -p no:cacheprovider
