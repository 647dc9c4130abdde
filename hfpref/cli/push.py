"""``hfpref push``: upload a release folder to a Hub dataset repo at a branch and tag it with its version."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from hfpref.cli.options import HubOptions, OptionError
from hfpref.cli.parsing import add_command, arguments, dataclass_parser, positional, required

DESCRIPTION = """\
Upload a release folder written by `hfpref curate` (data files, README.md card, plot, manifest) to a
Hugging Face Hub dataset repository, commit it to a branch (default: release-v<version>) and tag that
commit v<version>. The version and repo id are written into the card and manifest first, so the card's
load_dataset(..., revision="v<version>") snippet is right. A version that is already tagged is refused
unless --force: a released version is never silently overwritten. The folder is locked (FOLDER.lock) while it
is pushed, and a folder whose files do not match the sha256 in its manifest is refused."""


@dataclass(kw_only=True)
class PushArguments:
    """Which release folder goes where, as which version (``HubOptions``: branch, privacy, token, force)."""

    folder: str = positional("release folder written by hfpref curate", metavar="FOLDER")
    repo_id: str = positional("Hub dataset repo, OWNER/NAME (created if missing)", metavar="REPO_ID")
    version: str = required("release version, e.g. 0.1.0 (tag v0.1.0)", metavar="V")

    def __post_init__(self) -> None:
        if "/" not in self.repo_id:
            raise OptionError(f"REPO_ID must look like OWNER/NAME, got {self.repo_id!r}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "push",
        dataclass_parser(PushArguments, HubOptions),
        run,
        help="upload a release folder to the Hub and tag its version",
        description=DESCRIPTION,
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # ReleaseError and RecipeError are UserErrors: hfpref.cli.main answers them in one line, exit status 2
    options = arguments(args, PushArguments)
    info = arguments(args, HubOptions).push(options.folder, options.repo_id, options.version)
    print(f"pushed {options.folder} to https://huggingface.co/datasets/{info['repo_id']}")
    print(f"  branch {info['revision']}, tag {info['tag']}, commit {info['commit']}")
    print(f'  load_dataset("{info["repo_id"]}", name=..., revision="{info["tag"]}")')
    return 0
