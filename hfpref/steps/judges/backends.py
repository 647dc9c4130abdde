"""Judge backends: an OpenAI-compatible endpoint, a local transformers model, or a class of your own.

A backend turns chat conversations (lists of ``{"role", "content"}`` messages) into ``Completion``s:

* ``OpenAIBackend`` posts to any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI,
  ``transformers serve``, hosted APIs) through the ``openai`` client, ``concurrency`` requests at a time
  in a thread pool. Retries with exponential backoff (and the server's ``Retry-After``) and per-request
  timeouts are the client's own (``max_retries``, ``timeout``): it retries connection errors, timeouts,
  408/409/429 and 5xx answers.
* ``TransformersBackend`` runs a local causal LM: the tokenizer's chat template, greedy decoding,
  left-padded batches.
* Any other class named as ``"package.module:Class"`` in ``JudgeConfig.backend`` (tests use an
  in-process one) that subclasses ``JudgeBackend`` and implements ``generate``.

Every backend shares ``JudgeBackend.complete``: identical requests are sent once, and each reply is
stored in a SQLite file under ``cache_dir`` as soon as it arrives, keyed by the model's identity, the
messages and the sampling parameters (not the endpoint), so an interrupted run, or the same requests
sent to another server of the same model, never pays twice. Failed requests are never cached: an error
answer, a timeout, an HTTP 200 whose body is not a chat completion (invalid JSON, an HTML page, no
choices) and a reply whose ``content`` is null are all failures (``Completion.error``), so a rerun asks
them again.

``JudgeConfig``, ``Completion`` and ``ResponseCache`` are defined in ``hfpref.steps.judges.config`` and
importable from here; ``JudgeStep``, the base of the judge steps, is in ``hfpref.steps.judges.base``.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from hfpref.steps.judges.config import (
    BACKENDS,
    DEFAULT_CACHE_DIR,
    REQUEST_ERROR_POLICIES,
    Completion,
    JudgeConfig,
    JudgeFailureWarning,
    JudgeRequestError,
    Messages,
    ResponseCache,
    as_judge_config,
)


class JudgeBackend(abc.ABC):
    """Sends conversations to a judge model. Subclasses implement ``generate``; callers use ``complete``.

    ``stats`` counts requests asked for, cache hits, requests sent and failed requests.
    """

    def __init__(self, config: JudgeConfig, rank: int | None = None) -> None:
        self.config = config
        self.rank = rank
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self.stats = {"asked": 0, "cache_hits": 0, "sent": 0, "failed": 0}

    def model_identity(self) -> str:
        """What names the model in cache keys: its name, plus its exact revision where one is known."""
        return self.config.model

    def request_json(self, messages: Messages) -> str:
        payload = {"model": self.model_identity(), "messages": messages, **self.config.sampling_params()}
        return json.dumps(payload, sort_keys=True, ensure_ascii=False)

    @staticmethod
    def cache_key(request_json: str) -> str:
        return hashlib.sha256(request_json.encode()).hexdigest()

    @abc.abstractmethod
    def generate(self, conversations: Sequence[Messages]) -> Iterator[tuple[int, Completion]]:
        """Send each conversation; yield ``(index, Completion)`` as replies arrive, in any order."""

    def complete(self, conversations: Sequence[Messages]) -> list[Completion]:
        """One ``Completion`` per conversation: cached replies, then the rest sent (each distinct request once)."""
        requests = [self.request_json(messages) for messages in conversations]
        keys = [self.cache_key(r) for r in requests]
        self.stats["asked"] += len(keys)
        known = self.cache.get(keys) if self.cache is not None else {}
        results: dict[str, Completion] = {k: Completion(text, cached=True) for k, text in known.items()}
        self.stats["cache_hits"] += sum(1 for k in keys if k in known)
        first: dict[str, int] = {}
        for position, key in enumerate(keys):
            first.setdefault(key, position)
        to_send = [k for k in first if k not in known]
        self.stats["sent"] += len(to_send)
        for j, completion in self.generate([conversations[first[k]] for k in to_send]):
            key = to_send[j]
            results[key] = completion
            if completion.text is not None and self.cache is not None:
                self.cache.put(key, requests[first[key]], completion.text)
        failed = [k for k in to_send if results.get(k) is None or results[k].text is None]
        self.stats["failed"] += len(failed)
        not_sent = Completion(None, error="not sent: an earlier request of the batch failed")
        return [results.get(k, not_sent) for k in keys]

    @property
    def stop_on_error(self) -> bool:
        return self.config.on_request_error == "raise"


class OpenAIBackend(JudgeBackend):
    """Chat completions from an OpenAI-compatible endpoint, ``concurrency`` requests at a time."""

    def __init__(self, config: JudgeConfig, rank: int | None = None) -> None:
        super().__init__(config, rank)
        from openai import OpenAI

        # local servers (vLLM, transformers serve) ignore the key, but the client insists on one
        api_key = (os.environ.get(config.api_key_env) if config.api_key_env else None) or "not-needed"
        self.client = OpenAI(
            base_url=config.base_url, api_key=api_key, max_retries=config.max_retries, timeout=config.timeout
        )

    def request(self, messages: Messages) -> Completion:
        """One chat completion (with the client's retries); a failure becomes ``Completion.error``."""
        import openai

        params = self.config.sampling_params()
        try:
            response = self.client.chat.completions.create(
                model=self.config.model, messages=messages, **params
            )
        except openai.OpenAIError as error:
            return Completion(None, error=f"{type(error).__name__}: {error}")
        except ValueError as error:  # json.JSONDecodeError: an HTTP 200 whose JSON body does not parse
            return Completion(None, error=f"the endpoint's answer is not valid JSON ({error})")
        return completion_of(response)

    def generate(self, conversations: Sequence[Messages]) -> Iterator[tuple[int, Completion]]:
        if not conversations:
            return
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(conversations))) as pool:
            futures = {pool.submit(self.request, messages): i for i, messages in enumerate(conversations)}
            stopping = False
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                completion = future.result()
                if completion.error is not None and self.stop_on_error and not stopping:
                    stopping = (
                        True  # requests already running finish (and are cached); queued ones are dropped
                    )
                    for queued in futures:
                        queued.cancel()
                yield futures[future], completion


def completion_of(response: Any) -> Completion:
    """A chat completion object as a ``Completion``; anything that is not a usable reply is an error.

    The openai client hands back the raw text when a 200 answer is not JSON (an HTML error page from a
    proxy), an object without ``choices`` for JSON of another shape, and ``content=None`` when the
    server produced no text: none of them is a reply, and none may be cached as one.
    """
    if isinstance(response, (str, bytes)):
        text = response.decode(errors="replace") if isinstance(response, bytes) else response
        return Completion(None, error=f"the endpoint's answer is not a chat completion: {text!r:.200}")
    choices = getattr(response, "choices", None)
    if not choices:
        return Completion(None, error=f"the endpoint returned no choices: {response!r:.300}")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        refusal = getattr(message, "refusal", None)
        return Completion(
            None,
            error="the endpoint returned no text (content null"
            + (f", refusal {refusal!r:.200}" if refusal else "")
            + f", finish_reason {getattr(choices[0], 'finish_reason', None)!r})",
        )
    return Completion(content)


class TransformersBackend(JudgeBackend):
    """A local causal LM as the judge: chat template, greedy decoding, left-padded batches."""

    def __init__(self, config: JudgeConfig, rank: int | None = None) -> None:
        super().__init__(config, rank)
        if config.temperature != 0 or config.top_p is not None:
            raise ValueError(
                "the transformers judge backend decodes greedily: set temperature=0 and top_p=None"
            )
        from transformers import AutoModelForCausalLM

        from hfpref.models.hub import resolve_revision
        from hfpref.models.loading import load_model, load_tokenizer, select_device

        self.revision = resolve_revision(config.model, config.revision)
        self.tokenizer = load_tokenizer(config.model, self.revision)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"judge model {config.model!r} has no chat template")
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_model(
            AutoModelForCausalLM,
            config.model,
            self.revision,
            dtype=config.dtype,
            device=select_device(config.device, rank),
        )

    def model_identity(self) -> str:
        return f"{self.config.model}@{self.revision}"

    def generate(self, conversations: Sequence[Messages]) -> Iterator[tuple[int, Completion]]:
        import torch
        from transformers import GenerationConfig

        token_ids = []
        for messages in conversations:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            token_ids.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
        generation_config = GenerationConfig(  # fresh: the model's own sampling defaults must not apply
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            padded = self.tokenizer.pad({"input_ids": [token_ids[i] for i in batch]}, return_tensors="pt")
            padded = {name: tensor.to(self.model.device) for name, tensor in padded.items()}
            with torch.inference_mode():
                output = self.model.generate(**padded, generation_config=generation_config)
            texts = self.tokenizer.batch_decode(
                output[:, padded["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for i, text in zip(batch, texts, strict=True):
                yield i, Completion(text)


def backend_class(name: str) -> type[JudgeBackend]:
    """The backend class a ``JudgeConfig.backend`` names."""
    target = BACKENDS.get(name, name)
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, JudgeBackend)):
        raise TypeError(f"judge backend {name!r} is not a JudgeBackend subclass")
    return cls


def make_backend(config: JudgeConfig, rank: int | None = None) -> JudgeBackend:
    return backend_class(config.backend)(config, rank)


__all__ = [
    "BACKENDS",
    "DEFAULT_CACHE_DIR",
    "REQUEST_ERROR_POLICIES",
    "Completion",
    "JudgeBackend",
    "JudgeConfig",
    "JudgeFailureWarning",
    "JudgeRequestError",
    "Messages",
    "OpenAIBackend",
    "ResponseCache",
    "TransformersBackend",
    "as_judge_config",
    "backend_class",
    "completion_of",
    "make_backend",
]
