#!/usr/bin/env bash
# Create (if needed) the venv used by tests/sdk/ and install the official `openai` and
# `anthropic` and `google-genai` Python SDKs into it. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SDK_VENV:-$ROOT/.venv-sdk}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi

# openai: the client-compatibility test; anthropic and google-genai: their published types check
# what detour sends to those providers.
if ! "$PY" -c 'import openai, anthropic, google.genai as g, sys; sys.exit(openai.__version__ != "3.52.0" or anthropic.__version__ != "2.11.0" or g.__version__ != "3.4.0")' >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check "openai==3.52.0" "anthropic==2.11.0" "google-genai==3.4.0"
fi

echo "$PY"
