"""Annotation of the pairs selected for it, and the TRL preference rows they become.

Two steps, run after ``hfpref.steps.margins.AnnotationSelector``:

* ``AnnotateSelected`` runs any hfpref annotator that writes per-response ``rewards`` (``RewardAnnotator``,
  ``IFEvalVerifier``, or any step in the recipe registry) on the responses that appear in at least one
  selected pair, and on no other: annotation is what the budget pays for. The other responses get None in
  every per-response column the annotator writes, and ``response_annotated`` says which were scored.
* ``AnnotatedPairs`` turns each selected unordered pair into one TRL preference row: chosen = the response
  with the higher reward. A pair whose rewards are equal is dropped with ``drop_reason="rewards_tied"``,
  one with a missing or non-finite reward (or reward margin) with ``"nan_reward"``, one of a row whose
  prompt is missing (``hfpref.steps.pair_rows.prompt_is_missing``) with ``"missing_prompt"`` and one with a
  missing (None) response with ``"missing_response"`` (``hfpref.steps.pair_rows.split_dropped`` separates and
  counts them); unselected pairs make no row (they stay, flagged, in the candidates).

A pairwise annotator (a step with ``pairwise = True``, e.g. ``hfpref.steps.judges.pairwise.PairwiseJudge``, the
role arXiv 2406.17312 gives PairRM) gets whole rows and writes a preference per pair instead of a reward
per response; ``AnnotatedPairs(preferences_column=...)`` then takes chosen and rejected from it, and drops
ties as ``judge_tie`` and pairs without a verdict as ``judge_missing``.

The package: ``selected`` (``AnnotateSelected`` and which columns are per response), ``pairs``
(``AnnotatedPairs``). Every public name is importable from here (``hfpref.steps.annotate:AnnotateSelected``
is the step's registry target).
"""

from __future__ import annotations

from hfpref.core.columns import RESPONSE_ANNOTATED
from hfpref.steps.annotate.pairs import AnnotatedPairs, AnnotatedPairsConfig
from hfpref.steps.annotate.selected import (
    KNOWN_PER_RESPONSE,
    KNOWN_PER_ROW,
    AnnotateSelected,
    AnnotateSelectedConfig,
    is_per_response,
    needed_responses,
)

__all__ = [
    "KNOWN_PER_RESPONSE",
    "KNOWN_PER_ROW",
    "RESPONSE_ANNOTATED",
    "AnnotateSelected",
    "AnnotateSelectedConfig",
    "AnnotatedPairs",
    "AnnotatedPairsConfig",
    "is_per_response",
    "needed_responses",
]
