"""hfpref: curate preference datasets as reproducible chains of Hugging Face ``datasets`` transforms.

The public names below import lazily, so ``import hfpref`` stays fast and a step's heavy dependencies
(torch, lm-eval, trl) load only when that step is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from hfpref.transform import MissingColumnError, RowError, Step, StepConfig

__version__ = "0.1.0"

_LAZY = {
    "IFEvalVerifier": "hfpref.ifeval",
    "IFEvalConfig": "hfpref.ifeval",
    "PairMetrics": "hfpref.pair_metrics",
    "PairMetricsConfig": "hfpref.pair_metrics",
    "dcrm": "hfpref.pair_metrics",
    "PairSelector": "hfpref.selection",
    "SelectionConfig": "hfpref.selection",
    "STRATEGIES": "hfpref.selection",
    "split_dropped": "hfpref.selection",
    "LogProbAnnotator": "hfpref.logprobs",
    "LogProbConfig": "hfpref.logprobs",
    "RewardAnnotator": "hfpref.rewards",
    "RewardConfig": "hfpref.rewards",
    "ResponseSampler": "hfpref.sampling",
    "SamplerConfig": "hfpref.sampling",
    "ChatPrompts": "hfpref.chat_prompts",
    "load_ifeval_candidates": "hfpref.default_data",
    "Recipe": "hfpref.recipe",
    "write_release": "hfpref.release",
    "load_release": "hfpref.release",
    "push_release": "hfpref.release",
    "train_dpo": "hfpref.train",
    "ImplicitMargins": "hfpref.margins",
    "MarginConfig": "hfpref.margins",
    "AnnotationSelector": "hfpref.margins",
    "AnnotationSelectionConfig": "hfpref.margins",
    "select_for_annotation": "hfpref.margins",
    "AnnotateSelected": "hfpref.annotate",
    "AnnotatedPairs": "hfpref.annotate",
    "ConstrainedPrompts": "hfpref.constraints",
    "ConstraintConfig": "hfpref.constraints",
    "ContrastPairs": "hfpref.contrast",
    "ContrastConfig": "hfpref.contrast",
    "mix_contrast": "hfpref.contrast",
    "MCTSPairGenerator": "hfpref.mcts",
    "MCTSConfig": "hfpref.mcts",
    "GeneratorDeltaTagger": "hfpref.generator_delta",
    "measure_generator_capabilities": "hfpref.generator_delta",
    "measure_capabilities": "hfpref.generator_delta",
    "plan_sweep": "hfpref.delta_sweep",
    "level_pairs": "hfpref.delta_sweep",
    "sweep_analysis": "hfpref.delta_sweep",
    "train_kto": "hfpref.train_kto",
    "ScreenResponses": "hfpref.screening",
    "ScreenConfig": "hfpref.screening",
    "generator_accuracy": "hfpref.capabilities",
}

__all__ = ["MissingColumnError", "RowError", "Step", "StepConfig", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfpref' has no attribute {name!r}")
