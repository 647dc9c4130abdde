"""Benchmark: sampling N responses per prompt, three ways, side by side in one process on one loaded model.

(a) padded: ``model.generate`` on left-padded batches, the way ``hfpref.steps.sampling.ResponseSampler``
    does it today (its ``length_groups`` token-budget batches, its ``plain_generation_config``, its
    temperature warper and per-prompt Gumbel-noise processor);
(b) continuous batching: transformers' paged-KV-cache manager (``model.continuous_batching_context_manager``,
    what ``model.generate_batch`` runs), one request per response;
(c) the sampler's ``backend: "continuous"``: (b)'s manager and requests, but decoding greedily over
    per-request seeded Gumbel noise (``hfpref.steps.continuous_sampling``: its ``running_manager`` and the
    per-request seeds it sends), so each response is deterministic per prompt. (c) against (a) is the
    speed-up the sampler gets; (c) against (b) is the cost of determinism.

The model has random weights and a real shape (no download); the workload is tokenizer-free: random prompt
token ids of log-normal lengths (16..512, median 128) and, for each of the N responses of a prompt, an
output length drawn (seeded, log-normal) from ``--min-new-tokens``..``--max-new-tokens``. All methods
generate exactly those token counts: (a) with a logits processor that bans EOS before a row's length and
forces it at the length (``generate`` stops a batch once every row has ended, so the padded steps of rows
that ended early are its real cost); (b) and (c) with each request's own ``max_new_tokens`` and no EOS
(``generate_batch`` takes one ``max_new_tokens`` for all requests, so (b) adds requests to the manager
itself). The counts are checked (``lengths_exact``).

Throughput is generated tokens / second of generation. (b)'s and (c)'s one-off setup (cache allocation, CUDA-graph
warm-up) is timed apart (``setup_s``) and also reported folded in (``tokens_per_s_with_setup``). (a) gets a
short untimed warm-up ``generate`` first. Peak memory is the increase over the loaded model during one
run (see ``benchmarks.bench_logprobs.PeakMemory``); (b) allocates its paged cache up front from the free GPU
memory, so its peak says how big the cache was made, not how much the workload needed; (c) likewise.

Sampling differs on purpose: (a) and (c) are per-prompt deterministic (Gumbel noise from each prompt's
generator in (a), counter-based noise keyed on (response seed, token index) in (c); (c) reports a hash of
its tokens, ``tokens_sha256``, to compare across runs); (b) is the manager's own ``torch.multinomial`` over
one global RNG, which ties a response to its batch neighbours (``determinism`` in the JSON).

Examples:
  python benchmarks/bench_sampling.py --shape tiny --prompts 4 --n 2 --max-new-tokens 16   # CPU, seconds
  python benchmarks/bench_sampling.py --device cuda --shape qwen2-1.5b --dtype bfloat16 --prompts 128 --n 8 \
      --methods a,c,b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2Config,
    TemperatureLogitsWarper,
)
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.utils import WorkloadHints

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_logprobs import SHAPES as LOGPROB_SHAPES  # noqa: E402
from benchmarks.bench_logprobs import PeakMemory, log_normal_lengths  # noqa: E402
from benchmarks.common import emit_report, machine, model_sizes  # noqa: E402
from hfpref.steps.continuous_sampling import SEED_KWARG, response_seed, running_manager  # noqa: E402
from hfpref.steps.sampling import gumbel_noise_processor, length_groups, plain_generation_config  # noqa: E402

PAD, EOS = 0, 2  # prompts draw ids from 3 up, so neither occurs inside a prompt

SHAPES = {
    # a few MB: for a CPU smoke run only
    "tiny": lambda: Qwen2Config(
        vocab_size=2048,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        use_sliding_window=False,
        **model_sizes(64, 128, 2, 4, 2),
    ),
    "qwen2-0.5b": LOGPROB_SHAPES["qwen2-0.5b"],
    "qwen2-1.5b": LOGPROB_SHAPES["qwen2-1.5b"],
}

# Workload: one prompt's token ids and the lengths of its N responses.
Workload = list[tuple[list[int], list[int]]]


def make_workload(args: argparse.Namespace, vocab: int) -> Workload:
    """Seeded prompts (16..512 tokens, median 128) and N output lengths each (log-normal, clipped)."""
    rng = np.random.default_rng(args.seed)
    low = max(1, min(args.min_new_tokens, args.max_new_tokens // 4))  # a short --max-new-tokens still varies
    median = math.sqrt(low * args.max_new_tokens)  # the geometric middle of the range
    workload = []
    for prompt_length in log_normal_lengths(rng, args.prompts, 128, 0.7, 16, 512):
        prompt = rng.integers(3, vocab, prompt_length).tolist()
        lengths = log_normal_lengths(rng, args.n, median, 0.8, low, args.max_new_tokens).tolist()
        workload.append((prompt, lengths))
    return workload


def build_model(args: argparse.Namespace) -> Any:
    config = SHAPES[args.shape]()
    config.eos_token_id, config.pad_token_id, config.bos_token_id = EOS, PAD, 1
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):  # initialised where it runs: a 1.5B random init on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=args.attn)
    return model.eval()


# ---- (a) padded generate, as ResponseSampler does it ------------------------------------------------


class ForcedLengths(LogitsProcessor):
    """Row r ends at exactly ``lengths[r]`` new tokens: EOS is banned before, the only choice at the end."""

    def __init__(self, lengths: list[int], prompt_width: int) -> None:
        self.lengths = torch.tensor(lengths)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width  # tokens generated so far
        self.lengths = lengths = self.lengths.to(scores.device)  # copied once, on the first step
        scores[lengths > step + 1, EOS] = -math.inf
        last = lengths == step + 1
        scores[last] = -math.inf
        scores[last, EOS] = 0.0
        return scores


def left_pad(rows: list[list[int]], device: str) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def padded_generate(model: Any, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """ResponseSampler's loop (``_generate_transformers``) on token ids; returns counts, not text."""
    token_ids = [prompt for prompt, _ in workload]
    fake_tokenizer = types.SimpleNamespace(pad_token_id=PAD)  # all plain_generation_config reads from it
    generation_config = plain_generation_config(model, fake_tokenizer, EOS, args.max_new_tokens)
    groups = length_groups(token_ids, args.n, args.max_new_tokens, args.token_budget)
    generated, exact, slots, done, calls = 0, True, 0, 0, 0
    begin = time.perf_counter()
    for group in groups:
        if calls and args.a_seconds is not None and time.perf_counter() - begin > args.a_seconds:
            break  # tokens/s is per call: the calls made so far measure it
        rows = [token_ids[k] for k in group for _ in range(args.n)]
        lengths = [length for k in group for length in workload[k][1]]
        padded = left_pad(rows, args.device)
        width = padded["input_ids"].shape[1]
        # the sampler seeds each prompt from a hash (prompt_seed); the cost is the same
        generators = [torch.Generator(device=args.device).manual_seed(args.seed + k) for k in group]
        processors = LogitsProcessorList(
            [
                TemperatureLogitsWarper(1.0),
                gumbel_noise_processor(generators, args.n),
                ForcedLengths(lengths, width),
            ]
        )
        with torch.inference_mode():
            output = model.generate(
                **padded, generation_config=generation_config, logits_processor=processors
            )
        new_tokens = output[:, width:]
        slots += new_tokens.numel()
        # a row's length: up to and including its first EOS (PAD follows it)
        ends = (new_tokens == EOS).int().argmax(dim=1) + 1
        counts = ends.tolist()
        exact &= counts == lengths
        generated += sum(counts)
        done += len(group)
        calls += 1
    return {
        "prompts": done,
        "generated_tokens": generated,
        "lengths_exact": exact,
        "calls": f"{calls} of {len(groups)}",
        "new_token_efficiency": round(generated / slots, 3),  # generated / (rows x steps run)
    }


# ---- (b) continuous batching --------------------------------------------------------------------------


def continuous_batching(model: Any, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """(b) Every response as its own request (its own ``max_new_tokens``, no EOS) on one paged-cache manager."""
    generation_config = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens,
        eos_token_id=-1, pad_token_id=PAD,
    )  # fmt: skip
    requests = [(prompt, length) for prompt, lengths in workload for length in lengths]
    cb_config = ContinuousBatchingConfig(
        seed=args.seed, auto_switch_to_flash=args.cb_flash, num_blocks=cache_blocks(requests, args)
    )
    manager_cm = model.continuous_batching_context_manager(
        generation_config=generation_config,
        continuous_batching_config=cb_config,
        block=True,
        timeout=30,
        workload_hints=workload_hints(workload, len(requests), args),
    )
    return run_requests(manager_cm, model, workload, seeded=False)


def continuous_seeded(model: Any, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """(c) (b)'s requests on the ``continuous`` backend's manager: greedy over per-request seeded Gumbel noise."""
    fake_tokenizer = types.SimpleNamespace(pad_token_id=PAD)  # all plain_generation_config reads from it
    generation_config = plain_generation_config(model, fake_tokenizer, -1, args.max_new_tokens)
    requests = [(prompt, length) for prompt, lengths in workload for length in lengths]
    cb_config = ContinuousBatchingConfig(
        auto_switch_to_flash=args.cb_flash,
        num_blocks=cache_blocks(requests, args),
        # as generate_continuous sets it on a GPU: room for the noise processor's temporaries
        max_memory_percent=0.8 if args.device.startswith("cuda") else None,
    )
    hints = workload_hints(workload, len(requests), args)
    manager_cm = running_manager(model, generation_config, cb_config, hints, temperature=1.0, top_p=1.0)
    return run_requests(manager_cm, model, workload, seeded=True)


def workload_hints(workload: Workload, requests: int, args: argparse.Namespace) -> WorkloadHints:
    return WorkloadHints(
        max_prompt_length=max(len(prompt) for prompt, _ in workload),
        max_generated_length=args.max_new_tokens,
        num_requests=requests,
    )


def run_requests(manager_cm: Any, model: Any, workload: Workload, seeded: bool) -> dict[str, Any]:
    """Enter the manager (its setup timed apart), add every response as a request, collect the results.

    ``seeded``: each request carries its response seed, as the ``continuous`` backend sends it (prompt k's
    seed is k here; the sampler hashes the prompt), and the JSON gets a hash of all generated tokens.
    """
    setup_begin = time.perf_counter()
    with manager_cm as manager:
        setup_s = time.perf_counter() - setup_begin
        attn = model.config._attn_implementation  # what the manager switched the model to
        begin = time.perf_counter()
        wanted = {}
        for k, (prompt, lengths) in enumerate(workload):
            for j, length in enumerate(lengths):
                seed = {SEED_KWARG: response_seed(k, j)} if seeded else {}
                request_id = manager.add_request(
                    prompt, request_id=f"{k}/{j}", max_new_tokens=length, eos_token_id=-1, **seed
                )
                wanted[request_id] = length
        results = collect(manager, len(wanted))
        seconds = time.perf_counter() - begin
    counts = {request_id: len(result.generated_tokens) for request_id, result in results.items()}
    report = {
        "prompts": len(workload),
        "generated_tokens": sum(counts.values()),
        "lengths_exact": counts == wanted,
        "errors": sum(result.error is not None for result in results.values()),
        "setup_s": round(setup_s, 3),
        "attn_implementation": attn,
        "cache": cache_description(manager),
        "_seconds": seconds,
    }
    if seeded:  # compare across runs: equal hashes, equal samples (on the same device and versions)
        tokens = json.dumps([results[key].generated_tokens for key in sorted(results)])
        report["tokens_sha256"] = hashlib.sha256(tokens.encode()).hexdigest()[:16]
    return report


def cache_blocks(requests: list[tuple[list[int], int]], args: argparse.Namespace) -> int | None:
    """``--cb-blocks``; else None (transformers sizes the cache from free GPU memory) on a GPU, and on a CPU
    just enough blocks for every request at once (the auto size there is a share of the host's RAM)."""
    if args.cb_blocks is not None or args.device.startswith("cuda"):
        return args.cb_blocks
    page = ContinuousBatchingConfig().page_size
    return sum(math.ceil((len(prompt) + length) / page) for prompt, length in requests)


def collect(manager: Any, expected: int) -> dict[str, Any]:
    """The finished results, until ``expected`` arrived or the manager's thread died."""
    results: dict[str, Any] = {}
    while len(results) < expected:
        result = manager.get_result(timeout=1)
        if result is not None and result.is_finished():
            results[result.request_id] = result
        elif result is None and not manager.is_running():
            print(f"continuous batching stopped after {len(results)}/{expected} requests", file=sys.stderr)
            break
    return results


def cache_description(manager: Any) -> dict[str, Any]:
    """The paged cache's size, as far as this transformers version exposes it (names vary by release)."""
    config = manager.continuous_batching_config
    return {
        name: getattr(config, name, None)
        for name in ("num_blocks", "page_size", "max_batch_tokens", "use_cuda_graph", "use_async_batching")
    }


# ---- measurement and report --------------------------------------------------------------------------


def measure(fn: Any, model: Any, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """One timed run of a method: its counts, seconds, tokens/s and peak memory, or the error it raised."""
    device = torch.device(args.device)
    try:
        with PeakMemory(device) as memory:
            begin = time.perf_counter()
            result = fn(model, workload, args)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - begin
    except Exception as error:  # a one-shot GPU run keeps the other method's numbers
        return {"error": f"{type(error).__name__}: {error}"[:2000]}
    seconds = result.pop("_seconds", wall)  # (b), (c) time generation alone; setup is in setup_s
    result.update(
        seconds=round(seconds, 3),
        tokens_per_s=round(result["generated_tokens"] / seconds, 1),
        peak_memory_mb=round(memory.peak / 2**20, 1),
    )
    if "setup_s" in result:
        result["tokens_per_s_with_setup"] = round(result["generated_tokens"] / wall, 1)
    return result


DETERMINISM = (
    "(b): generate_batch/ContinuousBatchingManager take no logits_processor argument and no per-request "
    "seed; sampling is one torch.multinomial over all requests of a step on the global RNG "
    "(ContinuousBatchingConfig.seed only seeds it once), so a response depends on its batch neighbours and "
    "the scheduling. (c): do_sample=False and one ContinuousBatchingLogitsProcessor of hfpref's in place of "
    "the manager's list (seeded_manager): add_request(hfpref_response_seed=...) is kept per request and "
    "reaches prepare_tensor_args as one int32 key per row (the seed mixed with the token index), from which "
    "the processor hashes Gumbel noise per vocabulary id on the device: a response depends only on its "
    "prompt, j, the seed and the model."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--min-new-tokens", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=1000)
    parser.add_argument(
        "--token-budget",
        type=int,
        default=65536,
        help="(a)'s padded tokens per call (SamplerConfig's default)",
    )
    parser.add_argument(
        "--attn", default="sdpa", help="the model's attention; (a) uses it, (b) starts from it"
    )
    parser.add_argument(
        "--cb-flash",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let (b) switch to flash attention when a flash kernel is installed (transformers' default)",
    )
    parser.add_argument(
        "--cb-blocks", type=int, default=None, help="(b)'s paged-cache blocks (default: see cache_blocks)"
    )
    parser.add_argument(
        "--a-prompts",
        type=int,
        default=None,
        help="(a) runs on this many of the prompts (a seeded random subset; its tokens/s is per call, so "
        "it extrapolates) to fit a time budget; default all",
    )
    parser.add_argument(
        "--a-seconds",
        type=float,
        default=None,
        help="(a) starts no new generate call after this many seconds (one at least; its calls measure it)",
    )
    parser.add_argument(
        "--methods", default="a,c,b", help="which to run, in this order: any of a, b, c, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default=None)
    return parser.parse_args()


def subset(workload: Workload, size: int | None, seed: int) -> Workload:
    """``size`` prompts of the workload, a seeded random choice in their original order (all when None)."""
    if size is None or size >= len(workload):
        return workload
    chosen = np.sort(np.random.default_rng(seed + 1).choice(len(workload), size, replace=False))
    return [workload[k] for k in chosen]


def warm_up(model: Any, workload: Workload, args: argparse.Namespace) -> None:
    """An untimed two-token padded generate: kernel selection and allocator growth happen here."""
    short = argparse.Namespace(**{**vars(args), "max_new_tokens": 2})
    padded_generate(model, [(workload[0][0], [2] * args.n)], short)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)  # CB's per-request info lines
    model = build_model(args)
    workload = make_workload(args, model.config.vocab_size)
    methods = {
        "a": ("a_padded_generate", padded_generate, subset(workload, args.a_prompts, args.seed)),
        "b": ("b_continuous_batching", continuous_batching, workload),
        "c": ("c_continuous_seeded", continuous_seeded, workload),
    }
    results: dict[str, Any] = {}
    report: dict[str, Any] = {
        "config": {**vars(args), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)},
        "workload": {
            "responses": sum(len(lengths) for _, lengths in workload),
            "prompt_tokens": sum(len(prompt) for prompt, _ in workload),
            "new_tokens": sum(sum(lengths) for _, lengths in workload),
        },
        "results": results,
        "determinism": DETERMINISM,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            **machine(),
        },
    }
    warm_up(model, workload, args)
    for method in args.methods.split(","):
        label, fn, prompts = methods[method]
        results[label] = measure(fn, model, prompts, args)
        emit_report(report, args.output, echo=False)  # a run cut off later still leaves this much
    rates = {m: results.get(methods[m][0], {}).get("tokens_per_s") for m in methods}
    for over, under in (("b", "a"), ("c", "a"), ("c", "b")):
        if rates[over] and rates[under]:
            report[f"ratio_{over}_over_{under}"] = round(rates[over] / rates[under], 2)
    report["target_ratio"] = 3.0  # c (or b) over a
    emit_report(report, args.output)


if __name__ == "__main__":
    main()
