"""``hfpref curate``: run a recipe (the embedded IFEval default without arguments), write a release folder
and print a summary table; optionally push the release to the Hub."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from hfpref.cli.options import HubOptions, RunOptions
from hfpref.cli.parsing import add_command, arguments, dataclass_parser, option, positional

DESCRIPTION = """\
Run a curation recipe and write a release folder: Parquet data (one config per pair strategy, maker and mix, plus the
annotated candidates), a dataset card (README.md) with a plot, and hfpref_manifest.json.

Without RECIPE it runs the embedded default: IFEval's 541 prompts with GPT-4's and text-bison's responses
(N = 2), IFEval constraint checks as strict rewards, word-level pair metrics (no model, no p_Δ), and every
pair strategy that needs no reference model, into ./hfpref-release.

Finished steps are cached by `datasets` (under --cache-dir), shard by shard (--shard-rows), so a rerun is all
cache hits and a run stopped part-way (crash, Ctrl-C, kill) resumes from the last finished shard. Local input
files are keyed by their content (sha256), not their path and modification time.

The release is built beside the folder and swapped in whole, so a crash leaves the old release or the new one,
never a mix; FOLDER.lock is held from the first step to the end, so a second run into the same folder fails at
once. A folder holding a release of another name (output.name) is replaced only with --force.

Scaling out needs no change to the recipe: --gpus K runs each model step in K worker processes, one per GPU;
--engine ray runs the recipe on a Ray cluster (model steps as actor pools, one GPU per actor)."""

EPILOG = """\
examples:
  hfpref curate
  hfpref curate dataset_scripts/ifeval_two_generators.yaml --strategies best_of_n2,max_margin
  hfpref curate my_recipe.yaml --input my_candidates.jsonl --tokenizer meta-llama/Llama-3.2-1B-Instruct
  hfpref curate --push-to-hub me/ifeval-pairs --version 0.1.0
  hfpref curate my_recipe.yaml --gpus 8                      # model steps on 8 GPUs of this node
  hfpref curate my_recipe.yaml --engine ray --address auto   # on a running Ray cluster
"""


STRATEGY_NAMES = (
    "best_of_n2, best_of_n2_ds, max_margin, random, ds_rm, ds_fix, dcrm_no_edit, dcrm_no_logp, dcrm_no_reward, "
    "edit_only, logp_only, reward_only"
)


@dataclass(kw_only=True)
class CurateArguments:
    """What to curate and where the release goes (``RunOptions``: how; ``HubOptions``: pushing)."""

    recipe: str | None = positional(
        "recipe file (see dataset_scripts/); default: the embedded IFEval two-generator recipe",
        metavar="RECIPE.yaml",
        default=None,
    )
    output: str | None = option(
        "release folder (default: the recipe's output.folder, hfpref-release)",
        metavar="FOLDER",
        aliases=["-o"],
    )
    strategies: str | None = option(
        f"comma-separated pair strategies to run instead of the recipe's, or 'all' ({STRATEGY_NAMES})",
        metavar="A,B,...",
    )
    tokenizer: str | None = option(
        "tokenizer (Hub model id or local folder) for token-level e_Δ in the PairMetrics step "
        "(default: the recipe's; the embedded recipe counts words)",
        metavar="ID_OR_PATH",
    )
    input: str | None = option(
        "input instead of the recipe's: 'default' (embedded IFEval), a local file (.jsonl/.json/.parquet/"
        ".csv) or folder of candidates rows, or a Hub dataset as OWNER/NAME@REVISION",
        metavar="SOURCE",
    )
    version: str | None = option(
        "release version, e.g. 0.1.0 (default: the recipe's output.version)", metavar="V"
    )
    push_to_hub: str | None = option(
        "after writing the folder, upload it to this Hub dataset repo and tag it v<version> (see hfpref push; "
        "a recipe's output.push_to_hub does the same)",
        metavar="REPO_ID",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return add_command(
        subparsers,
        "curate",
        dataclass_parser(CurateArguments, RunOptions, HubOptions),
        run,
        help="run a recipe and write a carded release folder",
        description=DESCRIPTION,
        epilog=EPILOG,
    )


def build_recipe(args: CurateArguments, hub: HubOptions):
    """The recipe to run: the file given (or the embedded default) with the command-line overrides."""
    from hfpref.pipeline.recipe import ALL_STRATEGIES, InputSpec, PushSpec, Recipe, default_recipe

    recipe = Recipe.from_yaml(args.recipe) if args.recipe else default_recipe()
    strategies = None
    if args.strategies:
        strategies = (
            ALL_STRATEGIES
            if args.strategies.strip() == ALL_STRATEGIES
            else [s.strip() for s in args.strategies.split(",") if s.strip()]
        )
    push = None
    if args.push_to_hub:
        push = PushSpec.from_dict(
            {"repo_id": args.push_to_hub, "revision": hub.revision, "private": hub.private}
        )
    return recipe.with_overrides(
        input=InputSpec.from_cli(args.input) if args.input else None,
        strategies=strategies,
        tokenizer=args.tokenizer,
        folder=args.output,
        version=args.version,
        push_to_hub=push,
    )


def run(args: argparse.Namespace) -> int:
    # errors are raised, not printed: hfpref.cli.main answers them with one line (and --debug's traceback)
    from hfpref.release.folder import release_lock

    run_options, hub = arguments(args, RunOptions), arguments(args, HubOptions)  # option mistakes first
    try:
        recipe = build_recipe(arguments(args, CurateArguments), hub)
        # the folder is locked from before the first step until the release is swapped in (and pushed):
        # a second run into it fails at once instead of both writing it
        with release_lock(recipe.output.folder):
            return _run_locked(recipe, run_options, hub)
    except KeyboardInterrupt:
        print(
            "\nhfpref curate: interrupted; run the same command again to resume from the finished shards",
            file=sys.stderr,
        )
        return 130


def _run_locked(recipe: Any, run_options: RunOptions, hub: HubOptions) -> int:
    from hfpref.release.writer import write_release

    engine = run_options.build_engine()
    try:
        result = recipe.run(
            cache_dir=run_options.cache_dir,
            batch_size=run_options.batch_size,
            num_proc=run_options.num_proc,
            progress=not run_options.no_progress,
            engine=engine,
        )
        folder = write_release(result, recipe.output.folder, version=recipe.output.version, force=hub.force)
    finally:
        engine.close()
    _print_summary(result, folder)
    push = recipe.output.push_to_hub
    if push is not None:
        pushing = dataclasses.replace(hub, revision=push.revision, private=push.private)
        info = pushing.push(folder, push.repo_id, recipe.output.version)
        print(
            f"pushed to {info['repo_id']} (branch {info['revision']}, tag {info['tag']}, commit {info['commit']})"
        )
    return 0


def _print_summary(result: Any, folder: Any) -> None:
    """The release's numbers: rows, units, the pairs per strategy, the generator ranking, what did not run."""
    from hfpref.release import read_manifest
    from hfpref.release.summary import candidates_text, ranking_text, summary_table

    manifest = read_manifest(folder)
    pairs = {k: v for k, v in manifest["configs"].items() if v["kind"] == "pairs"}
    print()
    print(
        f"{manifest['name']} {manifest['version']}: {len(result.candidates)} candidates rows, e_Δ unit: "
        f"{manifest['edit_distance_unit']}, p_Δ: {'yes' if manifest['has_logp'] else 'n/a (no reference model)'}"
    )
    if candidates_text(manifest):
        print(candidates_text(manifest))
    print(summary_table(pairs))
    if manifest["generator_ranking"]:
        print()
        print(ranking_text(manifest))
    for strategy, why in manifest["skipped_strategies"].items():
        print(f"not run: {strategy}: {why}")
    print(f"release written to {folder}/ (card: {folder}/README.md)")
