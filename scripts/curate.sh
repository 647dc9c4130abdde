#!/usr/bin/env bash
# The main job: install what is missing, then curate the embedded IFEval default into ./hfpref-release.
# Extra arguments go to `hfpref curate` (see `hfpref curate --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hfpref curate "$@"
