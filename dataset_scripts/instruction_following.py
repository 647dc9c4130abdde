"""Instruction-following preference data as in arXiv 2412.15282, end to end, with hfpref's Python API.

    seed prompts ─ ConstrainedPrompts (k IFEval constraints each; difficulty = k)
                 ─ ResponseSampler (N responses from the policy)
                 ─ IFEvalVerifier (correctness = fraction of constraints met, strict; also the rewards)
                 ─ PairMetrics (e_Δ over the policy's tokens, for the card's plot and the dcrm column)
                 ├ PairSelector max_margin            → config ``max_margin``       (RS: best vs worst)
                 ├ ContrastPairs mode=high            → config ``rs_high_contrast``
                 ├ ContrastPairs mode=low             → config ``rs_low_contrast``
                 ├ mix_contrast(high ∪ low)           → config ``rs_mixed_contrast`` (ratio, by difficulty)
                 └ MCTSPairGenerator on the prompts   → config ``mcts_shared_prefix`` (shared prefixes)
    → one release folder (Parquet per config, card, manifest), pushed with ``hfpref push``.

Why a script and not a YAML recipe: ``hfpref curate`` recipes run candidate-level steps and then
``PairSelector`` strategies only. The contrast pairs (a different pair maker, several pairs per prompt),
the dataset-level mix and the MCTS branch (which searches from the prompts, not from the candidates) are
outside that format. So the candidate-level part below *is* a standard recipe (``candidate_recipe``),
run by ``Recipe.run`` (caching, resumable shards, GPU workers), and the rest is added to its result before
``write_release``.

Usage::

    # the paper-sized run (GPUs, Hub access, Llama 2's license accepted on the Hub)
    python dataset_scripts/instruction_following.py --gpus 8 --folder if-release
    # a CPU-sized run on a local model folder and a file of seed prompts (a "prompt" column)
    python dataset_scripts/instruction_following.py --size cpu --model PATH --input seeds.jsonl --folder out
    hfpref push if-release ORG/NAME --version 0.1.0

What the paper summary fixes and what is ours (``PAPER``): the policy is LLaMA-2-7B-Chat; prompts carry
verifiable IFEval constraints and k ∈ {4, 5, 6} are the difficulties studied (k = 4 trains best); the MCTS
value weighs self-evaluation with λ = 0.2. The seed prompts (UltraFeedback's here), N = 8 samples, the
sampling settings, the contrast thresholds (high: gap ≥ 0.5; low: gap ≤ 0.25) and the mix (half high,
half low, same difficulty mix in both) are ours. None of the paper-sized settings has been run: they are
checked by construction (every config builds), not executed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hfpref import columns as C
from hfpref.constraints import DIFFICULTY, SEED_PROMPT, ConstraintConfig
from hfpref.contrast import ContrastConfig, ContrastPairs, largest_mix_size, mix_contrast
from hfpref.recipe import Recipe, RecipeResult
from hfpref.selection import split_dropped

MIXED_CONFIG = "rs_mixed_contrast"
MCTS_CONFIG = "mcts_shared_prefix"


@dataclasses.dataclass
class Settings:
    """Everything a run depends on; ``PAPER`` and ``CPU`` are the two presets.

    input: a recipe ``input:`` mapping (hub / path, with ``rename`` / ``columns``) giving seed prompts in
      a ``prompt`` column (or ``constraints["source_column"]``).
    constraints: ``ConstraintConfig`` fields. policy, policy_revision: the model that answers (and
      searches, for MCTS). sampler: ``SamplerConfig`` fields besides the model.
    extra_steps: recipe step specs ({step, config}) run after sampling and before verification, e.g. a
      step adding another generator's responses.
    contrast: ``ContrastConfig`` fields shared by the high and low configs (not ``mode``).
    mix: ``mix_contrast`` arguments (``ratio_high``, ``size``: None = ``largest_mix_size``, ``seed``,
      ``stratify``, ``allow_short``), or None for no mixed config.
    mcts: ``MCTSConfig`` fields besides the model, or None for no MCTS config.
    output: a recipe ``output:`` mapping (folder, name, version, ...).
    """

    description: str
    input: dict[str, Any]
    constraints: dict[str, Any]
    policy: str
    sampler: dict[str, Any]
    contrast: dict[str, Any]
    mix: dict[str, Any] | None
    mcts: dict[str, Any] | None
    output: dict[str, Any]
    policy_revision: str | None = None
    extra_steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)


PAPER = Settings(
    description=(
        "Instruction-following preference pairs (arXiv 2412.15282): UltraFeedback prompts with 4-6 "
        "verifiable IFEval constraints each (difficulty = k), 8 responses each from LLaMA-2-7B-Chat scored "
        "by the fraction of constraints met; RS pairs best vs worst, high- and low-contrast RS pairs, a "
        "half-and-half contrast mix stratified by difficulty, and MCTS pairs with shared prefixes."
    ),
    input={
        "hub": "HuggingFaceH4/ultrafeedback_binarized",
        "revision": "main",  # pin a commit sha to reproduce; the card records the commit used
        "split": "train_prefs",
        "columns": ["prompt_id", "prompt"],
    },
    constraints={"k_choices": [4, 5, 6], "seed": 0},
    policy="meta-llama/Llama-2-7b-chat-hf",
    sampler={
        "n": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 1024,
        "seed": 0,
        "dtype": "bfloat16",
    },
    contrast={"high_min_gap": 0.5, "low_max_gap": 0.25, "max_pairs_per_prompt": 1, "seed": 0},
    mix={"ratio_high": 0.5, "size": None, "seed": 0, "stratify": DIFFICULTY, "allow_short": True},
    mcts={
        "lambda_self_eval": 0.2,
        "max_new_tokens": 1024,
        "max_pairs_per_prompt": 1,
        "dtype": "bfloat16",
        "seed": 0,
    },
    output={
        "folder": "hfpref-instruction-following",
        "name": "hfpref-instruction-following",
        "version": "0.1.0",
    },
)

# Small enough for a laptop CPU with a tiny model (the test suite runs it on one); --model is required.
CPU = dataclasses.replace(
    PAPER,
    description="A CPU-sized run of the instruction-following recipe (arXiv 2412.15282) on a small model.",
    input={"path": "seed_prompts.jsonl"},
    constraints={"k_choices": [2, 3], "seed": 0},
    policy="",
    sampler={"n": 4, "temperature": 1.0, "max_new_tokens": 16, "seed": 0, "dtype": "float32"},
    mix={"ratio_high": 0.5, "size": None, "seed": 0, "stratify": None, "allow_short": False},
    mcts={"n_simulations": 2, "n_children": 2, "chunk_max_tokens": 4, "max_depth": 2, "max_new_tokens": 16},
    output={
        "folder": "hfpref-instruction-following-cpu",
        "name": "hfpref-instruction-following-cpu",
        "version": "0.1.0",
    },
)
PRESETS = {"paper": PAPER, "cpu": CPU}


def candidate_recipe(settings: Settings) -> dict[str, Any]:
    """The candidate-level part as a standard recipe: prompts, samples, verdicts, pair metrics, max_margin."""
    ConstraintConfig(**settings.constraints)  # fails here, with the field, before any model loads
    return {
        "description": settings.description,
        "input": copy.deepcopy(settings.input),
        "steps": [
            {"step": "ConstrainedPrompts", "config": dict(settings.constraints)},
            {
                "step": "ResponseSampler",
                "config": {
                    "model": settings.policy,
                    "revision": settings.policy_revision,
                    **settings.sampler,
                },
            },
            *copy.deepcopy(settings.extra_steps),
            {"step": "IFEvalVerifier", "config": {"reward": "strict"}},  # rewards = correctness
            {
                "step": "PairMetrics",
                "config": {"tokenizer": settings.policy, "tokenizer_revision": settings.policy_revision},
            },
        ],
        "pairs": {"strategies": ["max_margin"], "config": {"seed": 0}},
        "output": copy.deepcopy(settings.output),
    }


class MixRecord:
    """How the mixed config was drawn, in the shape the release manifest records pair makers."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.arguments = arguments

    def describe(self) -> dict[str, Any]:
        return {
            "step": "hfpref.contrast.mix_contrast",
            "version": "1",
            "config": dict(self.arguments),
            "revision": None,
        }


def add_pairs(result: RecipeResult, name: str, selected: Any, maker: Any) -> None:
    """Record one pair maker's output in ``result`` as a release config (kept pairs, drop counts)."""
    if C.DROP_REASON in selected.column_names:
        kept, reasons = split_dropped(selected)
    else:
        kept, reasons = selected, Counter()
    result.pairs[name] = kept
    result.dropped[name] = Counter(reasons)
    result.selectors[name] = maker


def run(
    settings: Settings,
    *,
    cache_dir: str | Path | None = None,
    gpus: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> RecipeResult:
    """Run every stage; the result's ``pairs`` holds one dataset per release config."""
    import datasets

    recipe = Recipe.from_dict(candidate_recipe(settings), source="dataset_scripts/instruction_following.py")
    result = recipe.run(cache_dir=cache_dir, gpus=gpus, batch_size=batch_size, progress=progress)
    candidates = result.candidates

    for mode in ("high", "low"):
        maker = ContrastPairs(ContrastConfig(mode=mode, **settings.contrast))
        add_pairs(result, maker.pair_strategy, maker.apply(candidates, batch_size=batch_size), maker)

    if settings.mix is not None:
        pool = datasets.concatenate_datasets(
            [result.pairs["rs_high_contrast"], result.pairs["rs_low_contrast"]]
        )
        arguments = dict(settings.mix)
        if arguments.get("size") is None:
            arguments["size"] = largest_mix_size(pool, arguments.get("ratio_high", 0.5))
        if arguments["size"] > 0:
            add_pairs(result, MIXED_CONFIG, mix_contrast(pool, **arguments), MixRecord(arguments))
        else:
            result.skipped_strategies[MIXED_CONFIG] = "no high- and low-contrast pairs to mix"

    if settings.mcts is not None:
        from hfpref.mcts import MCTSConfig, MCTSPairGenerator  # needs torch and the policy: only when asked

        keep = [
            c
            for c in (C.PROMPT, SEED_PROMPT, C.INSTRUCTION_ID_LIST, C.KWARGS, DIFFICULTY)
            if c in candidates.column_names
        ]
        config = MCTSConfig(model=settings.policy, revision=settings.policy_revision, **settings.mcts)
        maker = MCTSPairGenerator(config)
        prompts = candidates.select_columns(keep)
        add_pairs(result, MCTS_CONFIG, maker.apply(prompts, batch_size=batch_size, num_proc=gpus), maker)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", choices=sorted(PRESETS), default="paper", help="settings preset (default: paper)"
    )
    parser.add_argument("--model", help="policy model id or folder (required with --size cpu)")
    parser.add_argument("--input", help="seed prompts: a file or folder with a 'prompt' column")
    parser.add_argument("--folder", help="release folder (default: the preset's)")
    parser.add_argument("--version", help="release version (default: the preset's)")
    parser.add_argument("--no-mcts", action="store_true", help="skip the MCTS pairs")
    parser.add_argument("--gpus", type=int, help="GPU workers for the model steps")
    parser.add_argument("--cache-dir", help="datasets cache for the steps (reruns are cache hits)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = PRESETS[args.size]
    changes: dict[str, Any] = {}
    if args.model:
        changes["policy"] = args.model
    if args.input:
        changes["input"] = {"path": args.input}
    if args.no_mcts:
        changes["mcts"] = None
    settings = dataclasses.replace(settings, **changes)
    if not settings.policy:
        raise SystemExit("--model is required with --size cpu")
    return settings


def main(argv: list[str] | None = None) -> int:
    from hfpref.release import write_release

    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    result = run(settings, cache_dir=args.cache_dir, gpus=args.gpus)
    folder = write_release(result, args.folder, version=args.version)
    for name, pairs in result.pairs.items():
        print(f"{name}: {len(pairs)} pairs, dropped {dict(result.dropped[name])}")
    print(f"release written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
