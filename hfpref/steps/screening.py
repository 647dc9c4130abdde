"""Screening real responses: flag (and by default remove) answers to an older prompt and runaway answers.

Real generations have defects that no reward should grade: a response written for an older revision of the
prompt (IFEval key 2785: every M-IFEval generator answered "at least one placeholder", today's prompt asks
for 3; text-bison answered the 2023-11 revision of many prompts) and runaway generations of small models
(Qwen2.5-0.5B-Instruct: 36 responses over 10,000 characters, most of them one line or phrase repeated).

``ScreenResponses`` flags each response with one reason or None:

* ``stale_prompt``: the prompt the generator saw (``prompts_seen``) states different *arguments* than
  today's ``prompt``: a different multiset of numbers (digits or the number words one to twenty, hundred,
  thousand) or of quoted spans ("…", “…”, '…', <<…>>), compared case-insensitively. Rewording alone
  ("Write" → "Compose") does not count; ``stale_prompt="any"`` flags every difference beyond whitespace,
  ``"off"`` none.
* ``runaway``: longer than ``max_chars``, or at least ``repetition_min_chars`` long with fewer than
  ``min_distinct_trigrams`` of its word trigrams distinct (0.2: four in five trigrams repeat an earlier
  one; legitimately repetitive answers such as JSON or song choruses stay above 0.3 on IFEval).

A ``None`` response (a failed generation) is not screened: it stays in place, unflagged, for the steps
that count missing responses.

With ``remove=True`` (default) flagged responses leave the row: every per-response column present
(``columns.PER_RESPONSE_COLUMNS``, ``prompts_seen`` among them) is subset alike, so the lists stay aligned, and
``screened_out`` records each removed response as ``{index, generator, reason, chars}`` (``index``: its
position before screening) so the release counts them per reason and generator.

Input columns: ``responses``; ``prompt`` and ``prompts_seen`` when present (stale-prompt screening needs
both: data that does not record which prompt each response answered is screened for runaways only, so
the default recipe runs on any candidates); ``generators`` when present. Output columns: ``responses`` and the other per-response columns present, ``response_flags``
(per kept response: None when removing, else its flag), ``screened_out``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label

STALE_PROMPT = "stale_prompt"
RUNAWAY = "runaway"
REASONS = (STALE_PROMPT, RUNAWAY)
STALE_MODES = ("arguments", "any", "off")

_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "hundred",
    "thousand",
]
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
# quoted spans: straight and curly double quotes, single quotes at word boundaries (not apostrophes), <<…>>
_QUOTED_RE = re.compile(r"\"([^\"]*)\"|“([^”]*)”|(?<!\w)'([^']+)'(?!\w)|<<([^>]*)>>")


@dataclasses.dataclass
class ScreenConfig(StepConfig):
    """Settings of ``ScreenResponses`` (see the module docstring for the rules).

    stale_prompt: "arguments" (numbers or quoted spans differ), "any" (any non-whitespace difference), "off".
    max_chars: a response longer than this is ``runaway`` (None: no length cap).
    repetition_min_chars: shorter responses are never judged repetitive.
    min_distinct_trigrams: ``runaway`` when the share of distinct word trigrams is below this.
    remove: take flagged responses out of the candidates (else only flag them).
    """

    stale_prompt: str = "arguments"
    max_chars: int | None = 10_000
    repetition_min_chars: int = 1_000
    min_distinct_trigrams: float = 0.2
    remove: bool = True

    def __post_init__(self) -> None:
        if self.stale_prompt not in STALE_MODES:
            raise ValueError(f"stale_prompt must be one of {list(STALE_MODES)}, got {self.stale_prompt!r}")
        if self.max_chars is not None and not (isinstance(self.max_chars, int) and self.max_chars > 0):
            raise ValueError(f"max_chars must be a positive int or null, got {self.max_chars!r}")
        if not (isinstance(self.repetition_min_chars, int) and self.repetition_min_chars >= 0):
            raise ValueError(
                f"repetition_min_chars must be a non-negative int, got {self.repetition_min_chars!r}"
            )
        if not 0.0 <= self.min_distinct_trigrams <= 1.0:
            raise ValueError(f"min_distinct_trigrams must be in [0, 1], got {self.min_distinct_trigrams!r}")


def prompt_arguments(text: str) -> tuple[list[str], list[str]]:
    """The numbers and quoted spans a prompt states, each sorted and lower-cased."""
    numbers = sorted(m.lower() for m in _NUMBER_RE.findall(text))
    quoted = sorted("".join(groups).strip().lower() for groups in _QUOTED_RE.findall(text))
    return numbers, quoted


def is_stale(seen: str | None, current: str, mode: str = "arguments") -> bool:
    """Whether a response written for prompt ``seen`` answers a different prompt than ``current``."""
    if mode == "off" or seen is None:
        return False
    if " ".join(seen.split()) == " ".join(current.split()):
        return False
    return mode == "any" or prompt_arguments(seen) != prompt_arguments(current)


def distinct_trigram_share(text: str) -> float:
    """Distinct word trigrams / all word trigrams (1.0 when the text has fewer than three words)."""
    words = text.split()
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(trigrams)) / len(trigrams) if trigrams else 1.0


def response_flag(
    response: str | None, seen: str | None, prompt: str | None, config: ScreenConfig
) -> str | None:
    """The reason to screen out one response, or None to keep it (stale prompt is checked first)."""
    if response is None:
        return None
    if prompt is not None and is_stale(seen, prompt, config.stale_prompt):
        return STALE_PROMPT
    if config.max_chars is not None and len(response) > config.max_chars:
        return RUNAWAY
    if (
        len(response) >= config.repetition_min_chars
        and distinct_trigram_share(response) < config.min_distinct_trigrams
    ):
        return RUNAWAY
    return None


class ScreenResponses(Step):
    """Flag stale-prompt and runaway responses and (by default) remove them; see the module docstring."""

    config_class = ScreenConfig
    version = "1"
    config: ScreenConfig

    def input_columns(self) -> list[str]:
        return [C.RESPONSES]

    def output_columns(self) -> list[str]:
        return [C.RESPONSES, C.RESPONSE_FLAGS, C.SCREENED_OUT]

    @staticmethod
    def output_features(input_features: Any) -> Any:
        """The output's ``datasets.Features``: the input's, plus typed flag and screened-out columns.

        Declared because Arrow cannot infer them from a first batch where nothing was flagged (a list of
        None, an empty list), and would then refuse a later batch's strings and structs.
        """
        import datasets

        features = datasets.Features(dict(input_features))
        features[C.RESPONSE_FLAGS] = datasets.List(datasets.Value("string"))
        features[C.SCREENED_OUT] = datasets.List(
            {
                "index": datasets.Value("int64"),
                "generator": datasets.Value("string"),
                "reason": datasets.Value("string"),
                "chars": datasets.Value("int64"),
            }
        )
        return features

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        aligned = [c for c in C.PER_RESPONSE_COLUMNS if c in batch and c != C.RESPONSE_FLAGS]
        matrices = [c for c in C.MATRIX_COLUMNS if c in batch]
        out: Batch = {name: [] for name in [*aligned, *matrices, C.RESPONSE_FLAGS, C.SCREENED_OUT]}
        for i in range(len(batch[C.RESPONSES])):
            responses = list(batch[C.RESPONSES][i] or [])
            n = len(responses)
            values = {column: batch[column][i] for column in aligned}
            stale_ids = values.get(C.RESPONSE_TOKEN_IDS)
            if stale_ids is not None and len(stale_ids) != n:
                # a cache, not data: a step that appended responses without their ids left it stale;
                # drop it for this row (PairMetrics then tokenizes) rather than refuse the row
                values[C.RESPONSE_TOKEN_IDS] = None
            for column, value in values.items():
                if value is not None and len(value) != n:
                    raise RowError(
                        f"{self.name}: {row_label(batch, i, indices)} column {column!r} has {len(value)} "
                        f"entries for {n} responses; per-response columns must be aligned with 'responses'"
                    )
            seen = batch[C.PROMPTS_SEEN][i] if C.PROMPTS_SEEN in batch else None
            compare = seen is not None and C.PROMPT in batch and self.config.stale_prompt != "off"
            prompt = batch[C.PROMPT][i] if compare else None
            if prompt is not None and not isinstance(prompt, str):
                raise RowError(
                    f"{self.name}: {row_label(batch, i, indices)} stale-prompt screening compares text "
                    f"prompts, got {type(prompt).__name__}; set stale_prompt: off for conversational prompts"
                )
            generators = batch[C.GENERATORS][i] if C.GENERATORS in batch else None
            flags = [
                response_flag(text, seen[k] if seen else None, prompt, self.config)
                for k, text in enumerate(responses)
            ]
            keep = [k for k, flag in enumerate(flags) if flag is None or not self.config.remove]
            removed = (
                [] if not self.config.remove else [k for k, flag in enumerate(flags) if flag is not None]
            )
            for column, value in values.items():
                out[column].append(None if value is None else [value[k] for k in keep])
            for column in matrices:
                matrix = batch[column][i]
                out[column].append(None if matrix is None else [[matrix[a][b] for b in keep] for a in keep])
            out[C.RESPONSE_FLAGS].append([flags[k] for k in keep])
            out[C.SCREENED_OUT].append(
                [
                    {
                        "index": k,
                        "generator": generators[k] if generators else None,
                        "reason": flags[k],
                        "chars": len(responses[k]),
                    }
                    for k in removed
                ]
            )
        return out


def screening_counts(screened_out: list[list[dict[str, Any]] | None]) -> dict[str, Any]:
    """What a ``screened_out`` column removed: totals per reason, per generator and reason, rows touched."""
    by_reason: Counter = Counter()
    by_generator: dict[str, Counter] = {}
    rows = 0
    for removed in screened_out:
        if not removed:
            continue
        rows += 1
        for entry in removed:
            by_reason[entry["reason"]] += 1
            by_generator.setdefault(str(entry["generator"]), Counter())[entry["reason"]] += 1
    return {
        "removed": sum(by_reason.values()),
        "rows_affected": rows,
        "by_reason": dict(sorted(by_reason.items())),
        "by_generator": {g: dict(sorted(c.items())) for g, c in sorted(by_generator.items())},
    }
