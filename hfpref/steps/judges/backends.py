"""Judge backends (an OpenAI-compatible endpoint, or a local transformers model), their on-disk cache, and
``JudgeStep``, the base of the steps that ask a judge.

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

Failures as missing values (``on_request_error="missing"``). A judge step writes None for a failed
request and counts it in its ``*_request_failures`` column; ``JudgeStep.apply`` then warns
(``JudgeFailureWarning``: the count and the first error) and keeps the output out of every later run's
cache: the output gets a fresh random fingerprint (so no later step's cached output is built on it), and
a ``datasets`` cache file of the step that records failures is deleted before the next run maps, so the
rerun maps again and the reply cache answers every request that succeeded; exactly the failed ones are
sent again.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.resources
import json
import logging
import os
import sqlite3
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, ClassVar

from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label, runtime_field
from hfpref.steps.chat_prompts import is_messages

Messages = list[dict[str, str]]
logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/hfpref/judge"
BACKENDS = {
    "openai": "hfpref.steps.judges.backends:OpenAIBackend",
    "transformers": "hfpref.steps.judges.backends:TransformersBackend",
}
REQUEST_ERROR_POLICIES = ("raise", "missing")


@dataclasses.dataclass
class JudgeConfig:
    """Which judge answers, and how.

    What decides the answers (fingerprinted): ``backend`` ("openai", "transformers" or
    "package.module:Class"), ``model`` (the endpoint's model name, or a Hub id / local folder for
    transformers), ``revision`` (transformers only), ``temperature``, ``top_p``, ``max_new_tokens``,
    ``seed``, ``extra_body`` (extra JSON fields for the endpoint, e.g. ``{"response_format": ...}``),
    ``dtype`` (transformers), and ``on_request_error``: ``"raise"`` (default; a request that still fails
    after the retries stops the step, and a rerun pays only for what the cache lacks) or ``"missing"``
    (its scores are None, it is counted in ``*_request_failures`` and warned about, and the step's output
    is never reused from the ``datasets`` cache, so a rerun re-sends exactly the failed requests: see
    the module notes).

    How (not fingerprinted): ``base_url`` (None: the client's default, ``OPENAI_BASE_URL``),
    ``api_key_env`` (the environment variable holding the key; local servers need none),
    ``concurrency``, ``max_retries``, ``timeout`` (seconds per attempt), ``cache_dir`` (None: no
    cache), ``device`` and ``batch_size`` (transformers).
    """

    model: str = ""
    backend: str = "openai"
    revision: str | None = None
    temperature: float = 0.0
    top_p: float | None = None
    max_new_tokens: int = 512
    seed: int | None = None
    extra_body: dict[str, Any] | None = None
    dtype: str = "auto"
    on_request_error: str = "raise"
    base_url: str | None = runtime_field(None)
    api_key_env: str | None = runtime_field("OPENAI_API_KEY")
    concurrency: int = runtime_field(8)
    max_retries: int = runtime_field(4)
    timeout: float = runtime_field(120.0)
    cache_dir: str | None = runtime_field(DEFAULT_CACHE_DIR)
    device: str | None = runtime_field(None)
    batch_size: int = runtime_field(8)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("JudgeConfig.model is required (the judge model's name, Hub id or folder)")
        if self.backend not in BACKENDS and ":" not in self.backend:
            raise ValueError(
                f"JudgeConfig.backend {self.backend!r} is not one of {sorted(BACKENDS)} "
                "or a 'package.module:Class' name"
            )
        if self.on_request_error not in REQUEST_ERROR_POLICIES:
            raise ValueError(
                f"JudgeConfig.on_request_error {self.on_request_error!r} is not one of {REQUEST_ERROR_POLICIES}"
            )
        if self.temperature < 0:
            raise ValueError(f"JudgeConfig.temperature must be >= 0, got {self.temperature}")
        for name in ("max_new_tokens", "concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"JudgeConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.timeout <= 0:
            raise ValueError("JudgeConfig.max_retries must be >= 0 and timeout > 0")

    def sampling_params(self) -> dict[str, Any]:
        """The request parameters that change the reply (part of the cache key)."""
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_new_tokens}
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.seed is not None:
            params["seed"] = self.seed
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params


def as_judge_config(value: JudgeConfig | Mapping[str, Any] | None) -> JudgeConfig:
    """A step config's ``judge`` field as a ``JudgeConfig`` (recipes give it as a mapping)."""
    if isinstance(value, JudgeConfig):
        return value
    if isinstance(value, Mapping):
        return JudgeConfig(**value)
    raise ValueError(f"`judge` must be a JudgeConfig or a mapping of its fields, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Completion:
    """A judge's reply: ``text``, or ``error`` when the request failed; ``cached`` when read from the cache."""

    text: str | None
    error: str | None = None
    cached: bool = False


# ---- the cache -------------------------------------------------------------------------------------


class ResponseCache:
    """Judge replies on disk, one SQLite row per request key (safe across processes: SQLite's own locking)."""

    FILENAME = "completions.sqlite3"

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.FILENAME
        self._connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
        with self._connection:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS completions "
                "(key TEXT PRIMARY KEY, request TEXT NOT NULL, text TEXT NOT NULL, created REAL NOT NULL)"
            )

    def get(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite limits the number of bound parameters
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT key, text FROM completions WHERE key IN ({marks})", chunk
            )
            found.update(rows.fetchall())
        return found

    def put(self, key: str, request: str, text: str) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?)", (key, request, text, time.time())
            )

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        self._connection.close()


# ---- backends --------------------------------------------------------------------------------------


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


# ---- the step base ---------------------------------------------------------------------------------


class JudgeRequestError(RuntimeError):
    """A judge request failed after its retries (with ``on_request_error="raise"``)."""


class JudgeFailureWarning(UserWarning):
    """Judge requests failed and were written as missing values (``on_request_error="missing"``)."""


def _cache_files_of(dataset: Any, fingerprint: str) -> list[str]:
    """The ``datasets`` cache file(s) a map over ``dataset`` with ``fingerprint`` writes (one, or one per
    worker of ``Dataset.map(num_proc=k)``, named ``..._00000_of_0000k.arrow``)."""
    path = dataset._get_cache_file_path(fingerprint)  # no public call names a map's cache file
    stem, suffix = os.path.splitext(path)
    return sorted({path, *(str(p) for p in Path(stem).parent.glob(f"{Path(stem).name}_*_of_*{suffix}"))})


def _failures_in_files(paths: Sequence[str], column: str) -> int:
    import datasets

    total = 0
    for path in paths:
        if os.path.exists(path):
            cached = datasets.Dataset.from_file(path)
            if column in cached.column_names:
                total += sum(v or 0 for v in cached[column])
    return total


def text_of_prompt(prompt: Any) -> str | None:
    """A prompt as the judge reads it: the string itself, or the conversation as ``[role]`` blocks."""
    if isinstance(prompt, str):
        return prompt
    if is_messages(prompt):
        if len(prompt) == 1 and prompt[0]["role"] == "user":
            return prompt[0]["content"]
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)
    return None


def text_of_response(response: Any) -> str | None:
    """A response as the judge reads it: the string, or the text of TRL's conversational completion."""
    if isinstance(response, str):
        return response
    if is_messages(response):
        if len(response) == 1:
            return response[0]["content"]
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in response)
    return None


class JudgeStep(Step):
    """A step that asks a judge (``config.judge``, a ``JudgeConfig``) with a Jinja prompt template.

    The template is ``config.template`` (a file path) or the package's ``default_template``. The
    fingerprint covers the judge's answer-deciding fields, the template's text, and for a local judge
    model its resolved revision; the backend loads lazily per worker and is never pickled.
    """

    default_template: ClassVar[str] = ""
    # the name part of the step's ``*_request_failures`` column (after ``column_prefix``)
    failure_column: ClassVar[str] = ""

    def __init__(self, config: StepConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        # cache files older than this step object are earlier runs'; newer ones may be this run's workers'
        self._since = time.time()
        self._failed_requests = 0  # failed requests seen in this step object's outputs
        self._reported: set[str] = set()  # cache files whose failures this object has warned about
        self._mapping = False

    def load(self, rank: int | None) -> JudgeBackend:
        return make_backend(self.config.judge, rank)

    # ---- failures: counted, warned about, never cached as results ------------------------------
    def request_failures_column(self) -> str:
        """The per-row count of failed requests (``on_request_error="missing"``)."""
        return self.column(self.failure_column)

    def output_fingerprint(self, dataset_fingerprint: str) -> str:
        """``Step.output_fingerprint``; once an output of this step object held failed requests, a fresh
        random one (outside its own map, which must find and write its cache file under the stable one),
        so that nothing computed from such an output is found in a later run's cache: the engines look up
        cached shards and join shards under this fingerprint."""
        stable = super().output_fingerprint(dataset_fingerprint)
        if getattr(self, "_mapping", False) or not getattr(self, "_failed_requests", 0):
            return stable
        return hashlib.sha256(f"{stable}:request-failures:{uuid.uuid4().hex}".encode()).hexdigest()[:32]

    def _drop_stale_failures(self, dataset) -> int:
        """Delete a cache file of this step over ``dataset`` that records failed requests, when it is an
        earlier run's (older than this step object) or one this object already warned about; returns how
        many failures it held (0: nothing deleted)."""
        from hfpref.pipeline.resume import can_resume

        if not can_resume(dataset):
            return 0
        files = [
            path
            for path in _cache_files_of(dataset, Step.output_fingerprint(self, dataset._fingerprint))
            if os.path.exists(path)
            and (
                os.path.getmtime(path) < getattr(self, "_since", 0) or path in getattr(self, "_reported", ())
            )
        ]
        stale = _failures_in_files(files, self.request_failures_column())
        if stale:
            logger.warning(
                "%s: a cached output holds %d failed judge request(s); mapping again (the reply cache answers "
                "the requests that succeeded)",
                self.name,
                stale,
            )
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        return stale

    def apply(self, dataset, *, batch_size: int = 64, num_proc: int | None = None, **map_kwargs: Any):
        """``Step.apply``, but an output with failed requests is never a cache hit in a later run.

        Before mapping, a cache file of this step over ``dataset`` that records failed requests (an earlier
        run's) is deleted, so the map runs again and only the requests missing from the reply cache are
        sent. After mapping, failures in the output are counted and warned about
        (``JudgeFailureWarning``), and the output gets a random fingerprint (see ``output_fingerprint``).
        """
        from hfpref.pipeline.resume import NotComputed

        column = self.request_failures_column()
        stale = self._drop_stale_failures(dataset)
        self._mapping = True
        try:
            try:
                out = super().apply(dataset, batch_size=batch_size, num_proc=num_proc, **map_kwargs)
            except NotComputed:
                if not stale:
                    raise
                # an engine replays a shard it found cached before this call deleted it: compute it here
                map_kwargs.pop("function", None)
                out = super().apply(dataset, batch_size=batch_size, num_proc=None, **map_kwargs)
        finally:
            self._mapping = False
        failed = sum(v or 0 for v in out[column]) if column in out.column_names else 0
        if failed:
            self._failed_requests = getattr(self, "_failed_requests", 0) + failed
            self._reported = {*getattr(self, "_reported", ()), *(f["filename"] for f in out.cache_files)}
            out._fingerprint = self.output_fingerprint(dataset._fingerprint)
            first = getattr(self, "_first_error", None) or "(raised in a worker process; see its log)"
            warnings.warn(
                f"{self.name}: {failed} judge request(s) failed and are missing values in {column!r} "
                f"(first error: {first}). They are not cached: rerun when the endpoint answers, and only "
                "they are sent again.",
                JudgeFailureWarning,
                stacklevel=2,
            )
        return out

    # judge steps compare two responses to one prompt, in columns their configs name
    def column(self, name: str) -> str:
        return f"{self.config.column_prefix}{name}"

    def input_columns(self) -> list[str]:
        return [self.config.prompt_column, self.config.first_column, self.config.second_column]

    def resolved_revision(self) -> str | None:
        judge: JudgeConfig = self.config.judge
        if judge.backend != "transformers":
            return None
        if getattr(self, "_revision", None) is None:
            from hfpref.models.hub import resolve_revision

            self._revision = resolve_revision(judge.model, judge.revision)
        return self._revision

    def template_text(self) -> str:
        path = getattr(self.config, "template", None)
        if path:
            return Path(path).expanduser().read_text(encoding="utf-8")
        return (
            importlib.resources.files("hfpref.steps.judges")
            .joinpath("templates", self.default_template)
            .read_text(encoding="utf-8")
        )

    def render(self, **values: Any) -> str:
        if getattr(self, "_template", None) is None:
            import jinja2

            environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
            self._template = environment.from_string(self.template_text())
        return self._template.render(**values).strip()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_template"] = None  # compiled templates do not pickle; they recompile on first use
        return state

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["template_sha256"] = hashlib.sha256(self.template_text().encode()).hexdigest()
        return described

    # ---- helpers for process() -------------------------------------------------------------
    def prompt_text(self, batch: Batch, column: str, i: int, indices: list[int] | None) -> str:
        text = text_of_prompt(batch[column][i])
        if text is None:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must be a string or a list of "
                f"{{'role', 'content'}} messages, got {batch[column][i]!r:.200}"
            )
        return text

    def response_text(self, batch: Batch, column: str, i: int, indices: list[int] | None) -> str:
        text = text_of_response(batch[column][i])
        if text is None:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must be a string or a list of "
                f"{{'role', 'content'}} messages, got {batch[column][i]!r:.200}"
            )
        return text

    def ask(
        self,
        conversations: Sequence[Messages],
        owners: Sequence[int],
        batch: Batch,
        indices: list[int] | None,
        rank,
    ) -> list[Completion]:
        """The judge's replies; ``owners[k]`` is the batch row of conversation k (named if a request fails)."""
        completions = self.resources(rank).complete(conversations)
        failed = [
            (owner, c.error) for owner, c in zip(owners, completions, strict=True) if c.error is not None
        ]
        if failed and self.config.judge.on_request_error == "missing":
            owner, error = failed[0]
            first = f"{row_label(batch, owner, indices)}: {error}"
            if getattr(self, "_first_error", None) is None:
                self._first_error = first
            logger.warning(
                "%s: %d judge request(s) of a batch failed; first: %s", self.name, len(failed), first
            )
        if self.config.judge.on_request_error == "raise":
            for owner, completion in zip(owners, completions, strict=True):
                if completion.error is not None and not completion.error.startswith("not sent"):
                    raise JudgeRequestError(
                        f"{self.name}: the judge request for {row_label(batch, owner, indices)} failed "
                        f"(max_retries={self.config.judge.max_retries}): {completion.error}. Replies received "
                        "so far are cached; rerun to continue, or set on_request_error='missing'."
                    )
        return completions
