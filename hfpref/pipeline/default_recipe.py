"""The recipe ``hfpref curate`` runs without arguments: IFEval's prompts with the eight embedded generators'
responses, screened, verified, paired with every strategy that needs no reference model (also
``dataset_scripts/ifeval_eight_generators.yaml``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from hfpref.pipeline.pair_specs import MEASURED

if TYPE_CHECKING:
    from hfpref.pipeline.recipe import Recipe

DEFAULT_STRATEGIES = [
    "best_of_n2",
    "best_of_n2_ds",
    "max_margin",
    "random",
    "ds_rm",
    "ds_fix",
    "dcrm_no_logp",
    "dcrm_no_reward",
    "edit_only",
    "reward_only",
]  # not dcrm_no_edit and logp_only: they need p_Δ, and the default has no reference model
DEFAULT_RECIPE: dict[str, Any] = {
    "description": (
        "IFEval's 541 prompts, each with up to eight real responses (GPT-4 and PaLM-2 text-bison as published "
        "with IFEval; Qwen2.5-0.5B/1.5B/7B/14B/32B-Instruct and Mistral-7B-Instruct-v0.3 from M-IFEval), "
        "screened for answers to an older prompt and runaway answers, rewarded by the fraction of the "
        "prompt's verifiable constraints each response meets (strict), with the generators ranked by their "
        "measured IFEval accuracy, paired with every hfpref pair strategy that needs no reference model."
    ),
    "input": {"default": "ifeval"},
    "steps": [
        {
            "step": "ScreenResponses",
            "config": {
                "stale_prompt": "arguments",
                "max_chars": 10_000,
                "repetition_min_chars": 1_000,
                "min_distinct_trigrams": 0.2,
            },
        },
        {"step": "IFEvalVerifier", "config": {"reward": "strict"}},
        {"step": "PairMetrics", "config": {"tokenizer": None}},
    ],
    "pairs": {
        "strategies": DEFAULT_STRATEGIES,
        "config": {"seed": 0, "generator_ranking": MEASURED, "eps": 1.0},
    },
    "output": {"folder": "hfpref-release", "name": "hfpref-ifeval-eight-generators", "version": "0.2.0"},
}


def default_recipe(validate: bool = True) -> Recipe:
    """The recipe ``hfpref curate`` runs without arguments (also ``dataset_scripts/ifeval_eight_generators.yaml``)."""
    from hfpref.pipeline.recipe import Recipe

    return Recipe.from_dict(
        copy.deepcopy(DEFAULT_RECIPE), source="(embedded default recipe)", validate=validate
    )
