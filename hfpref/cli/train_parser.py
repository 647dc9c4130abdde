"""The parser of ``hfpref train dpo|kto``: TRL's ``TrlParser`` over hfpref's data options and the trainer config.

Every field of the trainer config (``trl.DPOConfig``, ``trl.KTOConfig``) is a flag, spelled as TRL spells it
(``--learning_rate`` and ``--learning-rate``), and ``--config FILE.yaml`` sets fields from a YAML mapping as
TRL's scripts do (an ``env:`` mapping sets environment variables; flags given win over the file).

The parsed namespace's ``trainer_fields`` holds only the trainer fields the user gave (flag or file), so
that hfpref's defaults (``DCRM_RECIPE``, ``KTO_DEFAULTS``) apply to them and the model card can say which
values the user set. The help shows the default that applies, hfpref's or TRL's.

Imported only when ``train`` is the command: it imports TRL (and with it torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trl import TrlParser

from hfpref.cli.parsing import OneLineParser, current_flag

# flags of earlier releases -> the trainer config field they set (each still works, with a warning)
RENAMED_FLAGS = {
    "--epochs": "--num-train-epochs",
    "--lr-scheduler": "--lr-scheduler-type",
    "--warmup-ratio": "--warmup-steps",  # transformers 5: a float below 1 is a ratio of the total steps
    "--batch-size": "--per-device-train-batch-size",
}


class TrainParser(OneLineParser, TrlParser):
    """TrlParser over ``[arguments, config_class]``; the namespace's ``trainer_fields`` holds the fields given."""

    def __init__(
        self, arguments: type, config_class: type, defaults: Mapping[str, Any], **kwargs: Any
    ) -> None:
        super().__init__([arguments, config_class], **kwargs)
        self.config_class = config_class
        self.trainer_fields = trainer_fields = {f.name for f in dataclasses.fields(config_class) if f.init}
        hints = typing.get_type_hints(config_class)
        for name in sorted(trainer_fields):
            if hints.get(name) in (bool, bool | None):
                self._as_switch(name)
        for action in self._actions:
            if action.dest not in trainer_fields or action.default is argparse.SUPPRESS:
                continue
            if action.dest == "output_dir":
                action.required = True  # TRL would write to ./trainer_output
            elif action.dest in defaults:
                action.help = f"{action.help or ''} (hfpref default: {_escaped(defaults[action.dest])})"
            elif action.default is not None and not isinstance(action, argparse._StoreFalseAction):
                action.help = f"{action.help or ''} (TRL default: {_escaped(action.default)})"
            action.default = argparse.SUPPRESS

    def _as_switch(self, name: str) -> None:
        """A bool field as a bare flag too (``--bf16``), with its negation (``--no-bf16``)."""
        for action in [a for a in self._actions if a.dest == name and a.nargs is None]:
            action.nargs, action.const = "?", True
        negation = f"--no-{name.replace('_', '-')}"
        if negation not in self._option_string_actions:
            self.add_argument(
                negation, f"--no_{name}", dest=name, action="store_false", help=f"--{name} false"
            )

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = self._current_flags(list(sys.argv[1:] if args is None else args))
        if "--config" in args:
            path = args[args.index("--config") + 1] if args[-1] != "--config" else ""
            if not Path(path).is_file():
                self.error(
                    f"--config {path!r}: no such file; --config is a YAML file of {self.config_class.__name__} "
                    "fields (as in TRL), the release config is --dataset-config"
                )
        try:
            namespace, from_file, rest = self.parse_args_and_config(
                args, return_remaining_strings=True, separate_remaining_strings=True
            )
        except ValueError as err:  # TrlParser: the file is not a YAML mapping
            self.error(str(err))
        if from_file:
            unknown = ", ".join(s[2:] for s in from_file[::2])
            self.error(f"--config sets what {self.prog} does not have: {unknown}")
        # the trainer fields given, apart from the command's own options (and from main's --debug)
        given = vars(namespace)
        namespace.trainer_fields = {name: given.pop(name) for name in self.trainer_fields & set(given)}
        return namespace, rest

    def parse_args_into_dataclasses(self, args: Any = None, **_: Any) -> tuple[Any, list[str]]:
        # TrlParser.parse_args_and_config ends here: keep the namespace (the fields given) and the rest,
        # instead of dataclasses filled with every default
        return argparse.ArgumentParser.parse_known_args(self, args)

    def _current_flags(self, args: list[str]) -> list[str]:
        """``args`` with the flags of earlier releases rewritten, each with a warning on stderr."""
        out = []
        items = iter(args)
        for arg in items:
            if arg == "--set":  # --set FIELD=VALUE
                field, _, value = next(items, "").partition("=")
                out += [f"--{field}", value]
                print(f"{self.prog}: warning: --set is deprecated; give --{field} {value}", file=sys.stderr)
            else:
                out.append(current_flag(arg, RENAMED_FLAGS, self.prog))
        return out


def _escaped(value: Any) -> str:
    """A default as help text (argparse formats help with %)."""
    return str(getattr(value, "value", value)).replace("%", "%%")
