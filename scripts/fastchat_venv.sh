#!/usr/bin/env bash
# A virtualenv with FastChat 0.2.36 (the real one, unmodified) for the compatibility tests.
# fschat 0.2.36 needs pydantic 1, so it cannot share .venv (pydantic 2); this pin set
# resolves together. Usage: scripts/fastchat_venv.sh [DIR] (default .venv-fastchat).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-fastchat}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.fastchat-installed"
if [[ -f "$STAMP" ]]; then
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet \
  "fschat[model_worker]==0.2.36" "transformers==4.57.6" "pydantic==1.10.27" \
  "fastapi==0.125.0" "torch==2.13.0"
touch "$STAMP"
