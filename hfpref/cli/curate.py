"""``hfpref curate``: run a recipe (the embedded IFEval default without arguments), write a release folder
and print a summary table; optionally push the release to the Hub."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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


def build_engine(args: argparse.Namespace) -> Any:
    """The engine the options ask for (``hfpref.pipeline.engines``)."""
    from hfpref.pipeline.engines import make_engine
    from hfpref.pipeline.recipe import RecipeError

    if args.gpus is not None and args.gpus < 1:
        raise RecipeError(f"--gpus must be at least 1, got {args.gpus}")
    if args.shard_rows < 0:
        raise RecipeError(f"--shard-rows must be 0 or more, got {args.shard_rows}")
    if args.engine == "local":
        for flag, value in (("--address", args.address), ("--concurrency", args.concurrency)):
            if value is not None:
                raise RecipeError(f"{flag} applies to --engine ray only")
        return make_engine("local", gpus=args.gpus, shard_rows=args.shard_rows)
    if args.num_proc is not None:
        raise RecipeError(
            "--num-proc applies to the local engine; with --engine ray use --concurrency or --gpus"
        )
    return make_engine(
        "ray",
        address=args.address,
        gpus=args.gpus,
        concurrency=args.concurrency,
        shard_rows=args.shard_rows,
        progress=not args.no_progress,
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from hfpref.pipeline.engines import ENGINES
    from hfpref.pipeline.resume import DEFAULT_SHARD_ROWS

    parser = subparsers.add_parser(
        "curate",
        help="run a recipe and write a carded release folder",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "recipe",
        nargs="?",
        metavar="RECIPE.yaml",
        help="recipe file (see dataset_scripts/); default: the embedded IFEval two-generator recipe",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FOLDER",
        help="release folder (default: the recipe's output.folder, hfpref-release)",
    )
    parser.add_argument(
        "--strategies",
        metavar="A,B,...",
        help="comma-separated pair strategies to run instead of the recipe's, or 'all' "
        "(best_of_n2, best_of_n2_ds, max_margin, random, ds_rm, ds_fix, dcrm_no_edit, dcrm_no_logp, "
        "dcrm_no_reward, edit_only, logp_only, reward_only)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="ID_OR_PATH",
        help="tokenizer (Hub model id or local folder) for token-level e_Δ in the PairMetrics step "
        "(default: the recipe's; the embedded recipe counts words)",
    )
    parser.add_argument(
        "--input",
        metavar="SOURCE",
        help="input instead of the recipe's: 'default' (embedded IFEval), a local file (.jsonl/.json/.parquet/"
        ".csv) or folder of candidates rows, or a Hub dataset as OWNER/NAME@REVISION",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where datasets keeps the cached step outputs (default: datasets' cache, ~/.cache/huggingface/datasets)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="rows per batch of each step (default: 64)"
    )
    parser.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="worker processes per step, local engine (model steps take --gpus instead when it is given)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="K",
        help="GPUs for each model step: K worker processes with ranks 0..K-1 (local engine), or K actors with "
        "one GPU each (Ray engine); pure-CPU steps are not affected",
    )
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=DEFAULT_SHARD_ROWS,
        metavar="N",
        help=f"rows per resumable shard of a step: a killed run resumes from its last finished shard "
        f"(default: {DEFAULT_SHARD_ROWS}, rounded up to a multiple of --batch-size; 0: cache whole steps only)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="where steps run: 'local' (datasets, this machine) or 'ray' (Ray Data; pip install 'hfpref[ray]')",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join, e.g. 'auto' or 'ray://HEAD:10001' (default: start a local one); with --engine ray",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="actors per model step (default: --gpus, else the cluster's GPUs, else its CPUs); with --engine ray",
    )
    parser.add_argument(
        "--version", metavar="V", help="release version, e.g. 0.1.0 (default: the recipe's output.version)"
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="after writing the folder, upload it to this Hub dataset repo and tag it v<version> (see hfpref push; "
        "a recipe's output.push_to_hub does the same)",
    )
    parser.add_argument(
        "--revision",
        metavar="BRANCH",
        help="branch to push to (default: release-v<version>); with --push-to-hub",
    )
    parser.add_argument(
        "--private", action="store_true", help="create the Hub repo as private; with --push-to-hub"
    )
    parser.add_argument("--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a release folder that holds a different release (another output.name), and move an "
        "existing v<version> tag to the new upload (neither by default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def build_recipe(args: argparse.Namespace):
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
            {"repo_id": args.push_to_hub, "revision": args.revision, "private": args.private}
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
    from hfpref.release.writer import release_lock

    try:
        recipe = build_recipe(args)
        # the folder is locked from before the first step until the release is swapped in (and pushed):
        # a second run into it fails at once instead of both writing it
        with release_lock(recipe.output.folder):
            return _run_locked(args, recipe)
    except KeyboardInterrupt:
        print(
            "\nhfpref curate: interrupted; run the same command again to resume from the finished shards",
            file=sys.stderr,
        )
        return 130


def _run_locked(args: argparse.Namespace, recipe: Any) -> int:
    from hfpref.release.summary import candidates_text, ranking_text, summary_table
    from hfpref.release.writer import push_release, read_manifest, write_release

    engine = build_engine(args)
    try:
        result = recipe.run(
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
            num_proc=args.num_proc,
            progress=not args.no_progress,
            engine=engine,
        )
        folder = write_release(result, recipe.output.folder, version=recipe.output.version, force=args.force)
    finally:
        engine.close()

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

    push = recipe.output.push_to_hub
    if push is not None:
        info = push_release(
            folder,
            push.repo_id,
            recipe.output.version,
            revision=push.revision,
            private=push.private,
            token=args.token,
            force=args.force,
        )
        print(
            f"pushed to {info['repo_id']} (branch {info['revision']}, tag {info['tag']}, commit {info['commit']})"
        )
    return 0
