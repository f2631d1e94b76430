#!/usr/bin/env bash
# The test command: install (idempotent), bring up Postgres + Redis, lint, type-check, test.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k search`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if ! bash scripts/services.sh; then
  if [[ "${QUARRY_REQUIRE_SERVICES:-0}" == "1" ]]; then
    echo "Postgres and redis-server are required (QUARRY_REQUIRE_SERVICES=1)"; exit 1
  fi
  echo "warning: tests marked 'services' will be skipped"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
