#!/usr/bin/env bash
# Install the Label Studio *server* into its own virtual environment, .venv-labelstudio (gitignored).
# Why a separate venv: label-studio 1.23 pins numpy<2.3, pyarrow<25 and openai<2, which would downgrade
# packages hfpref itself uses; the server is a separate process anyway, and hfpref's client
# (hfpref.human.labelstudio) talks to it over plain HTTP with `requests`, so nothing of it is imported.
# Idempotent: does nothing when the pinned version is already installed.
# HFPREF_SKIP_LABELSTUDIO=1 skips it (the Label Studio tests then skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${HFPREF_SKIP_LABELSTUDIO:-0}" = "1" ]; then
    echo "setup_labelstudio: skipped (HFPREF_SKIP_LABELSTUDIO=1)"
    exit 0
fi
VERSION="${HFPREF_LABELSTUDIO_VERSION:-1.23.2}"
PYTHON="${PYTHON:-python3}"
VENV=.venv-labelstudio
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" != "$VERSION" ]; then
    "$VENV/bin/python" -m pip install -q "label-studio==$VERSION"
fi

# A migrated, empty database (no users) to copy: the first migration of Label Studio's SQLite database
# takes about a minute on two cores, so tests copy this instead of migrating on every run.
TEMPLATE="$VENV/hfpref-template-data"
if [ ! -f "$TEMPLATE/label_studio.sqlite3" ]; then
    rm -rf "$TEMPLATE"
    mkdir -p "$TEMPLATE"
    LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false \
        "$VENV/bin/label-studio" init --data-dir "$TEMPLATE" -q > "$VENV/hfpref-template-init.log" 2>&1
fi
