"""``hfpref iterate RECIPE.yaml``: iterative DPO, annotating the pairs picked by implicit reward margins."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from hfpref.cli.options import RunOptions
from hfpref.cli.parsing import add_command, arguments, dataclass_parser, option, positional

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
  hfpref iterate my_loop.yaml --gpus 8                      # model steps on 8 GPUs of this node
  hfpref iterate my_loop.yaml --engine ray --address auto   # on a running Ray cluster
"""


@dataclass(kw_only=True)
class IterateArguments:
    """Which loop to run, into which folder, for how many rounds (``RunOptions``: how its steps run)."""

    recipe: str = positional("iterate recipe (see dataset_scripts/)", metavar="RECIPE.yaml")
    output: str | None = option("output folder (default: output.folder)", metavar="FOLDER", aliases=["-o"])
    rounds: int | None = option("number of rounds (default: the recipe's)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        "iterate",
        dataclass_parser(IterateArguments, RunOptions),
        run,
        help="iterative DPO with annotation by implicit-margin selection, one release per round",
        description=DESCRIPTION,
        epilog=EPILOG,
    )


def engine_options(run_options: RunOptions) -> dict[str, Any]:
    """The engine keywords of ``run_iterations`` the options ask for; none when all are the defaults, so a
    plain local run needs nothing beyond the cache, batch and progress options."""
    default = RunOptions()
    given = {
        name: getattr(run_options, name)
        for name in ("gpus", "shard_rows")
        if getattr(run_options, name) != getattr(default, name)
    }
    if run_options.engine != default.engine:
        given["engine"] = run_options.build_engine()
    return given


def run(args: argparse.Namespace) -> int:
    from hfpref.pipeline.iterate import IterateRecipe, run_iterations
    from hfpref.pipeline.preflight import check_output_folder

    options, run_options = arguments(args, IterateArguments), arguments(args, RunOptions)
    recipe = IterateRecipe.from_yaml(options.recipe).with_overrides(
        folder=options.output, rounds=options.rounds
    )
    check_output_folder(recipe.output.folder, "output.folder")  # before round 1's hours of sampling
    engine = engine_options(run_options)
    try:
        results = run_iterations(
            recipe,
            cache_dir=run_options.cache_dir,
            batch_size=run_options.batch_size,
            num_proc=run_options.num_proc,
            progress=not run_options.no_progress,
            **engine,
        )
    finally:
        if "engine" in engine:
            engine["engine"].close()
    for result in results:
        how = "reused" if result.reused else "done"
        print(
            f"round {result.round}: {how}; {result.pairs} pairs ({result.config_name}) in {result.release}; "
            f"policy {result.checkpoint}"
        )
    return 0
