"""The ``hfpref`` command line: one subcommand per module in ``hfpref.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``add_parser(subparsers)`` (which sets ``func`` on its parser) and is
# imported lazily by name, so ``hfpref --help`` stays fast and a missing optional dependency
# only breaks the subcommand that needs it.
COMMAND_MODULES = ("curate", "push", "train", "eval", "iterate", "annotate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfpref",
        description="Curate preference datasets (DPO and relatives) as reproducible recipes of datasets transforms.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hfpref.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"hfpref.commands.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
