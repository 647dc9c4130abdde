"""``hfpref iterate RECIPE.yaml``: iterative DPO, annotating the pairs picked by implicit reward margins."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Run rounds of iterative preference learning (arXiv 2406.17312): each round samples N responses per prompt
from the current policy, scores them under the policy and its DPO reference, ranks all response pairs by
their DPO implicit reward margin, annotates the pairs the round's budget allows (smallest, largest or
random margins; per prompt or across the corpus), writes the round's release (round-R/release, with its
card) and trains the next policy with DPO (round-R/policy). Margins rank pairs only when the policy
differs from its reference: give the recipe a `reference` beside a DPO-trained `policy`, or a `warmup`
round (random selection, then training); a policy that is its own reference stops the run unless
`selection: {on_equal_margins: random}` accepts random selection.

An interrupted run resumes: finished rounds (recorded in iterate_state.json, with their release and
checkpoint present) are skipped, and a round whose release exists only retrains.

With `annotation: {kind: label-studio, project: TITLE, url: URL}` people label each round's selected pairs
in Label Studio (project "TITLE round R", key from LABEL_STUDIO_API_KEY): the run stops with exit status 2
while pairs are pending; annotate them, then run the same command again to pull the labels and train."""

EPILOG = """\
examples:
  hfpref iterate dataset_scripts/iterative_margins.yaml
  hfpref iterate my_loop.yaml --output runs/loop-a --rounds 2
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "iterate",
        help="iterative DPO with annotation by implicit-margin selection, one release per round",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="iterate recipe (see dataset_scripts/)")
    parser.add_argument("--output", "-o", metavar="FOLDER", help="output folder (default: output.folder)")
    parser.add_argument("--rounds", type=int, default=None, help="number of rounds (default: the recipe's)")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="datasets cache of the step outputs (default: FOLDER/cache)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="rows per batch of each step (default: 64)"
    )
    parser.add_argument(
        "--num-proc", type=int, default=None, help="worker processes per model step (one GPU each)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hfpref.pipeline.iterate import IterateRecipe, run_iterations
    from hfpref.pipeline.preflight import check_output_folder

    recipe = IterateRecipe.from_yaml(args.recipe).with_overrides(folder=args.output, rounds=args.rounds)
    check_output_folder(recipe.output.folder, "output.folder")  # before round 1's hours of sampling
    results = run_iterations(
        recipe,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_proc=args.num_proc,
        progress=not getattr(args, "no_progress", False),  # --quiet / --no-progress (hfpref.cli.main)
    )
    for result in results:
        how = "reused" if result.reused else "done"
        print(
            f"round {result.round}: {how}; {result.pairs} pairs ({result.config_name}) in {result.release}; "
            f"policy {result.checkpoint}"
        )
    return 0
