"""``hfpref annotate push|pull|status``: human preference labels for selected pairs through Label Studio."""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Hand the pairs worth annotating to people in Label Studio and take their labels back as preference rows.

  push    upload a release's pairs (a pairs config, or the pairs an iterate round selected for annotation)
          to a Label Studio project with a pairwise interface (prompt, responses A and B, A / B / tie / skip,
          comment); responses are shown in a seeded random order that is recorded; only new pairs are added
  status  how many pushed pairs are finished and how many are pending
  pull    write the finished labels as a release folder (configs human, pairs, annotations) with a card

The API key is read from LABEL_STUDIO_API_KEY only; the server URL from --url or LABEL_STUDIO_URL."""


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help="Label Studio server (default: $LABEL_STUDIO_URL or http://localhost:8080)",
    )
    parser.add_argument("--project", required=True, metavar="NAME", help="Label Studio project title")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "annotate",
        help="human preference labels through Label Studio (push pairs, pull labels)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    push = actions.add_parser("push", help="upload pairs to a Label Studio project (idempotent)")
    push.add_argument(
        "source", metavar="SOURCE", help="release folder (hfpref curate, or an iterate round's release)"
    )
    push.add_argument("--to", default="label-studio", choices=["label-studio"], help="annotation tool")
    push.add_argument(
        "--config",
        default=None,
        help="config of SOURCE (default: its candidates when they mark pairs selected for annotation, "
        "else its default config)",
    )
    push.add_argument("--seed", type=int, default=0, help="seed of the order A/B each pair is shown in")
    push.add_argument(
        "--annotators-per-pair",
        type=int,
        default=1,
        help="how many people Label Studio asks per pair (default 1)",
    )
    _server_args(push)
    push.set_defaults(func=run_push)

    status = actions.add_parser("status", help="finished and pending pairs of a project")
    _server_args(status)
    status.add_argument("--min-annotations", type=int, default=1, help="annotations a pair needs (default 1)")
    status.set_defaults(func=run_status)

    pull = actions.add_parser("pull", help="write finished labels as a release folder")
    _server_args(pull)
    pull.add_argument("--output", "-o", required=True, metavar="FOLDER", help="release folder to write")
    pull.add_argument(
        "--rule", default="majority", choices=["majority", "unanimous"], help="how votes are reduced"
    )
    pull.add_argument("--min-annotations", type=int, default=1, help="annotations a pair needs (default 1)")
    pull.add_argument("--name", default=None, help="dataset name on the card (default: the folder's name)")
    pull.add_argument("--version", default="0.1.0", help="release version (default 0.1.0)")
    pull.add_argument("--overwrite", action="store_true", help="replace an existing release in FOLDER")
    pull.set_defaults(func=run_pull)
    return parser


def run_push(args: argparse.Namespace) -> int:
    from hfpref.human.labelstudio import LabelStudioClient, pair_tasks_from_release, push_pairs

    tasks = pair_tasks_from_release(args.source, args.config, seed=args.seed)
    client = LabelStudioClient(args.url)
    result = push_pairs(client, args.project, tasks, annotators_per_pair=args.annotators_per_pair)
    made = "created" if result.created_project else "reused"
    print(
        f"{made} project {args.project!r} ({result.url}): {result.pushed} new pairs pushed, "
        f"{result.already_there} already there"
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    from hfpref.human.labelstudio import LabelStudioClient, annotation_status

    status = annotation_status(
        LabelStudioClient(args.url), args.project, min_annotations=args.min_annotations
    )
    finished = status["pairs"] - status["pending"]
    print(
        f"project {args.project!r} ({status['url']}): {finished} of {status['pairs']} pairs finished, "
        f"{status['pending']} pending; outcomes {status['outcomes']}"
    )
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from hfpref.human.labelstudio import LabelStudioClient, pull_labels, write_labels_release

    result = pull_labels(
        LabelStudioClient(args.url), args.project, rule=args.rule, min_annotations=args.min_annotations
    )
    folder = write_labels_release(
        result, args.output, name=args.name, version=args.version, overwrite=args.overwrite
    )
    counts = result.counts
    rate = result.agreement["rate"]
    print(
        f"wrote {folder}: {counts['labelled']} labelled pairs of {counts['pairs']} pushed "
        f"({counts['pending']} pending; outcomes {counts['outcomes']}); {counts['annotations']} annotations "
        f"by {counts['annotators']} annotators, agreement "
        + (f"{100 * rate:.1f}%" if rate is not None else "n/a")
    )
    return 0
