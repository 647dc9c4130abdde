"""LLM judges: pointwise quality scores (sample-level delta) and pairwise feature-difference analysis.

* ``backends``: ``JudgeConfig``, the OpenAI-compatible and local transformers backends, the on-disk
  reply cache, and ``JudgeStep`` (the base of the judge steps);
* ``parsing``: reading judge replies (a reply that does not parse is a counted missing value);
* ``quality``: ``QualityJudge`` and ``filter_by_sample_delta``;
* ``features``: ``FeatureDifferenceJudge``, f_Δ^rel / f_Δ^des, ``feature_summary``;
* ``pairwise``: ``PairwiseJudge``, which of two responses is better, asked in both orders (PairRM's role).

Prompt templates ship as package data in ``hfpref/judges/templates/*.j2``. Names import lazily, so
``import hfpref.judges`` needs neither ``openai`` nor ``torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "JudgeConfig": "hfpref.judges.backends",
    "JudgeBackend": "hfpref.judges.backends",
    "Completion": "hfpref.judges.backends",
    "OpenAIBackend": "hfpref.judges.backends",
    "TransformersBackend": "hfpref.judges.backends",
    "ResponseCache": "hfpref.judges.backends",
    "JudgeRequestError": "hfpref.judges.backends",
    "JudgeFailureWarning": "hfpref.judges.backends",
    "parse_failure_summary": "hfpref.judges.parsing",
    "QualityConfig": "hfpref.judges.quality",
    "QualityJudge": "hfpref.judges.quality",
    "filter_by_sample_delta": "hfpref.judges.quality",
    "FeatureConfig": "hfpref.judges.features",
    "FeatureDifferenceJudge": "hfpref.judges.features",
    "RELEVANT_FEATURES": "hfpref.judges.features",
    "IRRELEVANT_FEATURES": "hfpref.judges.features",
    "analyze_feature_differences": "hfpref.judges.features",
    "feature_summary": "hfpref.judges.features",
    "PairwiseConfig": "hfpref.judges.pairwise",
    "PairwiseJudge": "hfpref.judges.pairwise",
    "pairwise_summary": "hfpref.judges.pairwise",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfpref.judges' has no attribute {name!r}")
