#!/usr/bin/env bash
# Create (if needed) the venv used by tests/sdk/openai_sdk_check.py and
# install the official `openai` Python SDK into it. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SDK_VENV:-$ROOT/.venv-sdk}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi

if ! "$PY" -c 'import openai, sys; sys.exit(openai.__version__ != "3.52.0")' >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check "openai==3.52.0"
fi

echo "$PY"
