"""LLM judges: pointwise quality scores (sample-level delta) and pairwise feature-difference analysis.

* ``config``: ``JudgeConfig``, the ``Completion`` reply, the failure types and the on-disk reply cache;
* ``backends``: the OpenAI-compatible and local transformers backends;
* ``base``: ``JudgeStep``, the base of the judge steps (failed requests as missing values);
* ``parsing``: reading judge replies (a reply that does not parse is a counted missing value);
* ``quality``: ``QualityJudge`` and ``filter_by_sample_delta``;
* ``features``: ``FeatureDifferenceJudge``, f_Δ^rel / f_Δ^des, ``feature_summary``;
* ``pairwise``: ``PairwiseJudge``, which of two responses is better, asked in both orders (PairRM's role).

Prompt templates ship as package data in ``hfpref/steps/judges/templates/*.j2``. Names import lazily, so
``import hfpref.steps.judges`` needs neither ``openai`` nor ``torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "JudgeConfig": "hfpref.steps.judges.config",
    "JudgeBackend": "hfpref.steps.judges.backends",
    "Completion": "hfpref.steps.judges.config",
    "OpenAIBackend": "hfpref.steps.judges.backends",
    "TransformersBackend": "hfpref.steps.judges.backends",
    "ResponseCache": "hfpref.steps.judges.config",
    "JudgeRequestError": "hfpref.steps.judges.config",
    "JudgeFailureWarning": "hfpref.steps.judges.config",
    "JudgeStep": "hfpref.steps.judges.base",
    "JudgeStepConfig": "hfpref.steps.judges.config",
    "parse_failure_summary": "hfpref.steps.judges.parsing",
    "QualityConfig": "hfpref.steps.judges.quality",
    "QualityJudge": "hfpref.steps.judges.quality",
    "filter_by_sample_delta": "hfpref.steps.judges.quality",
    "FeatureConfig": "hfpref.steps.judges.features",
    "FeatureDifferenceJudge": "hfpref.steps.judges.features",
    "RELEVANT_FEATURES": "hfpref.steps.judges.features",
    "IRRELEVANT_FEATURES": "hfpref.steps.judges.features",
    "analyze_feature_differences": "hfpref.steps.judges.features",
    "feature_summary": "hfpref.steps.judges.features",
    "PairwiseConfig": "hfpref.steps.judges.pairwise",
    "PairwiseJudge": "hfpref.steps.judges.pairwise",
    "pairwise_summary": "hfpref.steps.judges.pairwise",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfpref.steps.judges' has no attribute {name!r}")
