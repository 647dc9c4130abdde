"""The ``hfpref`` command line: one subcommand per module in ``hfpref.cli``.

The error policy lives here, for every command: a mistake the user can fix (any ``hfpref.core.errors.UserError``,
and the library errors that mean one: a missing or unreadable file, bad YAML or JSON, a file that is not
UTF-8, a Hub repo that does not exist, no network) is one line on stderr, ``hfpref <command>: error:
<what, where, how to fix>``, exit status 2. Anything else is a bug: one line saying so, exit status 1.
``--debug`` (before or after the subcommand) adds the traceback. Commands raise; they never print an
error and return 2 themselves.

Global flags, accepted anywhere on the line: ``--debug``, and ``--quiet`` / ``--no-progress`` (the same
thing: no progress bars; commands read ``args.no_progress``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback

from hfpref.cli.parsing import EXIT_USER_ERROR, LazyParser, OneLineParser, did_you_mean, leaf_parser
from hfpref.core.errors import UserError

# Each module defines ``add_parser(subparsers)``, registering its subcommand (whose options are dataclasses,
# parsed when the subcommand is used: hfpref.cli.parsing), and is imported by name, so a missing optional
# dependency only breaks the subcommand that needs it.
COMMAND_MODULES = ("curate", "push", "train", "eval", "iterate", "annotate")
DEBUG_FLAG = "--debug"
QUIET_FLAGS = ("--quiet", "--no-progress")
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="hfpref",
        description="Curate preference datasets (DPO and relatives) as reproducible recipes of datasets transforms.",
    )
    # parsed out of the command line before argparse sees it (so they work after the subcommand too);
    # declared here for --help
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")
    parser.add_argument(
        *QUIET_FLAGS, dest="no_progress", action="store_true", help="no progress bars (either spelling)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=LazyParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hfpref.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"hfpref.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(subparsers)
    return parser


def split_global_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(argv without the global flags, --debug given, --quiet/--no-progress given); "--" ends flags."""
    end = argv.index("--") if "--" in argv else len(argv)
    head, tail = argv[:end], argv[end:]
    debug = DEBUG_FLAG in head
    quiet = any(flag in head for flag in QUIET_FLAGS)
    kept = [a for a in head if a != DEBUG_FLAG and a not in QUIET_FLAGS]
    return kept + tail, debug, quiet


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error_message(err: OSError) -> str:
    """A file-system error as "what: path; fix"."""
    where = f": {err.filename}" if err.filename else ""
    what = err.strerror or str(err)
    if isinstance(err, FileNotFoundError):
        fix = "check the path"
    elif isinstance(err, PermissionError):
        fix = "check its permissions, or choose another path"
    elif isinstance(err, IsADirectoryError):
        fix = "give a file, not a folder"
    elif isinstance(err, NotADirectoryError):
        fix = "a part of the path is a file, not a folder"
    else:
        return f"{what}{where}" if err.strerror else str(err)
    return f"{what}{where}; {fix}"


def _hub_error_message(err: BaseException) -> str | None:
    """huggingface_hub / datasets / network errors that mean a user mistake or no network, or None."""
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    offline = tuple(
        getattr(hub_errors, name)
        for name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError")
        if hasattr(hub_errors, name)
    )
    if isinstance(err, getattr(hub_errors, "GatedRepoError", ())):
        return f"{_one_line(err)}; request access on the Hub, or log in (huggingface-cli login / HF_TOKEN)"
    if isinstance(err, getattr(hub_errors, "RevisionNotFoundError", ())):
        return f"{_one_line(err)}; check the revision (branch, tag or commit)"
    if isinstance(err, getattr(hub_errors, "RepositoryNotFoundError", ())):
        return (
            f"{_one_line(err)}; check the repo id (OWNER/NAME), your login for a private repo, or give an "
            "existing local folder"
        )
    if isinstance(err, getattr(hub_errors, "EntryNotFoundError", ())):
        return f"{_one_line(err)}; the repo has no such file"
    if offline and isinstance(err, offline):
        return (
            f"offline and not in the local Hugging Face cache: {_one_line(err)}; connect to the network, or "
            "download it first"
        )
    if isinstance(err, getattr(hub_errors, "HFValidationError", ())):
        return (
            f"not an existing local folder, and not a valid Hub id: {_one_line(err)}; check the path (no such "
            "folder?) or give a Hub id as OWNER/NAME"
        )
    # connection errors of the HTTP clients the Hub libraries use (httpx, httpx2, requests), by name so that
    # none of them has to be imported here
    network = ("ConnectError", "ConnectTimeout", "ConnectionError", "ProxyError")
    if type(err).__name__ in network and type(err).__module__.split(".")[0] in (
        "httpx",
        "httpx2",
        "requests",
    ):
        return (
            f"cannot reach the network ({_one_line(err)}): this machine seems to be offline; set "
            "HF_HUB_OFFLINE=1 to use the local cache only"
        )
    try:
        from datasets.exceptions import DatasetNotFoundError

        if isinstance(err, DatasetNotFoundError):
            return f"{_one_line(err)}; check the dataset id or path"
    except ImportError:  # pragma: no cover
        pass
    return None


def explain(err: BaseException) -> tuple[str, int]:
    """(the one-line message, the exit status) for an exception that ended a command."""
    if isinstance(err, UserError) or (
        type(err).__name__ == "EngineError" and type(err).__module__.startswith("hfpref.")
    ):  # EngineError (a RuntimeError): an engine asked for what this machine or cluster lacks
        return _one_line(err), EXIT_USER_ERROR
    hub = _hub_error_message(err)
    if hub is not None:
        return hub, EXIT_USER_ERROR
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", EXIT_USER_ERROR
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({_one_line(err)}); save it as UTF-8", EXIT_USER_ERROR
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(err, yaml.YAMLError):
        return f"not valid YAML: {_one_line(err)}", EXIT_USER_ERROR
    if isinstance(err, OSError):  # a path, permission, disk full, or a library's "can't load X" (OSError)
        return _one_line(_os_error_message(err)), EXIT_USER_ERROR
    # a DatasetGenerationError (datasets could not read a file) carries the real cause
    cause = err.__cause__ or err.__context__
    if type(err).__name__ == "DatasetGenerationError" and cause is not None:
        inner, _ = explain(cause)
        return f"cannot read the input data: {inner}", EXIT_USER_ERROR
    return (
        f"internal error (a bug in hfpref, please report it): {type(err).__name__}: {_one_line(err)}; "
        f"rerun with {DEBUG_FLAG} for the traceback",
        EXIT_BUG,
    )


def main(argv: list[str] | None = None) -> int:
    argv, debug, quiet = split_global_flags(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.debug = debug
    args.no_progress = args.quiet = quiet or bool(getattr(args, "no_progress", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    path = [getattr(args, dest, None) for dest in ("command", "method", "benchmark", "action")]
    command = " ".join(part for part in path if part)
    if unknown:  # argparse would name the top-level program; name the command the option was given to
        hint = did_you_mean(unknown, leaf_parser(parser, command.split()))
        print(
            f"hfpref {command}: error: unrecognized arguments: {' '.join(unknown)}{hint} "
            f"(see hfpref {command} --help)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    try:
        if args.command == "push" or getattr(args, "push_to_hub", None):
            # fail in seconds when offline, not after the libraries' network retries (or hours of curation)
            from hfpref.pipeline.preflight import check_hub_reachable

            check_hub_reachable(f"{command} (pushing)" if args.command != "push" else "push")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\nhfpref {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - the one place every error becomes a one-line answer
        if debug:
            traceback.print_exc()
        message, status = explain(err)
        print(f"hfpref {command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
