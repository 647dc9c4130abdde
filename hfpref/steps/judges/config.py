"""What a judge request is: ``JudgeConfig`` (which judge answers, and how), ``JudgeStepConfig`` (the
base of the judge steps' configs), the ``Completion`` a request returns, the failure types, and ``ResponseCache``, the on-disk store of replies.

Every backend (``hfpref.steps.judges.backends``) stores each reply in a SQLite file under ``cache_dir``
as soon as it arrives, keyed by the model's identity, the messages and the sampling parameters (not the
endpoint), so an interrupted run, or the same requests sent to another server of the same model, never
pays twice. Failed requests are never cached.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.step import StepConfig, runtime_field

Messages = list[dict[str, str]]  # a chat conversation: {"role", "content"} messages

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


@dataclasses.dataclass
class JudgeStepConfig(StepConfig):
    """The fields every judge step's config starts with: ``judge`` (a ``JudgeConfig`` or a mapping of its
    fields, made a ``JudgeConfig``), ``prompt_column``, ``template`` (a Jinja file replacing the step's
    packaged one) and ``column_prefix`` (put before every output column's name)."""

    judge: JudgeConfig | Mapping[str, Any] | None = None
    prompt_column: str = C.PROMPT
    template: str | None = None
    column_prefix: str = ""

    def __post_init__(self) -> None:
        self.judge = as_judge_config(self.judge)


@dataclasses.dataclass(frozen=True)
class Completion:
    """A judge's reply: ``text``, or ``error`` when the request failed; ``cached`` when read from the cache."""

    text: str | None
    error: str | None = None
    cached: bool = False


class JudgeRequestError(RuntimeError):
    """A judge request failed after its retries (with ``on_request_error="raise"``)."""


class JudgeFailureWarning(UserWarning):
    """Judge requests failed and were written as missing values (``on_request_error="missing"``)."""


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
