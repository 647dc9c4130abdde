"""``hfpref annotate push|pull|status``: human preference labels for selected pairs through Label Studio."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from hfpref.cli.parsing import (
    add_command,
    add_group,
    arguments,
    dataclass_parser,
    option,
    positional,
    required,
    switch,
)

DESCRIPTION = """\
Hand the pairs worth annotating to people in Label Studio and take their labels back as preference rows.

  push    upload a release's pairs (a pairs config, or the pairs an iterate round selected for annotation)
          to a Label Studio project with a pairwise interface (prompt, responses A and B, A / B / tie / skip,
          comment); responses are shown in a seeded random order that is recorded; only new pairs are added
  status  how many pushed pairs are finished and how many are pending
  pull    write the finished labels as a release folder (configs human, pairs, annotations) with a card

The API key is read from LABEL_STUDIO_API_KEY only; the server URL from --url or LABEL_STUDIO_URL."""

T = TypeVar("T")


@dataclass(kw_only=True)
class ServerOptions:
    """The Label Studio server and project every action talks to."""

    url: str | None = option("Label Studio server (default: $LABEL_STUDIO_URL or http://localhost:8080)")
    project: str = required("Label Studio project title", metavar="NAME")

    def client(self) -> Any:
        from hfpref.human.labelstudio import LabelStudioClient

        return LabelStudioClient(self.url)


@dataclass(kw_only=True)
class PushPairsArguments(ServerOptions):
    """Which pairs to upload, and how annotators see them."""

    source: str = positional(
        "release folder (hfpref curate, or an iterate round's release)", metavar="SOURCE"
    )
    to: Literal["label-studio"] = option("annotation tool", default="label-studio")
    dataset_config: str | None = option(
        "release config of SOURCE (default: its candidates when they mark pairs selected for annotation, "
        "else its default config)"
    )
    seed: int = option("seed of the order A/B each pair is shown in", default=0)
    annotators_per_pair: int = option("how many people Label Studio asks per pair", default=1)

    # flags of earlier releases -> the flag they became (each still works, with a warning): the release
    # config is --dataset-config, as in ``hfpref train`` (whose --config is TRL's YAML file)
    renamed_flags: ClassVar[dict[str, str]] = {"--config": "--dataset-config"}


@dataclass(kw_only=True)
class StatusArguments(ServerOptions):
    """When a pair counts as finished."""

    min_annotations: int = option("annotations a pair needs", default=1)


@dataclass(kw_only=True)
class PullArguments(StatusArguments):
    """How votes become labels, and the release folder they are written to."""

    output: str = required("release folder to write", metavar="FOLDER", aliases=["-o"])
    rule: Literal["majority", "unanimous"] = option("how votes are reduced", default="majority")
    name: str | None = option("dataset name on the card (default: the folder's name)")
    version: str = option("release version", default="0.1.0")
    overwrite: bool = switch("replace an existing release in FOLDER")


def add_parser(subparsers: Any) -> None:
    actions = add_group(
        subparsers,
        "annotate",
        "action",
        help="human preference labels through Label Studio (push pairs, pull labels)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, arguments_class, action, text in (
        ("push", PushPairsArguments, push, "upload pairs to a Label Studio project (idempotent)"),
        ("status", StatusArguments, status, "finished and pending pairs of a project"),
        ("pull", PullArguments, pull, "write finished labels as a release folder"),
    ):
        add_command(
            actions, name, dataclass_parser(arguments_class), _printing(arguments_class, action), help=text
        )


def _printing(arguments_class: type[T], action: Callable[[T], str]) -> Callable[[argparse.Namespace], int]:
    """The command function of an action: ``action`` runs on the ``arguments_class`` options of the command
    line and returns the one line the command prints."""

    def run(args: argparse.Namespace) -> int:
        print(action(arguments(args, arguments_class)))
        return 0

    return run


def push(options: PushPairsArguments) -> str:
    from hfpref.human.labelstudio import pair_tasks_from_release, push_pairs

    tasks = pair_tasks_from_release(options.source, options.dataset_config, seed=options.seed)
    result = push_pairs(
        options.client(), options.project, tasks, annotators_per_pair=options.annotators_per_pair
    )
    made = "created" if result.created_project else "reused"
    return (
        f"{made} project {options.project!r} ({result.url}): {result.pushed} new pairs pushed, "
        f"{result.already_there} already there"
    )


def status(options: StatusArguments) -> str:
    from hfpref.human.labelstudio import annotation_status

    counts = annotation_status(options.client(), options.project, min_annotations=options.min_annotations)
    finished = counts["pairs"] - counts["pending"]
    return (
        f"project {options.project!r} ({counts['url']}): {finished} of {counts['pairs']} pairs finished, "
        f"{counts['pending']} pending; outcomes {counts['outcomes']}"
    )


def pull(options: PullArguments) -> str:
    from hfpref.human.labelstudio import pull_labels, write_labels_release

    result = pull_labels(
        options.client(), options.project, rule=options.rule, min_annotations=options.min_annotations
    )
    folder = write_labels_release(
        result, options.output, name=options.name, version=options.version, overwrite=options.overwrite
    )
    counts = result.counts
    rate = result.agreement["rate"]
    return (
        f"wrote {folder}: {counts['labelled']} labelled pairs of {counts['pairs']} pushed "
        f"({counts['pending']} pending; outcomes {counts['outcomes']}); {counts['annotations']} annotations "
        f"by {counts['annotators']} annotators, agreement "
        + (f"{100 * rate:.1f}%" if rate is not None else "n/a")
    )
