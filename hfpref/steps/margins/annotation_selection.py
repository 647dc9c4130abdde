"""Which candidate pairs go to annotation, by implicit margin under a budget: ``AnnotationSelector``.

Strategies (smallest, largest |margin|, random), levels (instance, corpus), budgets, tie-breaks, the
exclusion reasons and the equal-margins guard are specified in ``hfpref.steps.margins``' docstring;
``selection_summary`` gives the counts and margin statistics the manifest and card report.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.stats import describe_values
from hfpref.core.step import Batch, RowError, Step, StepConfig, check_columns, row_label
from hfpref.steps.margins.implicit import unordered_pairs
from hfpref.steps.pair_rows import prompt_is_missing, prompt_seed

SELECTION_STRATEGIES = ("smallest_margin", "largest_margin", "random")
SELECTION_LEVELS = ("instance", "corpus")
EXCLUSION_REASONS = (
    "missing_prompt",
    "missing_response",
    "empty_response",
    "identical_responses",
    "nan_margin",
)
ON_EQUAL_MARGINS = ("error", "random")


class EqualMarginsError(UserError):
    """Margin-based selection over margins that are all equal (it would be random selection in disguise)."""


def budget_size(available: int, fraction: float | None, count: int | None) -> int:
    """How many of ``available`` pairs a budget allows: round(fraction · available), halves up, or count."""
    if fraction is not None:
        return min(available, math.floor(fraction * available + 0.5))
    return min(available, int(count or 0))


def tiebreak_keys(seed: int, prompt: Any, n_pairs: int) -> np.ndarray:
    """A seeded uniform [0, 1) key per pair of a row; depends only on the seed, the prompt and the pair."""
    return np.random.default_rng([seed, prompt_seed(prompt)]).random(n_pairs)


def primary_keys(strategy: str, margins: np.ndarray) -> np.ndarray:
    """The first sort key of each pair (ascending = selected first)."""
    if strategy == "smallest_margin":
        return np.abs(margins)
    if strategy == "largest_margin":
        return -np.abs(margins)
    return np.zeros(len(margins))  # random: the tie-break key alone decides


def exclusion_reasons(
    responses: Sequence[str], margins: Sequence[float], prompt_missing: bool = False
) -> list[str | None]:
    """Why each unordered pair cannot be selected (None when it can), in ``unordered_pairs`` order;
    ``prompt_missing``: the row's prompt is missing, so every pair is ``missing_prompt``."""
    usable = [isinstance(t, str) and t.strip() != "" for t in responses]
    reasons: list[str | None] = []
    for (i, j), margin in zip(unordered_pairs(len(responses)), margins, strict=True):
        if prompt_missing:
            reasons.append("missing_prompt")
        elif responses[i] is None or responses[j] is None:
            reasons.append("missing_response")
        elif not (usable[i] and usable[j]):
            reasons.append("empty_response")
        elif responses[i] == responses[j]:
            reasons.append("identical_responses")
        elif margin is None or not math.isfinite(margin):
            reasons.append("nan_margin")
        else:
            reasons.append(None)
    return reasons


@dataclasses.dataclass
class AnnotationSelectionConfig(StepConfig):
    """Which pairs go to annotation: ``strategy`` (``SELECTION_STRATEGIES``), ``level`` ("instance" or
    "corpus"), and exactly one budget: ``fraction`` of the pairs (0 < fraction ≤ 1) or ``count`` pairs
    (per prompt at instance level, in all at corpus level); ``seed`` for tie-breaks and ``random``;
    ``on_equal_margins``: what a margin strategy does when every eligible margin is the same, "error"
    (default) or "random" (select at random by the seed, reported in ``selection_summary``)."""

    strategy: str = "smallest_margin"
    level: str = "instance"
    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    on_equal_margins: str = "error"

    def __post_init__(self) -> None:
        if self.strategy not in SELECTION_STRATEGIES:
            raise ValueError(
                f"unknown selection strategy {self.strategy!r}; choose one of {list(SELECTION_STRATEGIES)}"
            )
        if self.level not in SELECTION_LEVELS:
            raise ValueError(
                f"unknown selection level {self.level!r}; choose one of {list(SELECTION_LEVELS)}"
            )
        if (self.fraction is None) == (self.count is None):
            raise ValueError(
                f"give exactly one budget, fraction or count (got fraction={self.fraction!r}, count={self.count!r})"
            )
        if self.fraction is not None and not (
            isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1
        ):
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if self.count is not None and not (
            isinstance(self.count, int) and not isinstance(self.count, bool) and self.count >= 0
        ):
            raise ValueError(f"count must be a non-negative int, got {self.count!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.on_equal_margins not in ON_EQUAL_MARGINS:
            raise ValueError(
                f"on_equal_margins must be one of {list(ON_EQUAL_MARGINS)}, got {self.on_equal_margins!r}"
            )

    @property
    def name(self) -> str:
        """The strategy and level as one name, e.g. ``smallest_margin_corpus`` (the release's config name)."""
        return f"{self.strategy}_{self.level}"


class AnnotationSelector(Step):
    """Marks the pairs of each candidates row that go to annotation (see the module docstring).

    Input columns: ``prompt``, ``responses``, ``pair_indices``, ``implicit_margins`` (from
    ``ImplicitMargins``).
    Output columns: ``pair_excluded_reason`` (list[str | None] per pair), ``selected_for_annotation``
    (list[bool] per pair), and per row ``selection_strategy``, ``selection_level``, ``selection_fraction``
    (float, None with a count budget), ``selection_count`` (int, None with a fraction budget).

    Corpus level ranks across the whole dataset, so it runs only through ``apply`` (which ranks first and
    then maps); called on a lone batch it raises.
    """

    # the public path, as before the split: manifests name the step by it and its fingerprint hashes it, so
    # cached outputs and released recipes stay valid (the package re-exports the class under this path)
    __module__ = "hfpref.steps.margins"

    needs_whole_dataset = True  # its apply() looks at every row before mapping
    config_class = AnnotationSelectionConfig
    version = "3"  # 2: pairs with a missing response excluded (missing_response); 3: missing prompts too
    config: AnnotationSelectionConfig

    def __init__(self, config: AnnotationSelectionConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._corpus_selected: dict[int, set[int]] | None = None

    def input_columns(self) -> list[str]:
        return [C.PROMPT, C.RESPONSES, C.PAIR_INDICES, C.IMPLICIT_MARGINS]

    def output_columns(self) -> list[str]:
        return [C.PAIR_EXCLUDED_REASON, C.SELECTED_FOR_ANNOTATION, *C.SELECTION_COLUMNS]

    # ---- one row ---------------------------------------------------------------------------------
    def _row(self, batch: Batch, i: int, indices: list[int] | None) -> tuple[list[str | None], np.ndarray]:
        """(exclusion reason per pair, margins) of row ``i``, after checking its shape."""
        responses = batch[C.RESPONSES][i] or []
        margins = batch[C.IMPLICIT_MARGINS][i]
        pairs = batch[C.PAIR_INDICES][i]
        expected = [list(p) for p in unordered_pairs(len(responses))]
        if pairs is None or [list(p) for p in pairs] != expected:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {C.PAIR_INDICES!r} must list the "
                f"{len(expected)} pairs (i, j), i < j, of {len(responses)} responses in order, got {pairs!r} "
                "(rerun ImplicitMargins after changing responses)"
            )
        if margins is None or len(margins) != len(expected):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {C.IMPLICIT_MARGINS!r} must hold "
                f"{len(expected)} margins, got {margins!r}"
            )
        values = np.array([np.nan if m is None else m for m in margins], dtype=np.float64)
        missing = prompt_is_missing(batch[C.PROMPT][i])
        return exclusion_reasons(responses, values.tolist(), prompt_missing=missing), values

    def row_order(self, prompt: Any, margins: np.ndarray, excluded: list[str | None]) -> list[int]:
        """Positions of the row's eligible pairs, best first (the instance-level ranking)."""
        eligible = np.array([reason is None for reason in excluded], dtype=bool)
        positions = np.flatnonzero(eligible)
        primary = primary_keys(self.config.strategy, margins)[positions]
        tiebreak = tiebreak_keys(self.config.seed, prompt, len(margins))[positions]
        return [int(positions[k]) for k in np.lexsort((positions, tiebreak, primary))]

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        config = self.config
        corpus = config.level == "corpus"
        if corpus and (self._corpus_selected is None or indices is None):
            raise ValueError(
                f"{self.name}: corpus-level selection ranks pairs across the whole dataset; run it with "
                "AnnotationSelector.apply(dataset) (or select_for_annotation), not on a lone batch"
            )
        out: Batch = {name: [] for name in self.output_columns()}
        for i, prompt in enumerate(batch[C.PROMPT]):
            excluded, margins = self._row(batch, i, indices)
            if corpus:
                chosen = self._corpus_selected.get(indices[i], set())
            else:
                order = self.row_order(prompt, margins, excluded)
                chosen = set(order[: budget_size(len(margins), config.fraction, config.count)])
            out[C.PAIR_EXCLUDED_REASON].append(excluded)
            out[C.SELECTED_FOR_ANNOTATION].append([k in chosen for k in range(len(margins))])
            out[C.SELECTION_STRATEGY].append(config.strategy)
            out[C.SELECTION_LEVEL].append(config.level)
            out[C.SELECTION_FRACTION].append(config.fraction)
            out[C.SELECTION_COUNT].append(config.count)
        return out

    # ---- the whole dataset -----------------------------------------------------------------------
    def corpus_selection(self, dataset, *, batch_size: int = 1000) -> dict[int, set[int]]:
        """Row index -> positions of its selected pairs, ranked across every eligible pair of the dataset.

        Sort key: primary key (|margin| for smallest, −|margin| for largest, none for random), then the
        seeded tie-break key, then row index, then pair position — a total order, so exactly the budget's
        number of pairs (or every eligible pair, if fewer) is selected whatever the batching.
        """
        primary, tiebreak, rows, positions = [], [], [], []
        total_pairs = 0
        view = dataset.select_columns(self.input_columns())
        offset = 0
        for batch in view.iter(batch_size=batch_size):
            batch_indices = list(range(offset, offset + len(batch[C.PROMPT])))
            for i, prompt in enumerate(batch[C.PROMPT]):
                excluded, margins = self._row(batch, i, batch_indices)
                total_pairs += len(margins)
                eligible = np.flatnonzero([reason is None for reason in excluded])
                primary.append(primary_keys(self.config.strategy, margins)[eligible])
                tiebreak.append(tiebreak_keys(self.config.seed, prompt, len(margins))[eligible])
                rows.append(np.full(len(eligible), batch_indices[i]))
                positions.append(eligible)
            offset += len(batch[C.PROMPT])
        budget = budget_size(total_pairs, self.config.fraction, self.config.count)
        selected: dict[int, set[int]] = {}
        if not primary or budget == 0:
            return selected
        keys = [np.concatenate(parts) for parts in (positions, rows, tiebreak, primary)]
        order = np.lexsort(keys)[:budget]
        for row, position in zip(keys[1][order].tolist(), keys[0][order].tolist(), strict=True):
            selected.setdefault(int(row), set()).add(int(position))
        return selected

    def equal_margins(self, dataset, *, batch_size: int = 1000) -> tuple[int, float | None]:
        """(number of eligible pairs, their common margin or None when they differ) over the dataset."""
        low, high, eligible = math.inf, -math.inf, 0
        view = dataset.select_columns(self.input_columns())
        offset = 0
        for batch in view.iter(batch_size=batch_size):
            batch_indices = list(range(offset, offset + len(batch[C.PROMPT])))
            for i in range(len(batch[C.PROMPT])):
                excluded, margins = self._row(batch, i, batch_indices)
                values = margins[[reason is None for reason in excluded]]
                if len(values):
                    eligible += len(values)
                    low, high = min(low, float(values.min())), max(high, float(values.max()))
            offset += len(batch[C.PROMPT])
        return eligible, (low if eligible and low == high else None)

    def check_margins_differ(self, dataset) -> None:
        """Raise ``EqualMarginsError`` when a margin strategy would rank pairs whose margins are all equal."""
        config = self.config
        if config.strategy == "random" or config.on_equal_margins == "random":
            return
        eligible, value = self.equal_margins(dataset)
        if eligible >= 2 and value is not None:
            raise EqualMarginsError(
                f"{self.name}: all {eligible} eligible pairs have the same implicit margin ({value:g}), so "
                f"{config.strategy} selection would be random selection (the policy scores every response "
                "exactly as its reference does). Score the responses under a policy that differs from its "
                "reference, or set on_equal_margins: random to select at random by the seed knowingly"
            )

    def apply(self, dataset, *, batch_size: int = 64, num_proc: int | None = None, **map_kwargs: Any):
        """``Step.apply``; at corpus level the global ranking is computed first, then written by a map.

        Either level first checks that the margins are not all equal (see ``on_equal_margins``).
        """
        check_columns(dataset.column_names, self.input_columns(), self.name)
        self.check_margins_differ(dataset)
        if self.config.level == "instance":
            return super().apply(dataset, batch_size=batch_size, num_proc=num_proc, **map_kwargs)
        self._corpus_selected = self.corpus_selection(dataset)
        try:
            return super().apply(dataset, batch_size=batch_size, num_proc=num_proc, **map_kwargs)
        finally:
            self._corpus_selected = None


def select_for_annotation(dataset, config: AnnotationSelectionConfig | None = None, **fields: Any):
    """Run ``AnnotationSelector`` over a ``datasets.Dataset`` (either level); returns the flagged dataset."""
    return AnnotationSelector(config, **fields).apply(dataset)


# ---- summaries for manifests and cards ---------------------------------------------------------------------


def selection_summary(candidates) -> dict[str, Any]:
    """Counts and margin statistics of a flagged candidates dataset (or a dict of columns).

    Returns pairs (all), eligible, excluded (by reason), selected, rows_with_selection, and
    statistics of |implicit margin| over the selected and over the eligible unselected pairs, plus the
    |margin| range of the selected pairs, and ``margins_all_equal`` (every eligible margin the same).
    """
    excluded: Counter = Counter()
    selected_abs, unselected_abs, eligible_margins = [], [], set()
    pairs = eligible = rows_with = 0
    for reasons, flags, margins in zip(
        candidates[C.PAIR_EXCLUDED_REASON],
        candidates[C.SELECTED_FOR_ANNOTATION],
        candidates[C.IMPLICIT_MARGINS],
        strict=True,
    ):
        pairs += len(flags)
        rows_with += any(flags)
        for reason, flag, margin in zip(reasons, flags, margins, strict=True):
            if reason is not None:
                excluded[reason] += 1
                continue
            eligible += 1
            eligible_margins.add(margin)
            (selected_abs if flag else unselected_abs).append(abs(margin))
    return {
        "pairs": pairs,
        "eligible": eligible,
        "excluded": dict(sorted(excluded.items())),
        "selected": len(selected_abs),
        "rows": len(candidates[C.SELECTED_FOR_ANNOTATION]),
        "rows_with_selection": rows_with,
        "abs_margin_selected": describe_values(selected_abs),
        "abs_margin_unselected": describe_values(unselected_abs),
        # every eligible margin the same: a margin strategy selected at random (on_equal_margins: random)
        "margins_all_equal": eligible >= 2 and len(eligible_margins) == 1,
    }
