"""Reading judge outputs: JSON found in free text, scores on a scale, feature-difference verdicts.

Judges answer in prose that usually contains one JSON object (sometimes in a ```json fence, sometimes
after a preamble). Everything here turns such text into values or ``None``: a reply that cannot be read
is a missing value, counted by the caller, never an exception and never a guessed score.

* ``find_json(text)``: the first JSON object (or array) embedded in the text.
* ``parse_score(value, low, high)``: one score on the closed scale [low, high], else None.
* ``parse_quality(text, dimensions, low, high)``: per-dimension scores of a pointwise quality verdict.
* ``parse_feature_differences(text, k)``: the (feature, better response) items of a pairwise verdict.
* ``parse_failure_summary(dataset, prefix)``: dataset-level counts of replies that did not parse.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def find_json(text: str | None) -> Any | None:
    """The first JSON object or array in ``text``: the whole text, a fenced block, or one embedded in prose.

    Written by hand because judges wrap their JSON in prose and fences, and ``json.loads`` alone wants the
    value to be the entire string; ``json.JSONDecoder.raw_decode`` does the actual parsing.
    """
    if not text:
        return None
    candidates = [text.strip()] + [block.strip() for block in _FENCE.findall(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            return value
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            return value
    return None


def normalize_key(name: str) -> str:
    """A name as a column-safe key: lower case, runs of other characters as one underscore."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def parse_score(value: Any, low: float, high: float) -> float | None:
    """``value`` as a score on [low, high], or None.

    Accepts numbers, numeric strings, ``"7/10"`` when the denominator is ``high``, and ``{"score": ...}``.
    Booleans, out-of-range numbers, NaN and anything else are None (not clipped: a judge that answers
    12 on a 1-10 scale did not follow the scale, and clipping would invent its meaning).
    """
    if isinstance(value, Mapping):
        value = value.get("score")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            if float(match.group(2)) != float(high):
                return None
            value = match.group(1)
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


@dataclasses.dataclass(frozen=True)
class QualityVerdict:
    """Scores of one response: ``scores[key]`` per dimension (None where unreadable)."""

    scores: dict[str, float | None]

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.scores.values())

    @property
    def overall(self) -> float | None:
        """The mean of the dimension scores when every one was read; None otherwise (no partial means)."""
        if not self.complete or not self.scores:
            return None
        return sum(self.scores.values()) / len(self.scores)  # type: ignore[arg-type]


def parse_quality(text: str | None, dimensions: Sequence[str], low: float, high: float) -> QualityVerdict:
    """Per-dimension scores from a judge reply; ``dimensions`` are the keys asked for (``normalize_key``'d).

    The reply's JSON object may nest the scores under ``"scores"``; its keys are matched after
    ``normalize_key``, so "Logical soundness" finds ``logical_soundness``.
    """
    found = find_json(text)
    scores: dict[str, float | None] = {key: None for key in dimensions}
    if not isinstance(found, dict):
        return QualityVerdict(scores)
    if isinstance(found.get("scores"), dict):
        found = found["scores"]
    by_key = {normalize_key(str(k)): v for k, v in found.items()}
    for key in dimensions:
        if key in by_key:
            scores[key] = parse_score(by_key[key], low, high)
    return QualityVerdict(scores)


# ---- feature differences --------------------------------------------------------------------

FIRST, SECOND = "A", "B"
_NO_DIRECTION = {"", "neither", "none", "n/a", "na", "not applicable", "equal", "tie", "same", "null"}
_DIRECTION = re.compile(r"^(?:response\s*|y)?([ab12])(?:\s+is\s+better)?$")


def normalize_feature(name: str) -> str:
    """A feature name as compared with the feature lists: lower case, separators as single spaces."""
    text = re.sub(r"[_\-]+", " ", str(name).lower())
    return re.sub(r"\s+", " ", text).strip(" \t\n\"'.:;,")


def parse_direction(value: Any) -> tuple[bool, str | None]:
    """(readable, "A" / "B" / None) for a "which response is better" answer.

    "A", "Response A", "y1" mean the response shown first; "neither", "not applicable", null mean no
    direction. Anything else is unreadable: a guessed direction would corrupt f_des.
    """
    if value is None:
        return True, None
    text = re.sub(r"[\"'.!]", "", str(value)).strip().lower()
    if text in _NO_DIRECTION:
        return True, None
    match = _DIRECTION.match(text)
    if not match:
        return False, None
    return True, FIRST if match.group(1) in "a1" else SECOND


@dataclasses.dataclass(frozen=True)
class FeatureVerdict:
    """One feature difference as the judge named it: feature, better response ("A"/"B"/None), why."""

    feature: str
    better: str | None
    justification: str | None = None


def _items(found: Any) -> list[tuple[Any, Any]] | None:
    """(feature name, details) pairs from the accepted shapes of a feature-difference reply."""
    if isinstance(found, dict) and isinstance(found.get("differences"), list):
        found = found["differences"]
    if isinstance(found, list):
        items = []
        for entry in found:
            if not isinstance(entry, dict) or "feature" not in entry:
                return None
            items.append((entry["feature"], entry))
        return items
    if isinstance(found, dict):  # {"feature name": {"better": ..., "justification": ...}, ...}
        return [(k, v) for k, v in found.items() if isinstance(v, dict)] or None
    return None


def _details_direction(details: Mapping[str, Any]) -> Any:
    for key in ("better", "better_response", "better response"):
        if key in details:
            return details[key]
    return None


def parse_feature_differences(text: str | None, k: int) -> list[FeatureVerdict] | None:
    """The first ``k`` distinct feature differences of a reply, or None when the reply does not parse.

    Accepted shapes: ``{"differences": [{"feature", "better", "justification"}, ...]}``, the bare list,
    or an object keyed by feature name. A reply parses when it names at least one feature and every
    direction it gives is readable (``parse_direction``); items past the first ``k`` are ignored (the
    judge lists the most prominent first), and a feature named twice counts once.
    """
    items = _items(find_json(text))
    if not items:
        return None
    verdicts: list[FeatureVerdict] = []
    seen: set[str] = set()
    for name, details in items:
        if not isinstance(name, str) or not normalize_feature(name):
            return None
        readable, better = parse_direction(_details_direction(details))
        if not readable:
            return None
        feature = normalize_feature(name)
        if feature in seen:
            continue
        seen.add(feature)
        justification = details.get("justification")
        verdicts.append(
            FeatureVerdict(feature, better, None if justification is None else str(justification))
        )
        if len(verdicts) == k:
            break
    return verdicts


# ---- dataset-level accounting ------------------------------------------------------------------


def parse_failure_summary(dataset: Any, prefix: str) -> dict[str, Any]:
    """How many judge replies of a judged dataset did not parse, or were never received.

    ``prefix`` names the step's columns: ``{prefix}_judge_raw`` (one entry per request),
    ``{prefix}_parse_failures`` and ``{prefix}_request_failures`` (per-row counts), e.g. ``"quality"``
    or ``"feature"`` (with a step's ``column_prefix`` in front, if it had one).
    """
    raw_column = f"{prefix}_judge_raw"
    failures = _column(dataset, f"{prefix}_parse_failures")
    request_failures = _column(dataset, f"{prefix}_request_failures")
    requests = sum(len(entry) for entry in _column(dataset, raw_column))
    parse_failed = sum(failures)
    rows_affected = sum(1 for p, r in zip(failures, request_failures, strict=True) if p or r)
    return {
        "rows": len(failures),
        "requests": requests,
        "parse_failures": parse_failed,
        "request_failures": sum(request_failures),
        "rows_with_failures": rows_affected,
        "parse_failure_rate": parse_failed / requests if requests else None,
    }


def _column(dataset: Any, name: str) -> list:
    names: Iterable[str] = dataset.column_names if hasattr(dataset, "column_names") else dataset.keys()
    if name not in names:
        raise KeyError(f"column {name!r} is missing; columns present: {sorted(names)}")
    return list(dataset[name])
