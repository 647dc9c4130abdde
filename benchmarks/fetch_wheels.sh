#!/usr/bin/env bash
# Fetch, here (PyPI reachable), the wheels the prepared GPU run needs and the device image lacks, into
# benchmarks/.wheels/ (git-ignored; the device `run` call names it in `carry`, see benchmarks/gpu_issue15.sh).
# The device has no network: benchmarks/gpu_logprobs.sh installs from this folder with
# `pip install --no-index --no-deps` (benchmarks/install_wheels.sh). The wheels:
# - liger-kernel: pure Python (py3-none-any), needs torch and triton, which the device's CUDA torch image has
#   (/work/.library/device/KINDS.md: torch 2.11.0, triton 3.6.0);
# - transformers 5.24.0: the version hfpref's continuous sampling backend supports (the image has 5.17.0,
#   which that backend refuses); its other needs (huggingface_hub 1.33, tokenizers 0.23.2, safetensors 0.8)
#   are in the image at versions it accepts,
# - regex for CPython 3.12 (the device's Python): transformers checks regex >= 2025.10.22 on import, and the
#   image's version is not on record.
# Versions and sha256 are pinned so the run measures what was prepared here.
# Usage: bash benchmarks/fetch_wheels.sh        (PYTHON=... to choose the pip; any Python with pip works)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEST=benchmarks/.wheels
LIGER=liger-kernel==0.8.5
LIGER_WHEEL=liger_kernel-0.8.5-py3-none-any.whl
LIGER_SHA256=60789cd576af073ab9b192b570d2597fd0cdad489cd62fb44fb16256d43754c9
TRANSFORMERS=transformers==5.24.0
TRANSFORMERS_WHEEL=transformers-5.24.0-py3-none-any.whl
TRANSFORMERS_SHA256=ff5ebedf9359f94bb63772b6380eba6e7104d010cbbb2cb82c788817ea7486f6
REGEX=regex==2026.11.19
REGEX_WHEEL=regex-2026.11.19-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl
REGEX_SHA256=8a966a5afe94ed9fb06deeecd9e3e51c3a5ab7d920e13f8128338e3fcdfed2b0

mkdir -p "$DEST"
if [ ! -f "$DEST/$LIGER_WHEEL" ]; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "$LIGER"
fi
if [ ! -f "$DEST/$TRANSFORMERS_WHEEL" ]; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "$TRANSFORMERS"
fi
if [ ! -f "$DEST/$REGEX_WHEEL" ]; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "$REGEX"
fi
sha256sum -c - <<SUMS
$LIGER_SHA256  $DEST/$LIGER_WHEEL
$TRANSFORMERS_SHA256  $DEST/$TRANSFORMERS_WHEEL
$REGEX_SHA256  $DEST/$REGEX_WHEEL
SUMS
ls -l "$DEST"
