"""``hfpref push``: upload a release folder to a Hub dataset repo at a branch and tag it with its version."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DESCRIPTION = """\
Upload a release folder written by `hfpref curate` (data files, README.md card, plot, manifest) to a
Hugging Face Hub dataset repository, commit it to a branch (default: release-v<version>) and tag that
commit v<version>. The version and repo id are written into the card and manifest first, so the card's
load_dataset(..., revision="v<version>") snippet is right. A version that is already tagged is refused
unless --force: a released version is never silently overwritten. The folder is locked (FOLDER.lock) while it
is pushed, and a folder whose files do not match the sha256 in its manifest is refused."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="upload a release folder to the Hub and tag its version",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", metavar="FOLDER", help="release folder written by hfpref curate")
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="Hub dataset repo, OWNER/NAME (created if missing)"
    )
    parser.add_argument(
        "--version", required=True, metavar="V", help="release version, e.g. 0.1.0 (tag v0.1.0)"
    )
    parser.add_argument(
        "--revision",
        metavar="BRANCH",
        help="branch to commit to (default: release-v<version>; 'main' is allowed)",
    )
    parser.add_argument(
        "--private", action="store_true", help="create the repo as private (if it does not exist)"
    )
    parser.add_argument("--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="move an existing v<version> tag to this upload (refused otherwise)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from hfpref.pipeline.recipe import RecipeError
    from hfpref.release.writer import ReleaseError, push_release

    if "/" not in args.repo_id:
        print(f"hfpref push: error: REPO_ID must look like OWNER/NAME, got {args.repo_id!r}", file=sys.stderr)
        return 2
    try:
        info = push_release(
            args.folder,
            args.repo_id,
            args.version,
            revision=args.revision,
            private=args.private,
            token=args.token,
            force=args.force,
        )
    except (ReleaseError, RecipeError) as err:
        print(f"hfpref push: error: {err}", file=sys.stderr)
        return 2
    print(f"pushed {args.folder} to https://huggingface.co/datasets/{info['repo_id']}")
    print(f"  branch {info['revision']}, tag {info['tag']}, commit {info['commit']}")
    print(f'  load_dataset("{info["repo_id"]}", name=..., revision="{info["tag"]}")')
    return 0
