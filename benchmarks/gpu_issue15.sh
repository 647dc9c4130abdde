#!/usr/bin/env bash
# Issue 15's whole GPU part in ONE device call of at most 9.5 minutes: benchmarks/gpu_logprobs.sh (log-probs:
# roofline with liger-kernel, 0.5B compiled; ~3.8 min expected, cut to end by LOGPROBS_S = 260 s) then
# benchmarks/gpu_sampling.sh (sampling: continuous batching vs padded generate; ~5 min expected, its step
# timeouts add up to 360 s) with the time left, everything ending by TOTAL_S = 570 s. Expected ~550 s together:
# little slack, so log-probs goes first: its steps follow a deadline (DEADLINE) and leave no process behind,
# and sampling's JSON is written after each method, so a cut at the end still keeps its numbers.
#
# How to run it (a session with an H200; 15 minutes of device time in all, so one call):
#   1. here, once:   bash benchmarks/fetch_wheels.sh      (liger-kernel, transformers 5.24.0 and regex wheels,
#                    15 MB, into benchmarks/.wheels/; installed by benchmarks/install_wheels.sh)
#   2. the device tool's `run` with
#        command:   PYTHON=python3 bash benchmarks/gpu_issue15.sh
#        carry:     ["benchmarks/.wheels"]
#        timeout_s: 600
#      (the script ends by itself after TOTAL_S = 570 s; the machine's start, ~1-2 min, is not in timeout_s).
#   3. the files come back under the reply's files_at: copy them to benchmarks/results/h200/ and fill in its
#      README (the template states the targets). The reply's output_tail already holds summary.txt.
#
# What lands in $OUT (default ./gpu-out): the device returns at most 8 files, so after both scripts ran into
# $OUT/logprobs/ and $OUT/sampling/ everything (logs, env.json, status.txt) is packed into
# $OUT/issue15.tar.gz and only the bench_*.json files stay loose beside it, with $OUT/summary.txt (each
# step's exit code and the headline numbers, also printed).
# Usage: OUT=/some/dir PYTHON=python3 bash benchmarks/gpu_issue15.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
export PYTHON="${PYTHON:-python3}"
TOTAL_S="${TOTAL_S:-570}"
LOGPROBS_S="${LOGPROBS_S:-260}"
START=$(date +%s)
END=$((START + TOTAL_S - 15)) # 15 s kept for packing and the summary
mkdir -p "$OUT/logprobs" "$OUT/sampling"
nvidia-smi > "$OUT/logprobs/nvidia-smi.txt" 2>&1

echo "== log-probs (until +$LOGPROBS_S s)"
OUT="$OUT/logprobs" DEADLINE=$((START + LOGPROBS_S)) RUN_PYTEST=0 bash benchmarks/gpu_logprobs.sh
echo "logprobs script exit $? after $(($(date +%s) - START)) s" >> "$OUT/logprobs/status.txt"

left=$((END - $(date +%s)))
echo "== sampling ($left s left)"
OUT="$OUT/sampling" timeout "$left" bash benchmarks/gpu_sampling.sh
echo "sampling script exit $? after $(($(date +%s) - START)) s" >> "$OUT/sampling/status.txt"

"$PYTHON" benchmarks/gpu_summary.py "$OUT/logprobs" "$OUT/sampling" > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
if tar czf "$OUT/issue15.tar.gz" -C "$OUT" logprobs sampling summary.txt; then
  # only bench_*.json stay loose (8 files at most come back): at most 3 a folder
  find "$OUT/logprobs" "$OUT/sampling" -type f ! -name 'bench_*.json' -delete
  for d in logprobs sampling; do
    ls "$OUT/$d"/bench_*.json 2> /dev/null | tail -n +4 | xargs -r rm -f
  done
fi
echo "total $(($(date +%s) - START)) s; files:"
find "$OUT" -type f | sort
