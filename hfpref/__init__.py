"""hfpref: curate preference datasets as reproducible chains of Hugging Face ``datasets`` transforms.

The public names below import lazily, so ``import hfpref`` stays fast and a step's heavy dependencies
(torch, lm-eval, trl) load only when that step is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from hfpref.core.step import MissingColumnError, RowError, Step, StepConfig

__version__ = "0.1.0"

_LAZY = {
    "IFEvalVerifier": "hfpref.steps.ifeval",
    "IFEvalConfig": "hfpref.steps.ifeval",
    "PairMetrics": "hfpref.steps.pair_metrics",
    "PairMetricsConfig": "hfpref.steps.pair_metrics",
    "dcrm": "hfpref.steps.pair_metrics",
    "PairSelector": "hfpref.steps.selection",
    "SelectionConfig": "hfpref.steps.selection",
    "STRATEGIES": "hfpref.steps.selection",
    "split_dropped": "hfpref.steps.selection",
    "LogProbAnnotator": "hfpref.steps.logprobs",
    "LogProbConfig": "hfpref.steps.logprobs",
    "RewardAnnotator": "hfpref.steps.rewards",
    "RewardConfig": "hfpref.steps.rewards",
    "ResponseSampler": "hfpref.steps.sampling",
    "SamplerConfig": "hfpref.steps.sampling",
    "ChatPrompts": "hfpref.steps.chat_prompts",
    "load_ifeval_candidates": "hfpref.pipeline.default_data",
    "Recipe": "hfpref.pipeline.recipe",
    "write_release": "hfpref.release.writer",
    "load_release": "hfpref.release.load",
    "push_release": "hfpref.release.push",
    "train_dpo": "hfpref.training.dpo",
    "ImplicitMargins": "hfpref.steps.margins",
    "MarginConfig": "hfpref.steps.margins",
    "AnnotationSelector": "hfpref.steps.margins",
    "AnnotationSelectionConfig": "hfpref.steps.margins",
    "select_for_annotation": "hfpref.steps.margins",
    "AnnotateSelected": "hfpref.steps.annotate",
    "AnnotatedPairs": "hfpref.steps.annotate",
    "ConstrainedPrompts": "hfpref.steps.constraints",
    "ConstraintConfig": "hfpref.steps.constraints",
    "ContrastPairs": "hfpref.steps.contrast",
    "ContrastConfig": "hfpref.steps.contrast",
    "mix_contrast": "hfpref.steps.contrast",
    "MCTSPairGenerator": "hfpref.steps.mcts",
    "MCTSConfig": "hfpref.steps.mcts",
    "GeneratorDeltaTagger": "hfpref.steps.generator_delta",
    "measure_generator_capabilities": "hfpref.steps.generator_delta",
    "measure_capabilities": "hfpref.steps.generator_delta",
    "plan_sweep": "hfpref.steps.delta_sweep",
    "level_pairs": "hfpref.steps.delta_sweep",
    "sweep_analysis": "hfpref.steps.delta_sweep",
    "train_kto": "hfpref.training.kto",
    "ScreenResponses": "hfpref.steps.screening",
    "ScreenConfig": "hfpref.steps.screening",
    "generator_accuracy": "hfpref.steps.capabilities",
}

__all__ = ["MissingColumnError", "RowError", "Step", "StepConfig", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfpref' has no attribute {name!r}")
