"""DPO implicit rewards and margins of candidate responses, and margin-based selection of pairs to annotate.

The implicit reward DPO assigns a response (arXiv 2406.17312, after Rafailov et al.) is

    r̂(y) = β · (log π_θ(y|x) − log π_ref(y|x))

with log-probs summed over the response tokens (``policy_logps``, ``ref_logps`` from
``hfpref.steps.logprobs.LogProbAnnotator``). With ``length_normalize`` each log-prob is first divided by its
token count (``policy_token_counts``, ``ref_token_counts``), the paper's length-normalised variant. The
margin of an unordered pair {i, j}, i < j, is r̂(y_i) − r̂(y_j); once the pair is labelled, the margin of
(chosen, rejected) is exactly what TRL's ``DPOTrainer`` logs as ``rewards/margins`` for that pair.

``ImplicitMargins`` writes the rewards and the margins of all N(N−1)/2 pairs of a candidates row.
``AnnotationSelector`` then marks which pairs go to annotation under a budget (a fraction of the pairs, or
a count), by strategy:

==================  =============================================================================
``smallest_margin``  smallest |margin| first (the paper's recommendation: the policy is least sure)
``largest_margin``   largest |margin| first
``random``           uniformly at random (seeded)
==================  =============================================================================

at one of two levels:

* ``instance``: within each prompt, round(fraction · N(N−1)/2) pairs (or ``count`` pairs per prompt);
  a plain per-row map.
* ``corpus``: round(fraction · all pairs of the dataset) pairs (or ``count`` in all), ranked across the
  whole dataset. That needs every margin at once, so it runs through ``AnnotationSelector.apply`` (or
  ``select_for_annotation``), which ranks globally and then writes the flags with a map.

Ties are broken by a seeded pseudo-random key per pair, drawn from the selection seed and a hash of the
prompt (so it depends on neither the batch nor the row order), then by row index and pair position.

All margins equal. When every eligible pair of the dataset has the same margin — in the first round of
iterative DPO, if the policy *is* its reference, every margin is exactly 0 — ``smallest_margin`` and
``largest_margin`` would select exactly what ``random`` selects. That is never done silently:
``on_equal_margins="error"`` (the default) makes ``AnnotationSelector.apply`` raise ``EqualMarginsError``;
``on_equal_margins="random"`` selects at random by the seed, knowingly, and ``selection_summary`` reports
``margins_all_equal`` so the release card says so.

Some pairs are never selected, and say why in ``pair_excluded_reason``: ``missing_prompt`` (every pair of a
row whose prompt is missing, ``hfpref.steps.pair_rows.prompt_is_missing``: None, blank, or messages without
text; the pair makers drop such rows, so an annotation spent on them would be lost), ``missing_response``
(either response is None, e.g. a failed API call: it has no log-probs, so ``ImplicitMargins`` writes None
for its implicit reward and NaN for its margins), ``empty_response`` (either text is empty or whitespace),
``identical_responses`` (the same text twice: its margin is exactly 0, so it would top every
smallest-margin ranking while carrying no preference), ``nan_margin`` (a non-finite margin).
Budgets count all N(N−1)/2 pairs; excluded pairs use none of it, so a row (or corpus) with fewer eligible
pairs than its budget has all of them selected. Unselected pairs stay in the row, flagged ``False``.

The package: ``implicit`` (the formulas and ``ImplicitMargins``), ``annotation_selection``
(``AnnotationSelector``, its budgets, ranking and summary). Every public name is importable from here (the
registry targets are ``hfpref.steps.margins:ImplicitMargins`` and
``hfpref.steps.margins:AnnotationSelector``); the column names live in ``hfpref.core.columns``.
"""

from __future__ import annotations

from hfpref.core.columns import (
    IMPLICIT_MARGIN,
    IMPLICIT_MARGINS,
    IMPLICIT_REWARD_CHOSEN,
    IMPLICIT_REWARD_REJECTED,
    IMPLICIT_REWARDS,
    PAIR_EXCLUDED_REASON,
    PAIR_INDICES,
    PER_PAIR_COLUMNS,
    POLICY_TOKEN_COUNTS,
    SELECTED_FOR_ANNOTATION,
    SELECTION_COLUMNS,
    SELECTION_COUNT,
    SELECTION_FRACTION,
    SELECTION_LEVEL,
    SELECTION_STRATEGY,
)
from hfpref.steps.margins.annotation_selection import (
    EXCLUSION_REASONS,
    ON_EQUAL_MARGINS,
    SELECTION_LEVELS,
    SELECTION_STRATEGIES,
    AnnotationSelectionConfig,
    AnnotationSelector,
    EqualMarginsError,
    budget_size,
    exclusion_reasons,
    primary_keys,
    select_for_annotation,
    selection_summary,
    tiebreak_keys,
)
from hfpref.steps.margins.implicit import (
    ImplicitMargins,
    MarginConfig,
    implicit_rewards,
    pair_margins,
    unordered_pairs,
)

__all__ = [
    "EXCLUSION_REASONS",
    "IMPLICIT_MARGIN",
    "IMPLICIT_MARGINS",
    "IMPLICIT_REWARDS",
    "IMPLICIT_REWARD_CHOSEN",
    "IMPLICIT_REWARD_REJECTED",
    "ON_EQUAL_MARGINS",
    "PAIR_EXCLUDED_REASON",
    "PAIR_INDICES",
    "PER_PAIR_COLUMNS",
    "POLICY_TOKEN_COUNTS",
    "SELECTED_FOR_ANNOTATION",
    "SELECTION_COLUMNS",
    "SELECTION_COUNT",
    "SELECTION_FRACTION",
    "SELECTION_LEVEL",
    "SELECTION_LEVELS",
    "SELECTION_STRATEGIES",
    "SELECTION_STRATEGY",
    "AnnotationSelectionConfig",
    "AnnotationSelector",
    "EqualMarginsError",
    "ImplicitMargins",
    "MarginConfig",
    "budget_size",
    "exclusion_reasons",
    "implicit_rewards",
    "pair_margins",
    "primary_keys",
    "select_for_annotation",
    "selection_summary",
    "tiebreak_keys",
    "unordered_pairs",
]
