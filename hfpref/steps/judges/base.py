"""``JudgeStep``, the base of the steps that ask a judge, and how their failed requests are handled.

Failures as missing values (``on_request_error="missing"``). A judge step writes None for a failed
request and counts it in its ``*_request_failures`` column; ``JudgeStep.apply`` then warns
(``JudgeFailureWarning``: the count and the first error) and keeps the output out of every later run's
cache: the output gets a fresh random fingerprint (so no later step's cached output is built on it), and
a ``datasets`` cache file of the step that records failures is deleted before the next run maps, so the
rerun maps again and the reply cache answers every request that succeeded; exactly the failed ones are
sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hfpref.core.cache import NotComputed, can_resume, map_cache_files
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.steps.chat_prompts import is_messages
from hfpref.steps.judges.backends import JudgeBackend, make_backend
from hfpref.steps.judges.config import (
    Completion,
    JudgeConfig,
    JudgeFailureWarning,
    JudgeRequestError,
    Messages,
)

logger = logging.getLogger(__name__)


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
    """A prompt as the judge reads it: the string itself, or the conversation as ``[role]`` blocks (a lone
    user message as its content)."""
    return _text_of(prompt, lambda message: message["role"] == "user")


def text_of_response(response: Any) -> str | None:
    """A response as the judge reads it: the string, or the text of TRL's conversational completion."""
    return _text_of(response, lambda message: True)


def _text_of(value: Any, plain: Callable[[Mapping[str, str]], bool]) -> str | None:
    """``value`` if a string; a conversation as ``[role]`` blocks, or the content of a lone message for
    which ``plain`` holds; None for anything else."""
    if isinstance(value, str):
        return value
    if is_messages(value):
        if len(value) == 1 and plain(value[0]):
            return value[0]["content"]
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in value)
    return None


class JudgeStep(Step):
    """A step that asks a judge (``config.judge``, a ``JudgeConfig``) with a Jinja prompt template.

    The template is ``config.template`` (a file path) or the packaged ``templates/{family}.j2``. The
    fingerprint covers the judge's answer-deciding fields, the template's text, and for a local judge
    model its resolved revision; the backend loads lazily per worker and is never pickled.

    Input columns, unless a subclass says otherwise: ``prompt_column``, ``first_column`` and
    ``second_column`` of the config (default prompt, chosen, rejected). Output columns are named with the
    config's ``column_prefix`` in front (``column``).
    """

    # the packaged template (under ``templates/``) used when ``config.template`` is unset; None: ``{family}.j2``
    default_template: ClassVar[str | None] = None
    # what the step's bookkeeping columns start with (after ``column_prefix``): ``{family}_judge_raw``,
    # ``{family}_parse_failures``, ``{family}_request_failures``; ``parse_failure_summary`` takes it too
    family: ClassVar[str] = ""

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
        return self.column(f"{self.family}_request_failures")

    def bookkeeping_columns(self) -> list[str]:
        """The columns of the replies as received, the unreadable replies and the failed requests."""
        return [
            self.column(f"{self.family}_{name}")
            for name in ("judge_raw", "parse_failures", "request_failures")
        ]

    def record_replies(self, out: Batch, raw: list, parse_failures: int, request_failures: int) -> None:
        """Append one row's replies as received and its counts of unreadable replies and failed requests."""
        values = (raw, parse_failures, request_failures)
        for column, value in zip(self.bookkeeping_columns(), values, strict=True):
            out[column].append(value)

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
        if not can_resume(dataset):
            return 0
        files = [
            path
            for path in map_cache_files(dataset, Step.output_fingerprint(self, dataset._fingerprint))
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
            .joinpath("templates", self.default_template or f"{self.family}.j2")
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
        return self._text(batch, column, i, indices, text_of_prompt)

    def response_text(self, batch: Batch, column: str, i: int, indices: list[int] | None) -> str:
        return self._text(batch, column, i, indices, text_of_response)

    def _text(
        self, batch: Batch, column: str, i: int, indices: list[int] | None, read: Callable[[Any], str | None]
    ) -> str:
        text = read(batch[column][i])
        if text is None:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must be a string or a list of "
                f"{{'role', 'content'}} messages, got {batch[column][i]!r:.200}"
            )
        return text

    def ask_rows(
        self, batch: Batch, indices: list[int] | None, rank, judge_prompts: Callable[[int], list[str]]
    ) -> list[list[Completion]]:
        """Ask the judge ``judge_prompts(i)`` (one user message each) for every row ``i`` of the batch, all
        in one go; the replies grouped by row, in the order asked."""
        conversations: list[Messages] = []
        owners: list[int] = []
        sizes = []
        for i in range(len(batch[self.config.prompt_column])):
            texts = judge_prompts(i)
            conversations += [[{"role": "user", "content": text}] for text in texts]
            owners += [i] * len(texts)
            sizes.append(len(texts))
        completions = self.ask(conversations, owners, batch, indices, rank) if conversations else []
        grouped, start = [], 0
        for size in sizes:
            grouped.append(completions[start : start + size])
            start += size
        return grouped

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
