"""The parser a command's option dataclasses become: ``transformers.HfArgumentParser`` with hfpref's rules.

Imported only when a command's parser is built (``hfpref.cli.parsing.LazyParser``): transformers takes a
second or two to import, which ``hfpref --help`` does not pay.

On top of HfArgumentParser: errors are one line (``hfpref.cli.parsing.OneLineParser``); fields marked
``positional`` or ``switch`` (``hfpref.cli.parsing``) become a positional argument or a bare flag; and
hfpref's own commands spell flags with hyphens only (``--cache-dir``; HfArgumentParser would also add
``--cache_dir``), so that help and error messages name each flag once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from transformers import HfArgumentParser

from hfpref.cli.parsing import OneLineParser, current_flag


class _HyphenFlagsOnly:
    """Stands in for a parser while HfArgumentParser adds a field: drops the ``--snake_case`` spellings."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        kept = [n for n in names if not (n.startswith("--") and "_" in n)]
        return self.parser.add_argument(*kept, **kwargs)


def add_field(parser: Any, field: dataclasses.Field) -> None:
    """Add one dataclass field to ``parser`` (or an argument group) as hfpref's commands spell it."""
    metadata = dict(field.metadata)
    flag = "--" + field.name.replace("_", "-")
    if metadata.pop("positional", False):
        optional = field.default is not dataclasses.MISSING
        parser.add_argument(
            field.name,
            nargs="?" if optional else None,
            default=None if not optional else field.default,
            **metadata,
        )
    elif metadata.pop("switch", False):
        parser.add_argument(
            flag, *metadata.pop("aliases", ()), dest=field.name, action="store_true", **metadata
        )
    else:
        HfArgumentParser._parse_dataclass_field(_HyphenFlagsOnly(parser), field)


class DataclassParser(OneLineParser, HfArgumentParser):
    """HfArgumentParser over hfpref's option dataclasses, with one-line errors, positionals and switches;
    the flags of earlier releases that a dataclass lists in its ``renamed_flags`` ClassVar still work, with a
    warning (``hfpref.cli.parsing.current_flag``)."""

    def __init__(self, dataclass_types: Sequence[type], **kwargs: Any) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.renamed = {
            old: new for t in dataclass_types for old, new in getattr(t, "renamed_flags", {}).items()
        }

    @staticmethod
    def _parse_dataclass_field(parser: Any, field: dataclasses.Field) -> None:
        add_field(parser, field)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if self.renamed:
            given = sys.argv[1:] if args is None else args
            args = [current_flag(arg, self.renamed, self.prog) for arg in given]
        return super().parse_known_args(args, namespace)
