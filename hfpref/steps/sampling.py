"""Sample N responses per prompt from a causal LM: the step that turns prompts into candidates rows.

``ResponseSampler`` is a :class:`hfpref.core.step.Step`.

* input column: ``prompt`` (a string, or a list of ``{"role", "content"}`` messages)
* output columns: ``prompt`` (the prompt in the form it was sampled in, see below), ``responses``
  (list[str], ``n`` per prompt) and ``generators`` (list[str], the model id, or ``generator_name``, once
  per response), ``response_token_ids`` (list[list[int32]], the generated token ids of each response) and
  ``response_token_unit`` (their unit label, ``hfpref.models.hub.model_token_unit``)

The prompt's form (``hfpref.steps.chat_prompts``). When the tokenizer has a chat template, every prompt goes
through it (``add_generation_prompt=True``): a string prompt is sampled as one user message and is written
back as that message, ``[{"role": "user", "content": prompt}]``, so the candidates say which context the
responses were generated in and every later step (log-probs, rewards, TRL) formats the same conversation;
message lists pass unchanged. Without a chat template a string prompt is tokenized as raw text and stays a
string, and a message list is an error (``prompt_form_after`` reports it before a recipe runs). The
template's sha256 is in ``describe()`` (``chat_template_sha256``), so the manifest records it.

Determinism. Each prompt gets its own seed, ``config.seed`` mixed with a stable hash of the model's
resolved revision (Hub commit or local content hash) and the prompt, so a prompt's samples do not depend
on which other prompts share its batch, on the batch size, or on the row order. The model is in the hash
so that two generators answering the same prompt draw independent noise (shared noise would make their
samples more alike than independent samples are, and bias pair statistics such as the edit distance);
the same weights, wherever they are stored, always repeat themselves.
transformers' ``generate`` draws every row's next token from one global RNG in a single
``torch.multinomial`` call, which would tie a prompt's samples to its batch neighbours; so the
transformers backend decodes greedily over Gumbel-perturbed scores instead (argmax(s + G), G ~
Gumbel(0, 1), samples exactly from softmax(s)), with the noise for each prompt's ``n`` rows drawn from
that prompt's own ``torch.Generator`` on the model's device (so a run repeats on the same kind of
device; CPU and CUDA generators give different streams). Temperature and top-p are transformers' own
logits warpers, applied before the noise. ``temperature=0`` is plain greedy decoding (one decode per
prompt, repeated ``n`` times).

Batching. Prompts are sorted by token length and packed into ``generate`` calls whose padded size
``n * rows * (longest prompt + max_new_tokens)`` stays within ``token_budget``; padding is on the left.

Token ids. A response's ids are the tokens as sampled, less the special ones (EOS, padding) its text
also drops (``skip_special_tokens``): the response in that unit. Re-encoding the decoded text does not
always give them back (bytes that are no valid UTF-8 decode to U+FFFD; BPE may merge a sampled split); a
``PairMetrics`` step whose unit is this model's tokenizer counts e_Δ on these ids instead of tokenizing.

Backends. ``"transformers"`` (above), ``"continuous"`` (transformers' continuous batching, one request per
response, with per-request seeded noise: ``hfpref.steps.continuous_sampling``), ``"vllm"`` (a per-request
seed in vLLM's ``SamplingParams``; the same inputs and outputs, different random streams, so its
fingerprint differs) and ``"auto"`` (vLLM when it is importable and a GPU is present). Models load lazily on first use; ``rank`` picks the GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, StepConfig, row_label, runtime_field
from hfpref.models.hub import model_token_unit
from hfpref.models.loading import load_model, load_tokenizer, parse_dtype, select_device
from hfpref.models.packing import plan_padded_batches
from hfpref.models.step import ModelStep
from hfpref.models.token_ids import response_ids, skipped_token_ids
from hfpref.steps.candidates import Prompt
from hfpref.steps.chat_prompts import MESSAGES, PromptFormError, chat_template_sha256, is_messages


@dataclasses.dataclass
class SamplerConfig(StepConfig):
    """How to sample: the model, N, decoding settings, the seed and the batching budget."""

    model: str = ""
    revision: str | None = None
    n: int = 4
    temperature: float = 1.0  # 0 means greedy decoding
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    dtype: str = "auto"  # "auto", or a torch dtype name such as "bfloat16"
    # None: cuda:<rank> when a GPU is present, else cpu
    device: str | None = runtime_field(None)
    # padded tokens (rows x (prompt + new tokens)) per generate call; the samples do not depend on it
    token_budget: int = runtime_field(65536)
    backend: str = "auto"  # "auto", "transformers", "vllm" or "continuous"
    generator_name: str | None = None  # the name written to `generators`; defaults to `model`

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("SamplerConfig.model is required (a Hub id or a local folder)")
        if self.n < 1:
            raise ValueError(f"SamplerConfig.n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplerConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplerConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.backend not in ("auto", "transformers", "vllm", "continuous"):
            raise ValueError(
                f"SamplerConfig.backend must be auto, transformers, vllm or continuous, got {self.backend!r}"
            )
        parse_dtype(self.dtype)  # fails early on an unknown dtype name


# what a backend's generate function returns: per prompt, the n response texts and the n token-id lists
Samples = tuple[list[list[str]], list[list[Any]]]


def prompt_seed(seed: int, model_revision: str, prompt: Prompt) -> int:
    """The seed of one prompt's samples from a model: a stable (cross-process) hash of all three."""
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{seed}\x00{model_revision}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a valid torch / vLLM seed


def sampled_prompt(tokenizer: Any, prompt: Prompt) -> Prompt:
    """The prompt in the form it is sampled in: one user message for a string under a chat template."""
    if isinstance(prompt, str) and tokenizer.chat_template is not None:
        return [{"role": "user", "content": prompt}]
    return prompt


@functools.cache
def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.cuda.is_available()


def plain_generation_config(model: Any, tokenizer: Any, eos_token_id: Any, max_new_tokens: int) -> Any:
    """Greedy decoding with no processors of the model's own.

    ``generate`` fills a config's unset fields from the checkpoint's generation config, so a model that
    ships e.g. ``repetition_penalty: 1.05`` would reshape our samples: those fields are set to neutral
    values. Sampling, when wanted, is the Gumbel noise processor's (``gumbel_noise_processor``).
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=model.generation_config.bos_token_id,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_length=0,
    )


def gumbel_noise_processor(generators: list[Any], n: int):
    """A logits processor adding Gumbel(0, 1) noise; rows ``[k*n, (k+1)*n)`` use ``generators[k]``."""
    import torch
    from transformers import LogitsProcessor

    class PerPromptGumbelNoise(LogitsProcessor):
        # Written by hand: generate's sampler has no per-row RNG (see the module docstring).
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            shape = (n, scores.shape[-1])
            # drawn where the scores are: a vocabulary-sized draw per row and step is too big for the CPU
            uniform = torch.cat(
                [torch.rand(shape, generator=g, device=scores.device, dtype=scores.dtype) for g in generators]
            )
            tiny = torch.finfo(scores.dtype).tiny
            gumbel = -torch.log(-torch.log(uniform.clamp_(min=tiny, max=1.0 - torch.finfo(scores.dtype).eps)))
            return scores + gumbel

    return PerPromptGumbelNoise()


class ResponseSampler(ModelStep):
    """Sample ``n`` responses per prompt (input ``prompt``; outputs ``responses``, ``generators``)."""

    config_class: ClassVar[type[StepConfig]] = SamplerConfig
    # 2: writes ``prompt`` back as the messages it sampled through the chat template
    # 3: writes the responses' token ids and their unit (an earlier run's shards lack these columns)
    version: ClassVar[str] = "3"
    config: SamplerConfig

    def input_columns(self) -> list[str]:
        return [C.PROMPT]

    def output_columns(self) -> list[str]:
        return [C.PROMPT, C.RESPONSES, C.GENERATORS, C.RESPONSE_TOKEN_IDS, C.RESPONSE_TOKEN_UNIT]

    def token_unit(self) -> str:
        """The unit label of the written token ids (equal to a PairMetrics step's with this model as unit)."""
        if not hasattr(self, "_token_unit"):
            self._token_unit = model_token_unit(self.config.model, self.resolved_revision())
        return self._token_unit

    def chat_template_sha256(self) -> str | None:
        """sha256 of the chat template prompts are sampled through (None: prompts are raw text)."""
        if not hasattr(self, "_chat_template_sha256"):
            # a tokenizer alone loads in milliseconds; kept when pickled, like the resolved revision
            tokenizer = load_tokenizer(self.config.model, self.resolved_revision())
            self._chat_template_sha256 = chat_template_sha256(tokenizer)
        return self._chat_template_sha256

    def prompt_form_after(self, form: str | None) -> str | None:
        """Prompts are messages after sampling with a chat template; without one, messages cannot be sampled."""
        if self.chat_template_sha256() is not None:
            return MESSAGES
        if form == MESSAGES:
            raise PromptFormError(
                f"the prompts are chat messages but the tokenizer of {self.config.model!r} has no chat "
                "template to format them; sample with a chat model, or give plain-text prompts"
            )
        return form

    @property
    def backend(self) -> str:
        if self.config.backend == "auto":
            return "vllm" if vllm_available() else "transformers"
        return self.config.backend

    @property
    def generator_label(self) -> str:
        return self.config.generator_name or self.config.model

    def describe(self) -> dict[str, Any]:
        # "auto" names no backend; the one actually used decides the samples
        return {
            **super().describe(),
            "backend": self.backend,
            "chat_template_sha256": self.chat_template_sha256(),
        }

    # ---- loading ---------------------------------------------------------------------------
    def load(self, rank: int | None) -> dict[str, Any]:
        cfg = self.config
        revision = self.resolved_revision()  # load exactly the revision the fingerprint names
        tokenizer = load_tokenizer(cfg.model, revision)
        tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if self.backend == "vllm":
            return {"tokenizer": tokenizer, "llm": _load_vllm(cfg, revision, rank)}
        from transformers import AutoModelForCausalLM

        model = load_model(
            AutoModelForCausalLM, cfg.model, revision, dtype=cfg.dtype, device=select_device(cfg.device, rank)
        )
        return {"tokenizer": tokenizer, "model": model}

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        loaded = self.resources(rank)
        tokenizer = loaded["tokenizer"]
        token_ids = [
            self.prompt_token_ids(tokenizer, p, batch, i, indices) for i, p in enumerate(batch[C.PROMPT])
        ]
        # the prompt as sampled: a string through a chat template became one user message; the seed hashes
        # this form, so a string and its one-message form (the same context) draw the same samples
        prompts = [sampled_prompt(tokenizer, p) for p in batch[C.PROMPT]]
        seeds = [prompt_seed(self.config.seed, self.resolved_revision(), p) for p in prompts]
        special = skipped_token_ids(tokenizer)
        if self.backend == "vllm":
            responses, ids = _generate_vllm(loaded["llm"], self.config, token_ids, seeds, special)
        elif self.backend == "continuous":
            from hfpref.steps.continuous_sampling import generate_continuous

            samples = generate_continuous(loaded["model"], tokenizer, self.config, token_ids, seeds)
            responses = [sample.texts for sample in samples]
            ids = [[response_ids(row, special) for row in sample.token_ids] for sample in samples]
        else:
            responses, ids = self._generate_transformers(loaded["model"], tokenizer, token_ids, seeds)
        generators = [[self.generator_label] * self.config.n for _ in prompts]
        return {
            C.PROMPT: prompts,
            C.RESPONSES: responses,
            C.GENERATORS: generators,
            C.RESPONSE_TOKEN_IDS: ids,
            C.RESPONSE_TOKEN_UNIT: [self.token_unit()] * len(prompts),
        }

    def prompt_token_ids(
        self, tokenizer: Any, prompt: Any, batch: Batch, i: int, indices: list[int] | None
    ) -> list[int]:
        """Token ids of one prompt as the model sees it (chat template applied when there is one)."""
        if isinstance(prompt, str) and not prompt:
            raise RowError(f"{row_label(batch, i, indices)}: column 'prompt' is an empty string")
        if isinstance(prompt, str) and tokenizer.chat_template is None:
            return tokenizer(prompt)["input_ids"]
        prompt = sampled_prompt(tokenizer, prompt)
        if not is_messages(prompt):
            raise RowError(
                f"{row_label(batch, i, indices)}: column 'prompt' must be a string or a list of "
                f"{{'role', 'content'}} messages, got {prompt!r:.200}"
            )
        if tokenizer.chat_template is None:
            raise RowError(
                f"{row_label(batch, i, indices)}: column 'prompt' is a list of messages but the tokenizer of "
                f"{self.config.model!r} has no chat template; sample with a chat model or give text prompts"
            )
        encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def _generate_transformers(
        self, model: Any, tokenizer: Any, token_ids: list[list[int]], seeds: list[int]
    ) -> Samples:
        import torch
        from transformers import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        cfg = self.config
        eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
        generation_config = plain_generation_config(model, tokenizer, eos, cfg.max_new_tokens)
        greedy = cfg.temperature == 0
        copies = 1 if greedy else cfg.n  # greedy decoding gives n equal responses: decode once, repeat
        responses: list[list[str]] = [[] for _ in token_ids]
        response_token_ids: list[list[Any]] = [[] for _ in token_ids]
        special = skipped_token_ids(tokenizer)  # EOS and padding among them
        for group in length_groups(token_ids, copies, cfg.max_new_tokens, cfg.token_budget):
            # each prompt repeated, in place of num_return_sequences (which greedy decoding refuses)
            rows = [token_ids[k] for k in group for _ in range(copies)]
            padded = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
            padded = {name: tensor.to(model.device) for name, tensor in padded.items()}
            processors = LogitsProcessorList()
            if not greedy:
                generators = [torch.Generator(device=model.device).manual_seed(seeds[k]) for k in group]
                processors.append(TemperatureLogitsWarper(cfg.temperature))
                if cfg.top_p < 1.0:
                    processors.append(TopPLogitsWarper(cfg.top_p))
                processors.append(gumbel_noise_processor(generators, copies))
            with torch.inference_mode():
                output = model.generate(
                    **padded, generation_config=generation_config, logits_processor=processors
                )
            new_tokens = output[:, padded["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            ids = [response_ids(row, special) for row in new_tokens.tolist()]
            for position, k in enumerate(group):
                row_texts = texts[position * copies : (position + 1) * copies]
                row_ids = ids[position * copies : (position + 1) * copies]
                responses[k] = row_texts * cfg.n if greedy else row_texts
                response_token_ids[k] = row_ids * cfg.n if greedy else row_ids
        return responses, response_token_ids


def length_groups(
    token_ids: Sequence[Sequence[int]], n: int, max_new_tokens: int, token_budget: int
) -> list[list[int]]:
    """Prompt indices packed into generate calls: sorted by length, each call within ``token_budget``.

    A call's cost is its padded size, ``n * rows * (longest prompt + max_new_tokens)``; a single prompt
    over budget still gets a call of its own.
    """
    return plan_padded_batches(
        [len(ids) for ids in token_ids],
        token_budget,
        row_cost=lambda longest: n * (longest + max_new_tokens),
        longest_first=False,
    )


# ---- vLLM backend (needs a GPU and vllm; not exercised by the CPU test suite) -------------------
def _load_vllm(cfg: SamplerConfig, revision: str, rank: int | None) -> Any:
    if rank is not None:
        # vLLM takes its GPU from CUDA_VISIBLE_DEVICES; each map worker (one per rank) sees only its own
        os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)
    from vllm import LLM

    local = revision.startswith("sha256:")  # a content hash: a local folder, which has no Hub revision
    return LLM(model=cfg.model, revision=None if local else revision, dtype=cfg.dtype, seed=cfg.seed)


def _generate_vllm(
    llm: Any, cfg: SamplerConfig, token_ids: list[list[int]], seeds: list[int], special: frozenset[int]
) -> Samples:
    from vllm import SamplingParams

    params = [
        SamplingParams(
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_new_tokens,
            seed=seed,  # per request, so a prompt's samples do not depend on its batch
            skip_special_tokens=True,
        )
        for seed in seeds
    ]
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
    texts = [[completion.text for completion in output.outputs] for output in outputs]
    # a completion's token_ids end with the EOS that stopped it; its text, like ours, drops special tokens
    ids = [[response_ids(c.token_ids, special) for c in output.outputs] for output in outputs]
    return texts, ids
