"""What every pair maker shares: reading a candidates row, writing pairs rows, and counting dropped rows.

The pair makers (``PairSelector``, ``ContrastPairs``, ``AnnotatedPairs``, ``MCTSPairGenerator``, the delta
sweeps) turn candidates rows (one prompt, N responses) into pairs rows (TRL's preference format plus
``columns.PAIR_COLUMNS``). They agree on the rules here, so a row gets the same treatment whichever of them
reads it:

* a missing prompt (``prompt_is_missing``) makes no pair; a missing response (None) is no candidate;
* per-response numbers are read as float arrays with NaN for None (``response_numbers``), N×N metric
  matrices as float arrays (``response_matrix``); a value of the wrong shape or type is a ``RowError``;
* a kept pair carries no NaN or ±inf: unknown or non-finite values are written as None (``finite_or_none``,
  ``pair_metrics``);
* a pair's completions follow the prompt: text for a text prompt, one assistant message for a chat prompt
  (``completion``), and the pairs' Arrow features are fixed up front (``pairs_features``), so a batch whose
  rows were all dropped keeps the same types;
* a dropped row keeps its prompt and says why in ``drop_reason``; ``split_dropped`` separates and counts them.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import datasets
import numpy as np

from hfpref.core import columns as C
from hfpref.core.step import Batch, RowError, Step
from hfpref.steps.pair_metrics import dcrm

# per-response lists and N×N matrices describe candidates, not a pair, and the sampler's token-id cache is
# no pair data: pair makers do not pass them through
NOT_PASSED_THROUGH = (
    frozenset(C.PER_RESPONSE_COLUMNS) | frozenset(C.MATRIX_COLUMNS) | frozenset(C.TOKEN_CACHE_COLUMNS)
)


# ---- the prompt ------------------------------------------------------------------------------------------
def prompt_is_missing(prompt: Any) -> bool:
    """Whether a prompt gives a model nothing to answer: None, blank text, no messages, or chat messages none of
    which has non-blank text content. Pair makers drop such rows with ``missing_prompt``."""
    if prompt is None:
        return True
    if isinstance(prompt, str):
        return not prompt.strip()
    if isinstance(prompt, Sequence):
        return not any(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) and m["content"].strip()
            for m in prompt
        )
    return False  # not a prompt type at all: left to the steps' own type checks


def prompt_seed(prompt: Any) -> int:
    """A stable 64-bit integer from a prompt (str or list of messages), independent of Python's hash seed."""
    payload = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(payload.encode()).digest()[:8], "little")


# ---- reading a candidates row ------------------------------------------------------------------------------
def check_response_texts(texts: Sequence[Any], where: str) -> None:
    """Raise ``RowError`` unless every response is a string or None (missing); ``where``: step and row."""
    for k, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise RowError(
                f"{where} column {C.RESPONSES!r}[{k}] must be a string or None (missing), got "
                f"{type(text).__name__} {text!r:.200}"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def response_numbers(
    values: Any, n: int, where: str, column: str, note: str = "one per response"
) -> np.ndarray:
    """One number per response as float64, NaN for None (all NaN when the whole value is None).

    Raises ``RowError`` (with ``where``, the step and row) unless ``values`` holds ``n`` numbers or Nones.
    """
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, str) or len(values) != n or not all(v is None or _is_number(v) for v in values):
        raise RowError(f"{where} column {column!r} must hold {n} numbers ({note}), got {values!r:.200}")
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def response_matrix(batch: Batch, column: str, i: int, n: int, where: str) -> np.ndarray | None:
    """Row ``i``'s N×N matrix of ``column`` (from ``PairMetrics``) as float64, None cells NaN; None when the
    column or the row's value is absent."""
    if column not in batch or batch[column][i] is None:
        return None
    rows = batch[column][i]
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise RowError(f"{where} column {column!r} is not a numeric matrix: {rows!r:.200}") from err
    if matrix.shape != (n, n):
        raise RowError(
            f"{where} column {column!r} has shape {matrix.shape} for {n} responses "
            "(rerun PairMetrics after changing responses)"
        )
    return matrix


def distinct(values: Sequence[Any]) -> np.ndarray:
    """N×N booleans: whether values i and j differ (by equality, so it works for any hashable values)."""
    codes = {value: k for k, value in enumerate(dict.fromkeys(values))}
    ids = np.array([codes[v] for v in values])
    return ids[:, None] != ids[None, :]


def usable_pairs(texts: Sequence[str | None]) -> np.ndarray:
    """N×N booleans: i ≠ j and both responses real and non-blank (rule 2 of every pair maker)."""
    usable = np.array([t is not None and t.strip() != "" for t in texts], dtype=bool)
    return usable[:, None] & usable[None, :] & ~np.eye(len(texts), dtype=bool)


def first_empty(filters: Sequence[tuple[str, Any]], n: int) -> tuple[np.ndarray, str | None]:
    """Apply ``(drop reason, N×N keep mask or a function returning one)`` filters in order.

    Returns the eligible pairs and None, or an empty mask and the reason of the first filter that left none
    (so the drop reason names the first rule a row fails).
    """
    eligible = np.ones((n, n), dtype=bool)
    with np.errstate(invalid="ignore"):
        for reason, keep in filters:
            eligible &= keep() if callable(keep) else keep
            if not eligible.any():
                return eligible, reason
    return eligible, None


# ---- writing pairs rows ------------------------------------------------------------------------------------
def finite_or_none(value: Any) -> float | None:
    """A float, or None for a value that is None, NaN or ±inf."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def completion(text: str, conversational: bool) -> Any:
    """A response as TRL wants it: the text, or a list with one assistant message for a chat prompt."""
    return [{"role": "assistant", "content": text}] if conversational else text


def pair_metrics(
    edit: np.ndarray | None,
    logp: np.ndarray | None,
    chosen: int,
    rejected: int,
    margin: float | None,
    eps: float,
) -> dict[str, float | None]:
    """The pair's ``edit_distance``, ``logp_diff`` and ``dcrm`` from PairMetrics' matrices, None where unknown
    or not finite. Without a log-prob matrix p_Δ counts as 0 in DCRM, as PairMetrics' ``dcrm_matrix`` does."""
    edit_value = None if edit is None else finite_or_none(edit[chosen, rejected])
    logp_value = None if logp is None else finite_or_none(logp[chosen, rejected])
    p_known = logp is None or logp_value is not None
    dcrm_value = None
    if edit_value is not None and margin is not None and p_known:
        dcrm_value = dcrm(margin, edit_value, logp_value or 0.0, eps)
    return {C.EDIT_DISTANCE: edit_value, C.LOGP_DIFF: logp_value, C.DCRM: dcrm_value}


def pair_sides(
    texts: Sequence[str],
    chosen: int,
    rejected: int,
    generators: Sequence[str | None] | None,
    conversational: bool,
) -> dict[str, Any]:
    """The pair columns that name its two responses: completions, indices and generators."""
    return {
        C.CHOSEN: completion(texts[chosen], conversational),
        C.REJECTED: completion(texts[rejected], conversational),
        C.CHOSEN_INDEX: chosen,
        C.REJECTED_INDEX: rejected,
        C.CHOSEN_GENERATOR: None if generators is None else generators[chosen],
        C.REJECTED_GENERATOR: None if generators is None else generators[rejected],
    }


class PairMaker(Step):
    """Base of the steps that turn candidates rows into pairs rows (so they change the row count).

    Each input column that is neither a pairs column the step writes (``output_columns``), nor one it
    consumes (``consumed_columns``), nor a per-response list or N×N matrix (``NOT_PASSED_THROUGH``) is
    copied unchanged to every pairs row of its input row.
    """

    changes_row_count: ClassVar[bool] = True

    def consumed_columns(self) -> set[str]:
        """Input columns read into the pairs and therefore not passed through (besides the outputs)."""
        return set()

    def passthrough_columns(self, column_names: list[str]) -> list[str]:
        """The input columns copied unchanged to the pairs rows."""
        excluded = NOT_PASSED_THROUGH | {*self.output_columns(), *self.consumed_columns()}
        return [name for name in column_names if name not in excluded]

    def empty_output(self, batch: Batch) -> tuple[Batch, list[str]]:
        """An empty output batch with every output and passthrough column, and the passthrough columns."""
        passthrough = self.passthrough_columns(list(batch))
        return {name: [] for name in [*self.output_columns(), *passthrough]}, passthrough


def append_pair_row(
    out: Batch,
    batch: Batch,
    i: int,
    pair: Mapping[str, Any] | None,
    columns: Sequence[str],
    strategy: str,
    reason: str | None,
    passthrough: Sequence[str],
) -> None:
    """Append one pairs row made from input row ``i`` to ``out``: its prompt, ``columns`` from ``pair`` (all
    None for a dropped row, ``pair`` None), ``pair_strategy``, ``drop_reason`` and the passthrough columns."""
    out[C.PROMPT].append(batch[C.PROMPT][i])
    for name in columns:
        out[name].append(None if pair is None else pair[name])
    out[C.PAIR_STRATEGY].append(strategy)
    out[C.DROP_REASON].append(reason)
    for name in passthrough:
        out[name].append(batch[name][i])


def pair_column_features(prompt_feature: Any, step: str = "pair selection") -> dict[str, Any]:
    """Arrow features of ``prompt`` and ``columns.PAIR_COLUMNS``: ``chosen``/``rejected`` follow the prompt
    (strings for a text prompt, a list of one assistant message for a conversational one)."""
    if prompt_feature == datasets.Value("string"):
        text: Any = datasets.Value("string")
    elif isinstance(prompt_feature, (datasets.List, datasets.LargeList)):
        text = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    else:
        raise TypeError(
            f"{step}: column {C.PROMPT!r} must be a string or a list of messages, its feature is {prompt_feature}"
        )
    string, integer, real = datasets.Value("string"), datasets.Value("int64"), datasets.Value("float64")
    return {
        C.PROMPT: prompt_feature,
        C.CHOSEN: text,
        C.REJECTED: text,
        C.CHOSEN_INDEX: integer,
        C.REJECTED_INDEX: integer,
        C.CHOSEN_GENERATOR: string,
        C.REJECTED_GENERATOR: string,
        **{name: real for name in C.PAIR_COLUMNS[6:]},
    }


def pairs_features(
    input_features: datasets.Features,
    passthrough: Sequence[str],
    extra_float_columns: Sequence[str] = (),
    step: str = "pair selection",
) -> datasets.Features:
    """Features of pairs rows (TRL's preference format, DESIGN.md's pair metadata, ``drop_reason``).

    Fixed up front, so a batch whose rows were all dropped (all pair columns None) keeps the same
    Arrow types as the others.
    """
    string = datasets.Value("string")
    features: dict[str, Any] = {
        **pair_column_features(input_features[C.PROMPT], step),
        **{name: datasets.Value("float64") for name in extra_float_columns},
        C.PAIR_STRATEGY: string,
        C.DROP_REASON: string,
    }
    for name in passthrough:
        features[name] = input_features[name]
    return datasets.Features(features)


# ---- drop accounting ---------------------------------------------------------------------------------------
def split_dropped(pairs: datasets.Dataset) -> tuple[datasets.Dataset, collections.Counter]:
    """The kept pairs (without ``drop_reason``) and how many rows each drop reason removed."""
    reasons = collections.Counter(r for r in pairs[C.DROP_REASON] if r is not None)
    kept = pairs.filter(
        lambda reason: [r is None for r in reason],
        batched=True,
        input_columns=C.DROP_REASON,
        desc="kept pairs",
    )
    return kept.remove_columns(C.DROP_REASON), reasons


__all__ = [
    "NOT_PASSED_THROUGH",
    "PairMaker",
    "append_pair_row",
    "check_response_texts",
    "completion",
    "distinct",
    "finite_or_none",
    "first_empty",
    "pair_column_features",
    "pair_metrics",
    "pair_sides",
    "pairs_features",
    "prompt_is_missing",
    "prompt_seed",
    "response_matrix",
    "response_numbers",
    "split_dropped",
    "usable_pairs",
]
