"""Step configs: the ``StepConfig`` base, runtime-only fields, and checking config values against types.

A recipe (or a Python caller) gives a step's config as plain values; ``check_config_values`` checks each
against its field's annotation before the config is built, so ``batch_size: "64"`` fails at once with the
step, field, value and expected type named, not hours later inside a ``__post_init__``. ``canonical``
is the hashable form of a config that fingerprints use (runtime-only fields left out).
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from hfpref.core.errors import UserError


class ConfigError(UserError):
    """A step config field with a value of the wrong type (or out of range); names step, field, value, type."""


ON_ROW_ERROR = ("raise", "drop")
RUNTIME = "runtime"  # dataclass field metadata key: the field changes speed or transport, never results


@dataclasses.dataclass
class StepConfig:
    """Base class for step configs; subclasses add their own fields (all JSON-serialisable).

    ``on_row_error`` (keyword-only, every step): "raise" (default) stops the run at a row the step cannot
    work with (a ``RowError``); "drop" keeps that row with the step's outputs None, ``drop_reason``
    "row_error" and the message in a ``row_error`` column, so one bad row does not kill a long run and
    nothing disappears silently (see ``Step.__call__``).
    """

    on_row_error: Literal["raise", "drop"] = dataclasses.field(default="raise", kw_only=True)


def runtime_field(default: Any = None, **kwargs: Any) -> Any:
    """A config field that changes how fast (or where) a step runs but not what it writes: devices, batch
    budgets, timeouts, endpoints. ``Step.describe`` leaves such fields out, at any depth, so changing one
    keeps the step's fingerprint and its cached output."""
    return dataclasses.field(default=default, metadata={RUNTIME: True}, **kwargs)


def canonical(value: Any) -> Any:
    """A JSON-serialisable, order-stable form of a config value, for hashing (runtime fields left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get(RUNTIME)
        }
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


# ---- config field types ------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """An annotation as a reader writes it: ``int``, ``str | None``, ``list[str]``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _number_hint(value: Any, annotation: Any) -> str:
    """Why a quoted number is refused, and the fix (YAML reads ``5e-7``, without a dot, as a string)."""
    if not isinstance(value, str) or annotation not in (int, float):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if annotation is float and "e" in value.lower() and "." not in value:
        return f"; YAML reads {value} as a string: write it with a dot, e.g. {value.lower().replace('e', '.0e', 1)}"
    return f"; write the number without quotes: {value}"


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {value!r}"


def _union_problem(value: Any, annotation: Any, where: str) -> str | None:
    args = typing.get_args(annotation)
    if any(type_problem(value, a, where) is None for a in args):
        return None
    # one non-None member (``X | None``): its own message says more, e.g. which list item is wrong
    members = [a for a in args if a is not type(None)]
    if len(members) == 1 and value is not None:
        problem = type_problem(value, members[0], where)
        return problem.replace(f"expected {type_name(members[0])}", f"expected {type_name(annotation)}", 1)
    return f"{where}: expected {type_name(annotation)}, {_got(value)}{_number_hint(value, members[0])}"


def _literal_problem(value: Any, annotation: Any, where: str) -> str | None:
    # ``True == 1``: compare the type too, so ``1`` is not accepted for ``Literal[True]``
    if any(value == a and type(value) is type(a) for a in typing.get_args(annotation)):
        return None
    return f"{where}: expected {type_name(annotation)}, {_got(value)}"


def _sequence_problem(value: Any, annotation: Any, where: str) -> str | None:
    """``list[X]`` (a tuple too), ``tuple[X, ...]`` and fixed-length ``tuple[X, Y]``: checked item by item."""
    args = typing.get_args(annotation)
    if not isinstance(value, (list, tuple)):
        return f"{where}: expected {type_name(annotation)}, {_got(value)}"
    if typing.get_origin(annotation) is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
        if len(value) != len(args):
            return f"{where}: expected {type_name(annotation)} ({len(args)} items), {_got(value)}"
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    for i, (item, item_type) in enumerate(zip(value, item_types, strict=True)):
        problem = type_problem(item, item_type, f"{where}[{i}]")
        if problem:
            return problem
    return None


def _mapping_problem(value: Any, annotation: Any, where: str) -> str | None:
    if not isinstance(value, Mapping):
        return f"{where}: expected {type_name(annotation)}, {_got(value)}"
    args = typing.get_args(annotation)
    key_type, item_type = args if len(args) == 2 else (Any, Any)
    for key, item in value.items():
        problem = type_problem(key, key_type, f"{where} key {key!r}") or type_problem(
            item, item_type, f"{where}[{key!r}]"
        )
        if problem:
            return problem
    return None


_GENERIC_CHECKS = {
    typing.Union: _union_problem,
    types.UnionType: _union_problem,
    Literal: _literal_problem,
    list: _sequence_problem,
    tuple: _sequence_problem,
    Sequence: _sequence_problem,
    typing.Sequence: _sequence_problem,
    dict: _mapping_problem,
    Mapping: _mapping_problem,
    typing.Mapping: _mapping_problem,
}


def _plain_type_problem(value: Any, annotation: Any, where: str) -> str | None:
    """A non-generic annotation: ``bool``, ``int``, ``float`` (accepts an int), a dataclass, another class."""
    is_bool = isinstance(value, (bool, np.bool_))  # a bool is an Integral, but never an int or float here
    if annotation is bool:
        return None if is_bool else f"{where}: expected bool (true or false), {_got(value)}"
    if annotation is int:
        if isinstance(value, numbers.Integral) and not is_bool:
            return None
        return f"{where}: expected int, {_got(value)}{_number_hint(value, int)}"
    if annotation is float:
        if isinstance(value, numbers.Real) and not is_bool:
            return None
        return f"{where}: expected float, {_got(value)}{_number_hint(value, float)}"
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return None
        if isinstance(value, Mapping):
            return config_values_problem(annotation, value, where)
        return f"{where}: expected {annotation.__name__} (or a mapping of its fields), {_got(value)}"
    if isinstance(annotation, type):
        return (
            None
            if isinstance(value, annotation)
            else f"{where}: expected {type_name(annotation)}, {_got(value)}"
        )
    return None  # a string annotation that did not resolve, a TypeVar ...: not checked


def type_problem(value: Any, annotation: Any, where: str) -> str | None:
    """Why ``value`` does not fit ``annotation`` (a message starting with ``where``), or None when it fits.

    Supports ``int``, ``float`` (accepts an int), ``bool``, ``str``, ``X | None`` and other unions,
    ``list[X]`` (a tuple too), ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]`` and nested
    dataclasses (an instance, or a mapping of its fields); other annotations accept anything.
    """
    if annotation is Any or annotation is object:
        return None
    if annotation is type(None) or annotation is None:
        return None if value is None else f"{where}: expected None, {_got(value)}"
    origin = typing.get_origin(annotation)
    if origin is None:
        return _plain_type_problem(value, annotation, where)
    check = _GENERIC_CHECKS.get(origin)
    # another generic (Callable[...], type[...]): not checked
    return check(value, annotation, where) if check is not None else None


def config_type_hints(config_class: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass (fields whose annotation does not resolve,
    e.g. a name imported only for type checkers, are left out rather than failing)."""
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # resolve field by field, in the module each class was defined in
        hints = {}
        for klass in reversed(config_class.__mro__):
            namespace = vars(sys.modules.get(klass.__module__, typing))
            for name, annotation in getattr(klass, "__annotations__", {}).items():
                try:
                    hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
                except Exception:
                    hints.pop(name, None)
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in hints.items() if k in names}


def config_values_problem(config_class: type, values: Mapping[str, Any], where: str) -> str | None:
    """The first unknown field or wrongly typed value among ``values`` for ``config_class``, or None."""
    known = [f.name for f in dataclasses.fields(config_class) if f.init]
    known.sort(key=lambda name: name == "on_row_error")  # the step's own fields first
    for name in values:
        if name not in known:
            return (
                f"{where}: unknown config field {name!r} for {config_class.__name__}; known fields: {known}"
            )
    hints = config_type_hints(config_class)
    for name, value in values.items():
        if name in hints:
            problem = type_problem(value, hints[name], f"{where}.{name}")
            if problem:
                return problem
    return None


def check_config_values(config_class: type, values: Mapping[str, Any], where: str) -> None:
    """Raise ``ConfigError`` naming step, field, value and expected type for an unknown field or a value
    whose type does not match the field's annotation; run before the config is built, so a recipe with
    ``batch_size: "64"`` fails at once instead of after hours of earlier steps."""
    problem = config_values_problem(config_class, values, where)
    if problem:
        raise ConfigError(problem)


def set_fields(config: Any) -> dict[str, Any]:
    """The fields of a config instance that differ from their defaults (what a user set)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            out[field.name] = value
            continue
        try:
            same = bool(value == default)
        except Exception:  # e.g. numpy arrays
            same = False
        if not same:
            out[field.name] = value
    return out
