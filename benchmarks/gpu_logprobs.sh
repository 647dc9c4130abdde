#!/usr/bin/env bash
# One prepared GPU run for summed response log-probs (hfpref.steps.logprobs), sized for under 5 minutes on
# one H100 (about 3.5 expected; results of 2026-11-27 in benchmarks/results/h100/):
#   1. env.json: torch / transformers / CUDA versions, the GPU, which fused varlen kernels exist;
#   2. bench_qwen2-0.5b.json, bench_qwen2-1.5b.json: benchmarks/bench_logprobs.py in bfloat16 with sdpa,
#      (a) one at a time on 48 sequences, (b) fixed batches of 16 with full logits, (c) ours;
#      each JSON records (c)'s attention kernel, its check against the exact loop, and the targets;
#      the 1.5B run adds (d), (c) with compile=True (torch.compile, about 20 s once);
#   3. pytest_cuda.log: the log-prob and reward tests, which run on cuda:0 when CUDA is available
#      (skipped when pytest, trl or datasets are missing).
# Everything goes to $OUT (default ./gpu-out); status.txt has each step's exit code (124 = timed out).
# Usage: OUT=/some/dir PYTHON=python3 bash benchmarks/gpu_logprobs.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # (b)'s multi-GB logits fragment the allocator
export TOKENIZERS_PARALLELISM=false

"$PYTHON" - > "$OUT/env.json" 2>&1 <<'EOF'
import importlib.util, json, torch, transformers
print(json.dumps({
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch_varlen": importlib.util.find_spec("torch.nn.attention.varlen") is not None,
    "flash_attn": importlib.util.find_spec("flash_attn") is not None,
}, indent=2))
EOF
echo "env exit $?" >> "$OUT/status.txt"

run_bench() {  # shape, time limit in seconds, extra flags
  timeout "$2" "$PYTHON" benchmarks/bench_logprobs.py --device cuda --shape "$1" --dtype bfloat16 \
    --prompts 128 --repeats 3 --a-sequences 48 "${@:3}" --output "$OUT/bench_$1.json" > "$OUT/bench_$1.log" 2>&1
  echo "bench $1 exit $?" >> "$OUT/status.txt"
}
run_bench qwen2-0.5b 100
run_bench qwen2-1.5b 200 --compile

if "$PYTHON" -c "import pytest, trl, datasets" 2>/dev/null; then
  timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_logprobs.py tests/test_rewards.py \
    > "$OUT/pytest_cuda.log" 2>&1
  echo "pytest exit $?" >> "$OUT/status.txt"
else
  echo "pytest skipped: pytest, trl or datasets missing" >> "$OUT/status.txt"
fi
cat "$OUT/status.txt"
