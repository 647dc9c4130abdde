"""ResponseSampler's ``backend: "continuous"``: transformers' continuous batching, deterministic per prompt.

Every (prompt, response ``j``) is one request on transformers' continuous-batching manager (paged KV cache,
what ``model.generate_batch`` runs): a finished response frees its slot at once instead of padding a
``generate`` batch until its longest row ends, and the ``n`` requests of a prompt can share its prefix blocks.

Determinism. The manager samples with one ``torch.multinomial`` over all requests of a step on a global RNG,
so as shipped a response depends on its batch neighbours and the scheduling. Here the manager decodes
greedily (``do_sample=False``) and one logits processor of ours, ``SeededGumbelNoise``, replaces every other:
per request it divides the scores by the temperature, applies top-p, and adds Gumbel(0, 1) noise that is a
pure function of (response seed, index of the token being generated, vocabulary id); argmax(s + G) samples
exactly from softmax(s), as the transformers backend does. The response seed is ``response_seed(prompt seed,
j)``, so a response depends only on its prompt, ``j``, the seed and the model (and, as for every batched
backend, on floating-point differences of the forward pass between batch shapes), never on which other
requests share a step. The noise is counter-based, not a ``torch.Generator`` stream, because the manager
runs all requests of a step in one (CUDA-graph-captured) call: per row, the processor gets one int32
(``step_key``: the response seed mixed with the token index on the host) and hashes it with the vocabulary
ids on the device (``uniform_noise``, a 32-bit integer hash; written by hand because torch has no
counter-based RNG keyed per row). The random streams differ from the transformers backend's, so the backend
is in the fingerprint. ``temperature=0`` is plain greedy decoding (one request per prompt, repeated ``n``
times).

The hook is internal to transformers: ``seeded_manager`` (the one place that installs it) replaces the
manager's ``ContinuousBatchingLogitsProcessorList`` before its batch processor is built, and refuses, with a
``UserError``, a transformers version it was not written against; the processor itself reads a request's
``position_offset``, ``initial_tokens`` and ``_true_initial_tokens`` (so only behind that check).

Cache. On a GPU transformers sizes the paged cache from free memory; on a CPU (where its size would be a
share of the host's RAM) it holds every request at once, within ``token_budget`` tokens.

Output, per prompt: ``PromptSamples`` (the ``n`` response texts and the ``n`` lists of generated token ids,
without the trailing EOS).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from hfpref.core.errors import UserError

# the versions whose continuous-batching internals seeded_manager was written against and tested on
SUPPORTED_TRANSFORMERS = ("5.24", "5.25")  # >= the first, < the second
MASK32, MASK64 = (1 << 32) - 1, (1 << 64) - 1
SEED_KWARG = "hfpref_response_seed"  # the per-request keyword argument carrying a response's seed


class PromptSamples(NamedTuple):
    """One prompt's ``n`` responses: the texts and the generated token ids (without the trailing EOS)."""

    texts: list[str]
    token_ids: list[list[int]]


def response_seed(prompt_seed: int, j: int) -> int:
    """The 63-bit seed of response ``j`` of a prompt: a stable hash of the prompt's seed and ``j``."""
    digest = hashlib.sha256(f"{prompt_seed}\x00{j}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def step_key(seed: int, step: int) -> int:
    """The int32 noise key of token ``step`` (0 = the first generated token) of a response with ``seed``."""
    return (_splitmix64(_splitmix64(seed) ^ step) >> 32) - (1 << 31)  # the top 32 bits, as a signed int32


def _mul32(x: Any, c: int) -> Any:
    """(x * c) mod 2**32 for int64 tensors x in [0, 2**32): split in 16-bit halves so nothing overflows."""
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 65536) & MASK32


def _hash32(x: Any) -> Any:
    """A bijection of [0, 2**32) with good avalanche (Wellons' "lowbias32"), on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(keys: Any, vocab_size: int, rows_per_chunk: int = 64) -> Any:
    """Uniform(0, 1) float32 noise of shape [rows, vocab_size]; row r a pure function of ``keys[r]`` (int32).

    Hashed ``rows_per_chunk`` rows at a time: the int64 temporaries of a whole step (rows x vocabulary, a few
    alive at once) would take GBs of the memory the paged cache was sized around.
    """
    import torch

    ids = _hash32(torch.arange(vocab_size, device=keys.device, dtype=torch.int64))
    keys = keys.to(torch.int64) & MASK32
    noise = torch.empty((keys.shape[0], vocab_size), dtype=torch.float32, device=keys.device)
    for start in range(0, keys.shape[0], rows_per_chunk):
        bits = _hash32(ids.unsqueeze(0) ^ keys[start : start + rows_per_chunk].unsqueeze(1))
        # the top 24 bits: exact in float32, and the +0.5 keeps the noise off 0 and 1
        noise[start : start + rows_per_chunk] = ((bits >> 8).to(torch.float32) + 0.5) * 2.0**-24
    return noise


def gumbel_scores(scores: Any, keys: Any, temperature: float, top_p: float) -> Any:
    """scores / temperature, top-p filtered (-inf outside the nucleus), plus each row's seeded Gumbel noise."""
    import torch
    from transformers import TopPLogitsWarper

    scores = scores / temperature
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)  # row-wise; it does not read input_ids
    return scores - torch.log(-torch.log(uniform_noise(keys, scores.shape[-1])))


@functools.cache
def _processor_class() -> type:
    """``SeededGumbelNoise``, built on first use (importing hfpref must not import torch)."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class SeededGumbelNoise(ContinuousBatchingLogitsProcessor):
        """Per request: temperature, top-p and Gumbel noise keyed on (response seed, token index)."""

        supported_kwargs = {SEED_KWARG: int}
        ignored_kwargs = ()

        def __init__(self, temperature: float, top_p: float) -> None:
            self.temperature, self.top_p = temperature, top_p

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)  # rows without a request (padding, warm-up) get key 0

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            # called after the batch advanced position_offset: it is the position of the token to generate;
            # a soft-reset request keeps its original prompt length in _true_initial_tokens
            keys = []
            for future in requests_with_new_token:
                state = future.state
                prompt_length = state._true_initial_tokens or len(state.initial_tokens)
                seed = state.logit_processor_kwargs.get(SEED_KWARG, 0)
                keys.append(step_key(seed, state.position_offset - prompt_length))
            return torch.tensor(keys, dtype=torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            return gumbel_scores(scores, tensor_arg[: scores.size(0)], self.temperature, self.top_p)

    return SeededGumbelNoise


def check_transformers_version(version: str) -> None:
    """A ``UserError`` unless ``version`` is one ``seeded_manager`` was written against."""
    from packaging.version import Version

    low, high = SUPPORTED_TRANSFORMERS
    if not Version(low) <= Version(version) < Version(high):
        raise UserError(
            f"backend 'continuous' hooks into transformers' continuous-batching internals and supports "
            f"transformers >={low},<{high}; this is transformers {version}. Install a supported version, or "
            "sample with backend 'transformers' (padded generate, the same determinism)"
        )


def seeded_manager(
    model: Any, generation_config: Any, cb_config: Any, hints: Any, temperature: float, top_p: float
) -> Any:
    """A continuous-batching manager (not started) whose only logits processor is ours (none at temperature 0).

    The one function that touches transformers' internals: it replaces the manager's processor list before
    the manager builds its batch processor (which reads the list's argument rows) and warms up.
    """
    import transformers
    from transformers import LogitsProcessorList
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessorList,
    )

    check_transformers_version(transformers.__version__)
    manager = model.init_continuous_batching(
        generation_config=generation_config, continuous_batching_config=cb_config, workload_hints=hints
    )
    if manager.batch_processor is not None:  # a cached (persistent) manager of someone else's
        raise RuntimeError("the model holds a continuous-batching manager already; destroy it first")
    processors = [] if temperature == 0 else [_processor_class()(temperature, top_p)]
    processor_list = ContinuousBatchingLogitsProcessorList(LogitsProcessorList(processors))
    # the list counts argument rows only for the processors it converted itself; ours takes one int32 row
    processor_list.tensors_required = len(processors)
    manager.logit_processor = processor_list
    return manager


@contextlib.contextmanager
def running_manager(
    model: Any, generation_config: Any, cb_config: Any, hints: Any, temperature: float, top_p: float
) -> Iterator[Any]:
    """A started ``seeded_manager`` (warmed up: CUDA graphs captured on a GPU), stopped and freed on exit."""
    import torch

    with torch.inference_mode():  # the manager's thread takes the caller's inference mode
        manager = seeded_manager(model, generation_config, cb_config, hints, temperature, top_p)
        try:
            manager.warmup()
            manager.start()
            yield manager
        finally:
            manager.stop(block=True, timeout=60)
            manager.destroy()


def manager_configs(
    model: Any, cfg: Any, token_ids: list[list[int]], requests: int, num_blocks: int | None
) -> tuple[Any, Any]:
    """The ``ContinuousBatchingConfig`` and ``WorkloadHints`` for ``requests`` requests over ``token_ids``."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    cpu = model.device.type == "cpu"
    if num_blocks is None and cpu:
        page = ContinuousBatchingConfig().page_size
        per_prompt = requests // len(token_ids)
        lengths = list(map(len, token_ids))
        num_blocks = cache_blocks(lengths, per_prompt, cfg.max_new_tokens, cfg.token_budget, page)
    cb_config = ContinuousBatchingConfig(
        num_blocks=num_blocks,
        # transformers' own margin for temporaries when there are logits processors (ours: rows x vocab)
        max_memory_percent=None if cpu or cfg.temperature == 0 else 0.8,
    )
    hints = WorkloadHints(
        max_prompt_length=max(map(len, token_ids)),
        max_generated_length=cfg.max_new_tokens,
        num_requests=requests,
    )
    return cb_config, hints


def generate_continuous(
    model: Any,
    tokenizer: Any,
    cfg: Any,
    token_ids: list[list[int]],
    seeds: list[int],
    num_blocks: int | None = None,
) -> list[PromptSamples]:
    """Sample ``cfg.n`` responses per prompt (``cfg``: a SamplerConfig), one request per response.

    ``seeds``: each prompt's seed (``prompt_seed``); ``num_blocks``: the paged cache's size (None: from free
    memory on a GPU, ``cache_blocks`` on a CPU).
    """
    from hfpref.steps.sampling import plain_generation_config

    if not token_ids:  # an empty map batch: no manager to start
        return []
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    copies = 1 if cfg.temperature == 0 else cfg.n  # greedy gives n equal responses: decode once, repeat
    cb_config, hints = manager_configs(model, cfg, token_ids, copies * len(token_ids), num_blocks)
    generation_config = plain_generation_config(model, tokenizer, eos, cfg.max_new_tokens)
    with running_manager(model, generation_config, cb_config, hints, cfg.temperature, cfg.top_p) as manager:
        for k, ids in enumerate(token_ids):
            for j in range(copies):
                seed = {} if copies == 1 else {SEED_KWARG: response_seed(seeds[k], j)}
                manager.add_request(
                    ids, request_id=f"{k}/{j}", max_new_tokens=cfg.max_new_tokens, eos_token_id=eos, **seed
                )
        generated = collect(manager, copies * len(token_ids))
    ends = {eos} if isinstance(eos, int) else set(eos or ())
    samples = []
    for k in range(len(token_ids)):
        ids = [generated[f"{k}/{j}"] for j in range(copies)]
        ids = [tokens[:-1] if tokens and tokens[-1] in ends else tokens for tokens in ids]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        samples.append(PromptSamples(texts * (cfg.n // copies), ids * (cfg.n // copies)))
    return samples


def collect(manager: Any, expected: int) -> dict[str, list[int]]:
    """Each finished request's generated token ids, by request id; an error if one failed or the manager died."""
    generated: dict[str, list[int]] = {}
    while len(generated) < expected:
        result = manager.get_result(timeout=1)
        if result is None:
            if not manager.is_running():
                raise RuntimeError(
                    f"continuous batching stopped after {len(generated)} of {expected} requests"
                )
            continue
        if result.error is not None:
            raise RuntimeError(f"continuous batching request {result.request_id} failed: {result.error}")
        if result.is_finished():
            generated[result.request_id] = list(result.generated_tokens)
    return generated


def cache_blocks(
    lengths: Sequence[int], requests_per_prompt: int, max_new_tokens: int, token_budget: int, page: int
) -> int:
    """Paged-cache blocks on a CPU: every request at once if that fits ``token_budget`` tokens, else the
    budget (at least the longest request) -- transformers' own size there is a share of the host's RAM."""
    needed = [math.ceil((length + max_new_tokens) / page) for length in lengths]
    return max(min(requests_per_prompt * sum(needed), token_budget // page), max(needed))
