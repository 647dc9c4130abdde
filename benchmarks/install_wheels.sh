# Sourced by the GPU scripts (gpu_logprobs.sh, gpu_sampling.sh; gpu_issue15.sh through them): installs the
# carried wheels of benchmarks/.wheels/ (benchmarks/fetch_wheels.sh) once per machine into /tmp/hfpref-wheels,
# offline (--no-index --no-deps), and puts that folder first on PYTHONPATH, so every step of a run measures
# the same versions: liger-kernel, and transformers 5.24 (the version hfpref's continuous backend supports;
# the device image has 5.17) with the regex its import-time version check asks for.
# Usage: source benchmarks/install_wheels.sh "$OUT"     (appends "wheels exit N" to $OUT/status.txt)
WHEELS_TARGET=/tmp/hfpref-wheels
if [ -f "$WHEELS_TARGET/.installed" ]; then
  echo "wheels: already in $WHEELS_TARGET" >> "$1/status.txt"
elif ls benchmarks/.wheels/*.whl > /dev/null 2>&1; then
  timeout 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$WHEELS_TARGET" benchmarks/.wheels/*.whl > "$1/wheels.log" 2>&1
  status=$?
  echo "wheels exit $status" >> "$1/status.txt"
  [ "$status" -eq 0 ] && touch "$WHEELS_TARGET/.installed"
else
  echo "wheels: none in benchmarks/.wheels/ (run benchmarks/fetch_wheels.sh here and carry it): the image's" \
    "transformers, no liger" >> "$1/status.txt"
fi
[ -d "$WHEELS_TARGET" ] && export PYTHONPATH="$WHEELS_TARGET${PYTHONPATH:+:$PYTHONPATH}"
