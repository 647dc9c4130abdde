"""Benchmark: summed response log-probs, three ways, side by side in one process on one loaded model.

(a) one sequence at a time, full logits and full-vocab log-softmax;
(b) fixed batches of 16 sequences in input order, right-padded, full logits and full-vocab
    log-softmax in float32 (the way TRL's reference-log-prob precompute has long done it);
(c) ours: ``hfpref.steps.logprobs.ResponseLogProbs`` (token-budget batches, prompt computed once per group,
    logits only at response positions);
(d) with ``--compile``: (c) with ``compile=True`` (decoder layers through ``torch.compile``), on a
    copy of the model so (a)-(c) stay eager; its one-off compile time is reported, not timed in.

The model has random weights and a real shape; the workload is N responses per prompt with
log-normal lengths (responses 50..1500 tokens, prompts 16..512), random token ids. Methods run
interleaved (the order rotates each repeat) and medians are reported. (a) runs on a fixed random
subsample of the sequences and its throughput is extrapolated (``a.subsampled``). Prints one JSON
object (and writes it to ``--output`` if given).

Throughput counts real tokens: the prompt + response tokens of every sequence, as (a) processes
them. Padding efficiency is real (non-pad) tokens / token slots processed. Peak memory is the
increase over the loaded model during one run: ``torch.cuda.max_memory_allocated`` on a GPU,
the process's resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) on a
CPU. On a GPU the roofline fraction is useful FLOPs / (time x 989 TFLOP/s, H100 dense bf16), where
useful FLOPs are the least work the task needs: every layer matmul over each distinct token (a
prompt once per group), the LM head over response tokens only, and causal attention.

Examples:
  python benchmarks/bench_logprobs.py                       # CPU, ~50M params, a few minutes on 2 cores
  python benchmarks/bench_logprobs.py --device cuda --shape qwen2-1.5b --dtype bfloat16 --prompts 192
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import emit_report, model_sizes  # noqa: E402
from hfpref.steps.logprobs import ResponseLogProbs  # noqa: E402

H100_BF16_DENSE_FLOPS = 989e12


def _qwen2(**size: int) -> Qwen2Config:
    """A Qwen2 config with the given sizes and everything else as Qwen2-0.5B/1.5B have it."""
    return Qwen2Config(
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        **size,
    )


SHAPES = {
    "cpu-50m": lambda: LlamaConfig(
        vocab_size=32000,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **model_sizes(512, 1408, 8, 8, 4),
    ),
    "qwen2-0.5b": lambda: _qwen2(**model_sizes(896, 4864, 24, 14, 2)),
    "qwen2-1.5b": lambda: _qwen2(**model_sizes(1536, 8960, 28, 12, 2)),
}

Groups = list[list[tuple[list[int], int]]]
LABELS = {
    "a": "a_one_at_a_time",
    "b": "b_fixed_batch16_full_logits",
    "c": "c_ours",
    "d": "d_ours_compiled",
}


# ---- workload ------------------------------------------------------------------------------------


def log_normal_lengths(rng: np.random.Generator, n: int, median: float, sigma: float, low: int, high: int):
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), low, high).astype(int)


def make_workload(args: argparse.Namespace, vocab: int) -> Groups:
    rng = np.random.default_rng(args.seed)
    prompt_lengths = log_normal_lengths(rng, args.prompts, 128, 0.7, 16, 512)
    groups = []
    for prompt_length in prompt_lengths:
        prompt = rng.integers(3, vocab, prompt_length).tolist()
        lengths = log_normal_lengths(rng, args.n, args.response_median, 0.8, args.min_len, args.max_len)
        groups.append([(prompt + rng.integers(3, vocab, n).tolist(), len(prompt)) for n in lengths])
    return groups


def describe_lengths(values: list[int]) -> dict[str, float]:
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


# ---- the three methods -------------------------------------------------------------------------


def one_at_a_time(model, sequences: list[tuple[list[int], int]]) -> list[float]:
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for tokens, start in sequences:
            logits = model(input_ids=torch.tensor([tokens], device=device), use_cache=False).logits[0]
            logps = logits.float().log_softmax(-1)[start - 1 : -1]
            targets = torch.tensor(tokens[start:], device=device)
            out.append(logps.gather(1, targets[:, None]).sum())
        return torch.stack(out).tolist()


def fixed_batches(
    model, sequences: list[tuple[list[int], int]], batch_size: int = 16
) -> tuple[list[float], int]:
    """Returns the sums and the number of token slots processed (padding included)."""
    device = next(model.parameters()).device
    out, slots = [], 0
    with torch.inference_mode():
        for begin in range(0, len(sequences), batch_size):
            batch = sequences[begin : begin + batch_size]
            width = max(len(t) for t, _ in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            response = torch.zeros(len(batch), width, dtype=torch.bool)
            for b, (tokens, start) in enumerate(batch):
                ids[b, : len(tokens)] = torch.tensor(tokens)
                mask[b, : len(tokens)] = 1
                response[b, start : len(tokens)] = True
            ids, mask, response = ids.to(device), mask.to(device), response.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logps = logits.float().log_softmax(-1)[:, :-1]
            per_token = logps.gather(2, ids[:, 1:, None])[..., 0] * response[:, 1:]
            out.append(per_token.sum(1))
            slots += ids.numel()
            del logits, logps, per_token
        return torch.cat(out).tolist(), slots


# ---- measurement ---------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory above the level at start, for one run."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")  # reset the resident high-water mark
            self.start = _proc_status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.peak = _proc_status_kb("VmHWM") * 1024 - self.start


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):  # give freed heap pages back, so the next high-water mark is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, int, object]:
    with PeakMemory(device) as memory:
        begin = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - begin
    return elapsed, memory.peak, result


def useful_flops(config, groups: Groups) -> float:
    """Least forward FLOPs the task needs (see the module docstring)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = config.num_key_value_heads
    per_token_layer = 2 * (hidden * heads * head_dim + 2 * hidden * kv * head_dim + heads * head_dim * hidden)
    per_token_layer += 2 * 3 * hidden * config.intermediate_size
    attention_per_context = 4 * heads * head_dim  # QK^T and AV, per query per key, per layer
    total = 0.0
    for group in groups:
        prompt = group[0][1]
        distinct = prompt + sum(len(t) - prompt for t, _ in group)
        total += layers * per_token_layer * distinct
        total += 2 * hidden * config.vocab_size * sum(len(t) - s for t, s in group)
        contexts = prompt * (prompt + 1) / 2 + sum(
            (len(t) * (len(t) + 1) - prompt * (prompt + 1)) / 2 for t, _ in group
        )
        total += layers * attention_per_context * contexts
    return total


# ---- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-50m")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--token-budget", type=int, default=None, help="(c)'s budget; default 8192 CPU, 32768 GPU"
    )
    parser.add_argument(
        "--logit-chunk-mb",
        type=int,
        default=256,
        help="(c)'s float32 log-softmax block (library default 256)",
    )
    parser.add_argument("--compile", action="store_true", help="also run (d): (c) with torch.compile")
    parser.add_argument("--a-sequences", type=int, default=6, help="sequences (a) runs per repeat")
    parser.add_argument("--min-len", type=int, default=50)
    parser.add_argument("--max-len", type=int, default=1500)
    parser.add_argument("--response-median", type=float, default=300)
    parser.add_argument("--attn", default="sdpa", help="the model's own attention, used by (a) and (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    budget = args.token_budget or (32768 if device.type == "cuda" else 8192)
    config = SHAPES[args.shape]()
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=args.attn).eval()
    params = sum(p.numel() for p in model.parameters())

    groups = make_workload(args, config.vocab_size)
    sequences = [s for group in groups for s in group]
    real_tokens = sum(len(t) for t, _ in sequences)
    rng = np.random.default_rng(args.seed + 1)
    a_pick = sorted(rng.choice(len(sequences), min(args.a_sequences, len(sequences)), replace=False).tolist())
    a_sequences = [sequences[i] for i in a_pick]
    a_tokens = sum(len(t) for t, _ in a_sequences)

    scorer = ResponseLogProbs(model, token_budget=budget, logit_chunk_mb=args.logit_chunk_mb)
    runners = {"c": scorer.runner}
    warm = groups[:1]  # warm-up: kernels, allocator, thread pools
    one_at_a_time(model, warm[0][:2])
    fixed_batches(model, warm[0])
    scorer(warm)

    methods: dict[str, Callable[[], object]] = {
        "a": lambda: one_at_a_time(model, a_sequences),
        "b": lambda: fixed_batches(model, sequences),
        "c": lambda: scorer(groups),
    }
    compile_s = None
    if args.compile:
        begin = time.perf_counter()
        compiled = ResponseLogProbs(
            copy.deepcopy(model), token_budget=budget, logit_chunk_mb=args.logit_chunk_mb, compile=True
        )
        compiled(groups[:4])  # the first passes of new sizes specialise the dynamic graphs
        compile_s = time.perf_counter() - begin
        runners["d"] = compiled.runner
        methods["d"] = lambda: compiled(groups)
    times: dict[str, list[float]] = {m: [] for m in methods}
    peaks: dict[str, list[int]] = {m: [] for m in methods}
    results: dict[str, object] = {}
    errors: dict[str, str] = {}
    stats: dict[str, dict[str, int]] = {}
    order = list(methods)
    for repeat in range(args.repeats):
        shift = repeat % len(order)
        for name in order[shift:] + order[:shift]:
            if name in errors:
                continue
            try:
                before = {m: dict(r.stats) for m, r in runners.items()}
                elapsed, peak, result = timed(device, methods[name])
            except torch.cuda.OutOfMemoryError as error:  # (b) can exceed a GPU with a large vocabulary
                errors[name] = f"out of memory: {error}"[:300]
                gc.collect()
                torch.cuda.empty_cache()
                continue
            times[name].append(elapsed)
            peaks[name].append(peak)
            results[name] = result
            if name in runners:
                stats[name] = {k: runners[name].stats[k] - before[name][k] for k in runners[name].stats}

    c_sums = [s for group in results["c"] for s in group] if "c" in results else None
    report_methods = {}
    for name in methods:
        label = LABELS[name]
        if not times[name]:
            report_methods[label] = {"error": errors.get(name, "not run")}
            continue
        median = statistics.median(times[name])
        tokens = a_tokens if name == "a" else real_tokens
        entry = {
            "tokens_per_s": tokens / median,
            "median_s": median,
            "times_s": times[name],
            "peak_memory_bytes": max(peaks[name]),
            "peak_memory_gib": max(peaks[name]) / 2**30,
        }
        if name == "a":
            entry.update(
                subsampled=True,
                sequences=len(a_sequences),
                tokens=a_tokens,
                extrapolated_full_s=real_tokens / entry["tokens_per_s"],
                padding_efficiency=1.0,
            )
            if c_sums is not None:
                entry["max_abs_diff_vs_c"] = max(
                    abs(x - c_sums[i]) for x, i in zip(results["a"], a_pick, strict=True)
                )
        elif name == "b":
            sums, slots = results["b"]
            entry.update(padding_efficiency=real_tokens / slots, processed_tokens=slots)
            if c_sums is not None:
                entry["max_abs_diff_vs_c"] = max(abs(x - y) for x, y in zip(sums, c_sums, strict=True))
        else:
            runner, c_stats = runners[name], stats[name]
            entry.update(
                mode=runner.mode,
                attention_kernel=runner.kernel,
                kernel_check=runner.kernel_check,
                fallback_reason=runner.fallback_reason,
                token_budget=budget,
                logit_chunk_mb=args.logit_chunk_mb,
                forward_passes=c_stats["forward_passes"],
                processed_tokens=c_stats["processed_tokens"],
                padding_efficiency=1 - c_stats["padding_tokens"] / c_stats["processed_tokens"],
                processed_per_real_token=c_stats["processed_tokens"] / real_tokens,
            )
            if name == "d":
                sums = [s for group in results["d"] for s in group]
                entry.update(
                    compiled=runner.compiled,
                    compile_error=runner.compile_error,
                    compile_and_warmup_s=compile_s,
                    max_abs_diff_vs_c=max(abs(x - y) for x, y in zip(sums, c_sums, strict=True))
                    if c_sums
                    else None,
                )
        report_methods[label] = entry

    def rate(name: str) -> float | None:
        return report_methods.get(LABELS[name], {}).get("tokens_per_s")

    def memory(name: str) -> int | None:
        return report_methods.get(LABELS[name], {}).get("peak_memory_bytes")

    ratios = {}
    for ours in ("c", "d"):
        if rate(ours) and rate("a"):
            ratios[f"{ours}_over_a"] = rate(ours) / rate("a")
        if rate(ours) and rate("b"):
            ratios[f"{ours}_over_b"] = rate(ours) / rate("b")
            ratios[f"{ours}_peak_memory_over_b"] = memory(ours) / memory("b")

    report = {
        "benchmark": "bench_logprobs",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "shape": args.shape,
        "parameters": params,
        "dtype": args.dtype,
        "attn_implementation": args.attn,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "workload": {
            "prompts": args.prompts,
            "responses_per_prompt": args.n,
            "sequences": len(sequences),
            "real_tokens": real_tokens,
            "response_tokens": sum(len(t) - s for t, s in sequences),
            "prompt_lengths": describe_lengths([g[0][1] for g in groups]),
            "response_lengths": describe_lengths([len(t) - s for t, s in sequences]),
        },
        "repeats": args.repeats,
        "methods": report_methods,
        "ratios": ratios,
    }
    if device.type == "cuda":
        flops = useful_flops(config, groups)
        fractions = {}
        for name in methods:
            if rate(name):
                fractions[name] = flops / real_tokens * rate(name) / H100_BF16_DENSE_FLOPS
        report["roofline"] = {
            "peak_flops": H100_BF16_DENSE_FLOPS,
            "useful_flops": flops,
            "useful_flops_per_real_token": flops / real_tokens,
            "fraction": fractions,
        }
    report["targets"] = targets(report, device)
    if "d" in methods:
        report["targets_compiled"] = targets(report, device, ours="d")
    emit_report(report, args.output)


def targets(report: dict, device: torch.device, ours: str = "c") -> dict[str, object]:
    """The issue's targets for method ``ours`` ("c", or "d" for the compiled run)."""
    ratios = report["ratios"]
    entry = report["methods"][LABELS[ours]]
    x = ours
    if device.type == "cuda":
        checks = {
            f"{x}_over_b_at_least_2": ratios.get(f"{x}_over_b", 0) >= 2,
            f"{x}_over_a_at_least_10": ratios.get(f"{x}_over_a", 0) >= 10,
            f"{x}_memory_at_most_a_third_of_b": ratios.get(f"{x}_peak_memory_over_b", 1) <= 1 / 3,
        }
        if report["shape"] == "qwen2-1.5b":
            checks[f"{x}_roofline_at_least_35pct"] = report["roofline"]["fraction"].get(x, 0) >= 0.35
    else:
        checks = {
            f"{x}_over_b_at_least_1.5": ratios.get(f"{x}_over_b", 0) >= 1.5,
            f"{x}_memory_at_most_half_of_b": ratios.get(f"{x}_peak_memory_over_b", 1) <= 0.5,
            f"{x}_padding_efficiency_at_least_95pct": entry.get("padding_efficiency", 0) >= 0.95,
        }
    checks["all_met"] = all(checks.values())
    return checks


if __name__ == "__main__":
    main()
