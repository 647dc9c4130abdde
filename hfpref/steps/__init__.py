"""The curation steps, one module (or package) per step family; each imports only ``hfpref.core`` and
``hfpref.models``. Importing this package registers the built-in steps under their recipe names (the
modules themselves load only when a recipe names one of their steps)."""

from __future__ import annotations

from hfpref.core.registry import register_step

BUILTIN_STEPS: dict[str, str] = {
    "ChatPrompts": "hfpref.steps.chat_prompts:ChatPrompts",
    "ResponseSampler": "hfpref.steps.sampling:ResponseSampler",
    "IFEvalVerifier": "hfpref.steps.ifeval:IFEvalVerifier",
    "PairMetrics": "hfpref.steps.pair_metrics:PairMetrics",
    "LogProbAnnotator": "hfpref.steps.logprobs:LogProbAnnotator",
    "RewardAnnotator": "hfpref.steps.rewards:RewardAnnotator",
    "ConstrainedPrompts": "hfpref.steps.constraints:ConstrainedPrompts",
    "ContrastPairs": "hfpref.steps.contrast:ContrastPairs",
    "MCTSPairGenerator": "hfpref.steps.mcts:MCTSPairGenerator",
    "ImplicitMargins": "hfpref.steps.margins:ImplicitMargins",
    "AnnotationSelector": "hfpref.steps.margins:AnnotationSelector",
    "AnnotateSelected": "hfpref.steps.annotate:AnnotateSelected",
    "QualityJudge": "hfpref.steps.judges.quality:QualityJudge",
    "FeatureDifferenceJudge": "hfpref.steps.judges.features:FeatureDifferenceJudge",
    "PairwiseJudge": "hfpref.steps.judges.pairwise:PairwiseJudge",
    "GeneratorDeltaTagger": "hfpref.steps.generator_delta:GeneratorDeltaTagger",
    "ScreenResponses": "hfpref.steps.screening:ScreenResponses",
    "CopyColumns": "hfpref.steps.copy_columns:CopyColumns",
    "AnnotatedPairs": "hfpref.steps.annotate:AnnotatedPairs",
}

for _name, _target in BUILTIN_STEPS.items():
    register_step(_name, _target)
