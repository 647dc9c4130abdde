#!/usr/bin/env bash
# The whole test suite: install what is missing, lint, then run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the Label Studio server that tests/test_labelstudio.py starts, in its own venv (see the script for why);
# the main job does not need it, so only the test command installs it
bash scripts/setup_labelstudio.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
