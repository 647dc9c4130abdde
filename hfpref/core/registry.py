"""The step registry: recipe names of steps -> "module:Class" strings, imported only when used.

A recipe (``hfpref.pipeline``), an annotator (``AnnotateSelected``) and a sweep's pair-level steps all name
steps through this one table, so a step's module, and whatever heavy library it needs, loads only when a
recipe names it. Nothing here imports the pipeline: steps may use the registry, the pipeline reads it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from hfpref.core.step import ConfigError, config_values_problem

# filled by ``hfpref.steps`` (its package import registers the built-in steps, so any code that imports a
# step module, as the pipeline does, sees them) and by ``register_step`` for steps of your own
STEP_REGISTRY: dict[str, str] = {}


class UnknownStepError(ConfigError):
    """A step name that is not in the registry."""


def register_step(name: str, target: str) -> None:
    """Make ``name`` usable in recipes; ``target`` is "package.module:ClassName" (imported when used)."""
    if ":" not in target:
        raise ValueError(f"step target must look like 'package.module:ClassName', got {target!r}")
    STEP_REGISTRY[name] = target


def import_target(target: str) -> Any:
    """The object a "module:name" string names."""
    module_name, _, name = target.partition(":")
    return getattr(importlib.import_module(module_name), name)


def step_class(name: str, where: str = "steps", error: type[Exception] = UnknownStepError) -> type:
    """The class registered as ``name``; ``error`` (with ``where`` in its message) if there is none."""
    if name not in STEP_REGISTRY:
        raise error(f"{where}: unknown step {name!r}; known steps: {', '.join(sorted(STEP_REGISTRY))}")
    return import_target(STEP_REGISTRY[name])


def build_config(
    config_class: type, values: Mapping[str, Any], where: str, error: type[Exception] = ConfigError
) -> Any:
    """Construct a step config, naming the step and field on an unknown field, a value of the wrong type
    (checked against the field's annotation, ``hfpref.core.step.type_problem``) or a rejected value."""
    known = [f.name for f in dataclasses.fields(config_class)]
    for field in values:
        if field not in known:
            raise error(
                f"{where}: unknown config field {field!r} for {config_class.__name__}; known fields: {known}"
            )
    problem = config_values_problem(config_class, values, f"{where}.config")
    if problem:
        raise error(problem)
    try:
        return config_class(**values)
    except (TypeError, ValueError) as err:
        raise error(f"{where}: invalid config {dict(values)!r}: {err}") from err


def build_step(name: str, values: Mapping[str, Any], where: str, error: type[Exception] = ConfigError) -> Any:
    """The registered step ``name`` built with config ``values``."""
    cls = step_class(name, where, error)
    return cls(build_config(cls.config_class, values, where, error))
