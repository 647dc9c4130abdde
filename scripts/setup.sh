#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install hfpref into it.
# Idempotent: a second run reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi

# torch first, pinned, so pip does not resolve the bare `torch>=2.4` requirement to a multi-GB build
# on machines that have a local CPU wheel; an already-installed torch (e.g. a CUDA build) is kept.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==${HFPREF_TORCH_VERSION:-2.13.0}"
fi

stamp=.venv/.hfpref-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import hfpref" 2>/dev/null; then
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi
