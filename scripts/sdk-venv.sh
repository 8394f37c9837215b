#!/usr/bin/env bash
# Create (if needed) the venv used by tests/sdk/ and install the official `openai` and
# `anthropic`, `google-genai` and `botocore` Python packages into it. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SDK_VENV:-$ROOT/.venv-sdk}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi

# openai: the client-compatibility test; anthropic, google-genai and botocore (bedrock-runtime's
# service model, SigV4 and event-stream): their published definitions check what detour sends.
if ! "$PY" -c 'import openai, anthropic, botocore, google.genai as g, sys; sys.exit(openai.__version__ != "3.52.0" or anthropic.__version__ != "2.11.0" or g.__version__ != "3.4.0" or botocore.__version__ != "1.44.5")' >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check "openai==3.52.0" "anthropic==2.11.0" "google-genai==3.4.0" "botocore==1.44.5"
fi

echo "$PY"
