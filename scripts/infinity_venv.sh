#!/usr/bin/env bash
# Create .venv-infinity with Infinity (infinity-emb), the baseline server of
# bench/http_load.py. Its own venv: Infinity pins numpy<2, sentence-transformers<4 and an older
# FastAPI/uvicorn than Quarry. Idempotent: a second run only checks what is installed.
#
# The CPU build of torch first (a bare `torch` requirement pulls a multi-GB CUDA build), then
# infinity-emb with the `server` (FastAPI, uvicorn, typer CLI) and `torch` (sentence-transformers)
# extras. Everything installs from binary wheels; nothing compiles. It serves the MiniLM bundled
# with Quarry (a local directory) offline, as bench/http_load.py starts it:
#
#   DIR=$(.venv/bin/python -c "from embedder import resolve_model_path as r; print(r('minilm'))")
#   HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 INFINITY_HOME=.venv-infinity .venv-infinity/bin/infinity_emb v2 \
#     --model-id "$DIR" --served-model-name all-MiniLM-L6-v2 --engine torch --device cpu \
#     --host 127.0.0.1 --port 7997
#   curl -s 127.0.0.1:7997/embeddings -H 'content-type: application/json' \
#     -d '{"input": ["hello"], "model": "all-MiniLM-L6-v2"}'
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv-infinity
INFINITY_VERSION=${INFINITY_VERSION:-0.0.78}
# Where importing infinity_emb makes its .infinity_cache (else the working directory).
export INFINITY_HOME=$VENV DO_NOT_TRACK=1
if [[ ! -x $VENV/bin/python ]]; then
  "$PY" -m venv "$VENV"
fi
if ! $VENV/bin/python -c "import torch" 2>/dev/null; then
  $VENV/bin/python -m pip install -q --upgrade pip >/dev/null
  $VENV/bin/python -m pip install -q "torch==${QUARRY_TORCH_VERSION:-2.13.0}" \
    || $VENV/bin/python -m pip install -q "torch==${QUARRY_TORCH_VERSION:-2.13.0}" \
         --index-url https://download.pytorch.org/whl/cpu
fi
if ! $VENV/bin/python -c "import infinity_emb, sys; sys.exit(infinity_emb.__version__ != '$INFINITY_VERSION')" 2>/dev/null; then
  $VENV/bin/python -m pip install -q --prefer-binary --only-binary=:all: \
    "infinity-emb[server,torch]==${INFINITY_VERSION}"
fi
$VENV/bin/infinity_emb v2 --help >/dev/null
echo "Infinity ${INFINITY_VERSION} installed in ${VENV}"
