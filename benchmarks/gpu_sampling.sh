#!/usr/bin/env bash
# One prepared GPU run for sampling (issue 15, "GPU: Sampling"): padded generate, the way
# hfpref.steps.sampling.ResponseSampler's "transformers" backend samples, against transformers' continuous
# batching (paged KV cache, what generate_batch runs) as is and as the sampler's "continuous" backend runs it
# (deterministic per prompt); target >= 3x tokens/s. Sized for about 5 minutes on one H200, 6 at most (the
# step timeouts add up to 360 s):
#   1. env.json: torch / transformers / CUDA versions, the GPU, whether flash_attn / kernels are installed
#      (continuous batching switches to flash attention by itself when a flash kernel is there);
#   2. bench_qwen2-0.5b.json, bench_qwen2-1.5b.json: benchmarks/bench_sampling.py in bfloat16 with sdpa on
#      random-weight models of the two shapes, 64 prompts x N = 8 responses, lengths 50..1000 (about 150k
#      new tokens), methods in the order a, c, b (a step cut off by its timeout keeps a and c, the pair
#      the target is about): (a) padded generate on a seeded subset of 12 prompts, starting no call after
#      10 s (a call is ~7 prompts x 8 rows, ~1000 decode steps of ~25 ms, launch-bound: ~25 s; so one
#      call; its tokens/s is per call, so a subset measures it; its first call has the shortest prompts,
#      the most rows, which if anything favours (a)); (c) the "continuous" backend's path (greedy over
#      per-request seeded Gumbel noise) on all 512 responses; (b) transformers' own sampling on the same.
#      Each JSON has the tokens/s, ratio_c_over_a (the target), ratio_c_over_b (the cost of determinism),
#      ratio_b_over_a, peak memory, (b)'s and (c)'s setup (cache + CUDA graphs) apart, (c)'s tokens_sha256.
#      Estimate per shape: start + random init on the GPU ~20 s, (a) ~25-40 s, (c) and (b) each: setup
#      ~20-40 s and generation ~15-35 s (150k tokens at 5-10k tokens/s): ~150 s for 0.5B, more for 1.5B.
# Everything goes to $OUT (default ./gpu-out); status.txt has each step's exit code (124 = timed out). The
# JSON is written after each method, so a step cut off by its timeout still leaves the methods it finished.
# Usage: OUT=/some/dir PYTHON=python3 bash benchmarks/gpu_sampling.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1  # the machine has no network: never try to fetch a kernel from the Hub
source benchmarks/install_wheels.sh "$OUT"  # transformers 5.24 for the continuous backend (c)

timeout 30 "$PYTHON" - > "$OUT/env.json" 2>&1 <<'PY'
import importlib.util, json, torch, transformers
print(json.dumps({
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    if torch.cuda.is_available() else None,
    "flash_attn": importlib.util.find_spec("flash_attn") is not None,
    "flash_attn_interface": importlib.util.find_spec("flash_attn_interface") is not None,
    "kernels": importlib.util.find_spec("kernels") is not None,
}, indent=2))
PY
echo "env exit $?" >> "$OUT/status.txt"

run_bench() {  # shape, time limit in seconds, extra flags
  timeout "$2" "$PYTHON" benchmarks/bench_sampling.py --device cuda --shape "$1" --dtype bfloat16 \
    --prompts 64 --n 8 --min-new-tokens 50 --max-new-tokens 1000 --a-prompts 12 --a-seconds 10 \
    --methods a,c,b \
    "${@:3}" --output "$OUT/bench_$1.json" > "$OUT/bench_$1.log" 2>&1
  echo "bench $1 exit $?" >> "$OUT/status.txt"
}
run_bench qwen2-0.5b 165
run_bench qwen2-1.5b 165
cat "$OUT/status.txt"
