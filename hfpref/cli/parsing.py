"""Command options declared once, as dataclasses, and the parsers made from them.

Every command's options are the fields of dataclasses (``CurateArguments``, ``RunOptions``, ...): the field's
type, default and ``metadata={"help": ...}`` are its flag's type, default and help, turned into argparse by
``transformers.HfArgumentParser`` (``hfpref.cli.dataclass_parser``). Two field helpers cover what
HfArgumentParser does not: ``positional(...)`` (an argument without a flag) and ``switch(...)`` (a flag that
takes no value, so ``--force RECIPE.yaml`` does not read the recipe as the flag's value).

A subcommand's parser is a ``LazyParser``: it is registered with its name, help and a way to build the real
parser, which is built on first use. So ``hfpref --help`` (and importing the CLI) imports neither transformers
nor, for ``train``, TRL and torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

EXIT_USER_ERROR = 2

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``hfpref curate: error: ...``), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written; a flag's default after its help, unless None, False or said."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or not (action.option_strings or action.nargs == "?")
        ):
            return text
        return f"{text} (default: %(default)s)"


def positional(help: str, metavar: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field given without a flag (optional when it has a default)."""
    metadata = {"help": help, "metavar": metavar, "positional": True}
    return dataclasses.field(default=default, metadata=metadata)


def switch(help: str) -> Any:
    """A bool dataclass field given as a bare flag (``--force``), False unless given."""
    return dataclasses.field(default=False, metadata={"help": help, "switch": True})


def option(help: str, default: Any = None, **metadata: Any) -> Any:
    """A dataclass field that is a flag: its help, default and argparse extras (``metavar``, ``aliases``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def required(help: str, **metadata: Any) -> Any:
    """A dataclass field that is a flag the command cannot run without."""
    return dataclasses.field(metadata={"help": help, **metadata})


def arguments(args: argparse.Namespace, cls: type[T]) -> T:
    """The ``cls`` dataclass filled from the parsed command line (its fields' values in ``args``)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


class LazyParser(OneLineParser):
    """A subcommand's parser whose options are built when it first parses or shows its help.

    ``build(**parser_kwargs)`` makes the real parser (with this parser's prog, description, epilog); parsing
    and help are delegated to it, and ``set_defaults`` (the command's ``func``) is passed on. Without ``build``
    it is a plain parser (a command with sub-subcommands, such as ``train``).
    """

    def __init__(self, *, build: Callable[..., argparse.ArgumentParser] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self._build, self._kwargs, self._real = build, kwargs, None

    def real(self) -> argparse.ArgumentParser:
        if self._build is None:
            return self
        if self._real is None:
            self._real = self._build(**self._kwargs)
            self._real.set_defaults(**self._defaults)
        return self._real

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if self._build is None:
            return super().parse_known_args(args, namespace)
        return self.real().parse_known_args(args, namespace)

    def format_help(self) -> str:
        return super().format_help() if self._build is None else self.real().format_help()

    def format_usage(self) -> str:
        return super().format_usage() if self._build is None else self.real().format_usage()


def dataclass_parser(*types: type) -> Callable[..., argparse.ArgumentParser]:
    """A ``build`` for ``LazyParser``: an HfArgumentParser over these dataclasses (imported when built).
    A dataclass's ``renamed_flags`` ClassVar (earlier flag -> current flag) keeps its old flags working, with
    a warning (``current_flag``)."""

    def build(**kwargs: Any) -> argparse.ArgumentParser:
        from hfpref.cli.dataclass_parser import DataclassParser

        return DataclassParser(list(types), **kwargs)

    return build


def current_flag(arg: str, renamed: Mapping[str, str], prog: str) -> str:
    """``arg``, or the flag it became when it is a renamed flag of an earlier release (a key of ``renamed``;
    ``--old=value`` too), which keeps working with a one-line warning on stderr naming the new flag."""
    flag, equals, value = arg.partition("=")
    if flag not in renamed:
        return arg
    print(f"{prog}: warning: {flag} is deprecated; give {renamed[flag]}", file=sys.stderr)
    return renamed[flag] + equals + value


def add_command(subparsers: Any, name: str, build: Callable[..., Any], func: Callable, **kwargs: Any) -> Any:
    """Register subcommand ``name``: its parser is built by ``build`` on first use and runs ``func(args)``."""
    parser = subparsers.add_parser(name, build=build, **kwargs)
    parser.set_defaults(func=func)
    return parser


def add_group(subparsers: Any, name: str, sub: str, **kwargs: Any) -> Any:
    """Register ``name`` as a command with sub-commands (``train dpo``), named ``sub`` in the parsed arguments
    (``args.method == "dpo"``) and ``SUB`` in the help; returns their subparsers."""
    parser = subparsers.add_parser(name, **kwargs)
    return parser.add_subparsers(dest=sub, metavar=sub.upper(), required=True, parser_class=LazyParser)


def leaf_parser(parser: argparse.ArgumentParser, path: Sequence[str]) -> argparse.ArgumentParser:
    """The (real) parser of the subcommand reached by ``path`` (``["train", "dpo"]``)."""
    for name in path:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or name not in actions[0].choices:
            break
        parser = actions[0].choices[name]
    return parser.real() if isinstance(parser, LazyParser) else parser


def did_you_mean(unknown: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """ "; did you mean --beta?" for unrecognized flags close to one the parser has, else ""."""
    known = [s for s in parser._option_string_actions if s.startswith("--")]
    close = []
    for arg in unknown:
        if arg.startswith("--"):
            close += difflib.get_close_matches(arg.partition("=")[0], known, n=1)
    return f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
