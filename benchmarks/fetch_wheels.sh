#!/usr/bin/env bash
# Fetch, here (PyPI reachable), the wheels the prepared GPU run needs and the device image lacks, into
# benchmarks/.wheels/ (git-ignored; the device `run` call names it in `carry`, see benchmarks/gpu_issue15.sh).
# The device has no network: benchmarks/gpu_logprobs.sh installs from this folder with
# `pip install --no-index --no-deps`. Today that is liger-kernel alone: pure Python (py3-none-any, any CPU
# and Python >= 3.10), it needs torch and triton, which the device's CUDA torch image has
# (/work/.library/device/KINDS.md: torch 2.11.0, triton 3.6.0). The version and the wheel's sha256 are pinned
# so the run measures what was prepared here.
# Usage: bash benchmarks/fetch_wheels.sh        (PYTHON=... to choose the pip; any Python with pip works)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEST=benchmarks/.wheels
LIGER=liger-kernel==0.8.5
LIGER_WHEEL=liger_kernel-0.8.5-py3-none-any.whl
LIGER_SHA256=60789cd576af073ab9b192b570d2597fd0cdad489cd62fb44fb16256d43754c9

mkdir -p "$DEST"
if [ ! -f "$DEST/$LIGER_WHEEL" ]; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "$LIGER"
fi
echo "$LIGER_SHA256  $DEST/$LIGER_WHEEL" | sha256sum -c -
ls -l "$DEST"
