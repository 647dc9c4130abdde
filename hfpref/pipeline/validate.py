"""The checks every recipe format shares (curate, iterate, sweeps): reading the YAML file, mappings and
lists, known keys, map settings, config names and versions, steps looked up in the registry.

Each check raises ``RecipeError`` (or the ``error`` class given, e.g. iterate's own) with a message that
says where in the recipe the problem is and what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hfpref.core import registry
from hfpref.core.columns import CANDIDATES_CONFIG
from hfpref.core.errors import UserError

# CANDIDATES_CONFIG: the release config of the annotated candidates; no pair config may take its name
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name under data/ and a config name


class RecipeError(UserError):
    """A recipe that cannot run as written; the message says where and what is wrong."""


def step_class(name: str, where: str = "steps") -> type:
    """The registered step class ``name``; an unknown name is a ``RecipeError`` listing the known ones."""
    return registry.step_class(name, where, RecipeError)


def build_config(config_class: type, values: Mapping[str, Any], where: str) -> Any:
    """``config_class(**values)``; unknown fields or bad values are a ``RecipeError`` naming ``where``."""
    return registry.build_config(config_class, values, where, RecipeError)


def build_step(name: str, values: Mapping[str, Any], where: str) -> Any:
    """The registered step ``name`` built with config ``values``; errors are ``RecipeError``s naming ``where``."""
    return registry.build_step(name, values, where, RecipeError)


def config_fields(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]


def check_keys(
    mapping: Mapping, allowed: Sequence[str], where: str, error: type[Exception] = RecipeError
) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise error(f"{where}: unknown field(s) {unknown}; allowed: {list(allowed)}")


def as_mapping(value: Any, where: str, error: type[Exception] = RecipeError) -> dict:
    """A copy of ``value`` as a dict (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise error(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def as_list(value: Any, where: str, error: type[Exception] = RecipeError) -> list:
    """``value`` itself when it is a list (None: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise error(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return value


def read_map_settings(raw: Mapping[str, Any], where: str) -> dict[str, int | None]:
    """``batch_size`` and ``num_proc`` of a step or maker: each a positive int or absent/null."""
    for key in ("batch_size", "num_proc"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            hint = " (write the number without quotes)" if isinstance(value, str) and value.isdigit() else ""
            raise RecipeError(
                f"{where}.{key}: expected a positive int or null, got {type(value).__name__} {value!r}{hint}"
            )
    return {"batch_size": raw.get("batch_size"), "num_proc": raw.get("num_proc")}


def non_negative_int(value: Any, where: str, allow_none: bool = False, minimum: int = 0) -> None:
    """An int >= ``minimum`` (bools are not ints here), or None when ``allow_none``."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RecipeError(
            f"{where}: expected an int >= {minimum}{' or null' if allow_none else ''}, got {value!r}"
        )


def check_config_name(name: Any, where: str) -> str:
    """A release config name: a folder name under data/, not the candidates config's."""
    if not isinstance(name, str) or not _CONFIG_NAME_RE.match(name):
        raise RecipeError(
            f"{where}.name: expected a config name (letters, digits, '_', '-', '.'; not starting with "
            f"'_', '-' or '.'), got {name!r}"
        )
    if name == CANDIDATES_CONFIG:
        raise RecipeError(f"{where}.name: {CANDIDATES_CONFIG!r} is the release's candidates config")
    return name


def read_section(
    raw: Any,
    where: str,
    allowed: Sequence[str],
    required: Sequence[str] = (),
    error: type[Exception] = RecipeError,
) -> dict[str, Any]:
    """A section of a recipe (or the whole recipe): a mapping of ``allowed`` keys holding every ``required``
    one; returns a copy."""
    raw = as_mapping(raw, where, error)
    check_keys(raw, allowed, where, error)
    for key in required:
        if key not in raw:
            raise error(f"{where}: missing '{key}'")
    return raw


def named_section(
    raw: Any, where: str, allowed: Sequence[str], required: Sequence[str]
) -> tuple[dict[str, Any], str]:
    """A pair config's section (a maker, mix, sweep or filter), ``name`` among the ``required`` keys;
    returns (the section, its config name)."""
    raw = read_section(raw, where, allowed, required)
    return raw, check_config_name(raw["name"], where)


@contextlib.contextmanager
def naming_the_file(source: str | None, error: type[Exception] = RecipeError) -> Iterator[None]:
    """Inside, a ``RecipeError`` becomes ``error`` with the recipe file in front ("recipe FILE: ...") when
    the recipe was read from a file."""
    try:
        yield
    except RecipeError as err:
        if source:
            raise error(f"recipe {source}: {err}") from None
        raise


def check_version(version: str, where: str = "version") -> str:
    """``hfpref.release.version.check_version``, raising ``RecipeError`` for a recipe's bad version."""
    from hfpref.release import version as release_version

    return release_version.check_version(version, where, RecipeError)


def read_recipe_yaml(path: str | Path, error: type[Exception] = RecipeError) -> Any:
    """The parsed YAML of a recipe file; a syntax error becomes ``error`` naming the file."""
    import yaml

    file = Path(path)
    if not file.exists():
        raise error(f"recipe {path}: no such file (working directory: {Path.cwd()}); check the path")
    if file.is_dir():
        raise error(f"recipe {path}: is a folder; give the recipe's YAML file")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise error(f"recipe {path}: not valid YAML{at}: {' '.join(str(problem).split())}") from err
    except UnicodeDecodeError as err:
        line = file.read_bytes()[: err.start].count(b"\n") + 1
        raise error(f"recipe {path}: line {line} is not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except PermissionError as err:
        raise error(f"recipe {path}: cannot read it ({err.strerror}); check its permissions") from err
