"""Where the time of ``hfpref.steps.logprobs.ResponseLogProbs`` goes, and how its two knobs move it.

Companion to ``bench_logprobs.py`` (same shapes, same workload): one model load, then
  * for each (token budget, logit chunk MB) pair: the median time of a full run, and of the
    backbone alone (hidden states at the response positions, no LM head), so the head's share shows;
  * a ``torch.profiler`` table of the kernels of one run with the first pair, by device time.
Prints one JSON object (and writes it to ``--output``); the kernel table goes to stderr.

Usage (GPU): python benchmarks/profile_logprobs.py --device cuda --shape qwen2-1.5b --dtype bfloat16 \
                 --prompts 128 --budgets 32768,65536 --chunks 256,1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_logprobs import H100_BF16_DENSE_FLOPS, SHAPES, make_workload, useful_flops  # noqa: E402

from benchmarks.common import emit_report  # noqa: E402
from hfpref.models.packing import SequenceQuery  # noqa: E402
from hfpref.steps.logprobs import ResponseLogProbs  # noqa: E402


def synchronized(device: torch.device, fn) -> float:
    begin = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


def backbone_only(scorer: ResponseLogProbs, groups) -> None:
    queries = [[SequenceQuery(t, range(s - 1, len(t) - 1)) for t, s in group] for group in groups]
    for _ in scorer.runner.run(queries):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-50m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--min-len", type=int, default=50)
    parser.add_argument("--max-len", type=int, default=1500)
    parser.add_argument("--response-median", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budgets", default="8192", help="comma-separated token budgets")
    parser.add_argument("--chunks", default="256", help="comma-separated logit chunk sizes in MB")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    config = SHAPES[args.shape]()
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).eval()
    groups = make_workload(args, config.vocab_size)
    flops = useful_flops(config, groups)
    peak = H100_BF16_DENSE_FLOPS if device.type == "cuda" else None

    variants = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        for chunk in [int(c) for c in args.chunks.split(",")]:
            scorer = ResponseLogProbs(model, token_budget=budget, logit_chunk_mb=chunk)
            scorer(groups[:1])  # warm-up
            full = [synchronized(device, lambda s=scorer: s(groups)) for _ in range(args.repeats)]
            trunk = [
                synchronized(device, lambda s=scorer: backbone_only(s, groups)) for _ in range(args.repeats)
            ]
            variants.append(
                {
                    "token_budget": budget,
                    "logit_chunk_mb": chunk,
                    "chunk_rows": scorer.chunk_rows,
                    "kernel": scorer.runner.kernel,
                    "full_s": statistics.median(full),
                    "backbone_s": statistics.median(trunk),
                    "head_share": 1 - statistics.median(trunk) / statistics.median(full),
                    "roofline_fraction": flops / (statistics.median(full) * peak) if peak else None,
                }
            )
            print(json.dumps(variants[-1]), file=sys.stderr, flush=True)

    first = variants[0]
    scorer = ResponseLogProbs(
        model, token_budget=first["token_budget"], logit_chunk_mb=first["logit_chunk_mb"]
    )
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        scorer(groups)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)

    result = {"shape": args.shape, "device": str(device), "useful_flops": flops, "variants": variants}
    emit_report(result, args.output)


if __name__ == "__main__":
    main()
