"""A recipe's plain parts: the input, one candidate-level step, and the output (with its push).

Each part is a dataclass with ``from_dict`` (the checks of its YAML section, errors naming where) and
``to_dict`` (the section as written back into the card's "recipe as run"). The pair configs' parts are in
``hfpref.pipeline.pair_specs``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hfpref.core.registry import STEP_REGISTRY
from hfpref.pipeline.validate import (
    RecipeError,
    as_mapping,
    build_step,
    check_keys,
    check_version,
    read_map_settings,
)

DEFAULT_INPUTS = ("ifeval", "ifeval-2")  # hfpref.pipeline.default_data.NAMED_INPUTS (tests check they agree)


@dataclasses.dataclass
class InputSpec:
    """Exactly one of ``default`` (an embedded dataset), ``hub`` (with ``revision``) or ``path``.

    ``rename`` ({old: new}) then ``columns`` (the columns to keep) adapt a dataset whose column names
    differ from hfpref's contract, e.g. ``rename: {instruction: prompt}``.
    """

    default: str | None = None
    hub: str | None = None
    revision: str | None = None
    split: str = "train"
    config: str | None = None
    path: str | None = None
    rename: dict[str, str] | None = None
    columns: list[str] | None = None
    generators: list[str] | None = None  # embedded inputs only: which packaged generators, in this order

    @classmethod
    def from_dict(cls, raw: Any) -> InputSpec:
        where = "input"
        raw = as_mapping(raw, where)
        check_keys(raw, tuple(f.name for f in dataclasses.fields(cls)), where)
        spec = cls(**raw)
        given = [k for k in ("default", "hub", "path") if getattr(spec, k) is not None]
        if len(given) != 1:
            raise RecipeError(
                f"{where}: give exactly one of 'default', 'hub' or 'path' (got {given or 'none'})"
            )
        if spec.default is not None and spec.default not in DEFAULT_INPUTS:
            raise RecipeError(
                f"{where}: unknown default dataset {spec.default!r}; known: {list(DEFAULT_INPUTS)}"
            )
        if spec.generators is not None:
            if spec.default is None:
                raise RecipeError(f"{where}.generators: applies to embedded inputs (default: ...) only")
            from hfpref.pipeline.default_data import DefaultDataError, resolve_generators

            if not isinstance(spec.generators, list):
                raise RecipeError(f"{where}.generators: expected a list of names, got {spec.generators!r}")
            try:
                resolve_generators(spec.default, spec.generators)
            except DefaultDataError as err:
                raise RecipeError(str(err)) from None
        if spec.hub is not None and not spec.revision:
            raise RecipeError(
                f"{where}: hub dataset {spec.hub!r} needs a 'revision' (a commit sha or tag), "
                "so that the release says exactly which data it was built from"
            )
        if spec.hub is None and (spec.revision is not None or spec.config is not None):
            raise RecipeError(f"{where}: 'revision' and 'config' apply to hub datasets only")
        if spec.rename is not None and not (
            isinstance(spec.rename, Mapping) and all(isinstance(v, str) for v in spec.rename.values())
        ):
            raise RecipeError(
                f"{where}.rename: expected a mapping of old name to new name, got {spec.rename!r}"
            )
        if spec.columns is not None and not (
            isinstance(spec.columns, list) and spec.columns and all(isinstance(c, str) for c in spec.columns)
        ):
            raise RecipeError(
                f"{where}.columns: expected a non-empty list of column names, got {spec.columns!r}"
            )
        return spec

    @classmethod
    def from_cli(cls, value: str) -> InputSpec:
        """Parse ``--input``: "default" / "ifeval", an existing file or folder, or "OWNER/NAME@REVISION"."""
        if value in ("default", *DEFAULT_INPUTS):
            return cls(default=DEFAULT_INPUTS[0] if value == "default" else value)
        if Path(value).exists():
            return cls(path=value)
        if "@" in value:
            hub_id, _, revision = value.partition("@")
            return cls.from_dict({"hub": hub_id, "revision": revision})
        raise RecipeError(
            f"--input {value!r}: not an existing file or folder, and not a Hub dataset as OWNER/NAME@REVISION "
            "(a revision is required); use 'default' for the embedded IFEval data"
        )

    def to_dict(self) -> dict[str, Any]:
        if self.default is not None:
            out: dict[str, Any] = {"default": self.default}
            if self.generators is not None:
                out["generators"] = list(self.generators)
        elif self.path is not None:
            out = {"path": self.path, "split": self.split} if self.split != "train" else {"path": self.path}
        else:
            out = {"hub": self.hub, "revision": self.revision, "split": self.split}
            if self.config is not None:
                out["config"] = self.config
        if self.rename is not None:
            out["rename"] = dict(self.rename)
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out


@dataclasses.dataclass
class StepSpec:
    """One candidate-level step: its registry name, config values, and optional map settings."""

    step: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int | None = None
    num_proc: int | None = None

    @classmethod
    def from_dict(cls, raw: Any, index: int) -> StepSpec:
        where = f"steps[{index}]"
        raw = as_mapping(raw, where)
        check_keys(raw, ("step", "config", "batch_size", "num_proc"), where)
        if "step" not in raw:
            raise RecipeError(f"{where}: missing 'step' (one of: {', '.join(sorted(STEP_REGISTRY))})")
        config = as_mapping(raw.get("config"), f"{where} ({raw['step']}).config")
        settings = read_map_settings(raw, f"{where} ({raw['step']})")
        return cls(step=str(raw["step"]), config=config, **settings)

    def where(self, index: int) -> str:
        return f"steps[{index}] ({self.step})"

    def build(self, index: int):
        return build_step(self.step, self.config, self.where(index))

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "config": copy.deepcopy(self.config), **map_settings(self)}


def map_settings(spec: StepSpec | Any) -> dict[str, int]:
    """A step's or maker's ``batch_size`` and ``num_proc`` as the recipe gives them (only those set)."""
    return {key: getattr(spec, key) for key in ("batch_size", "num_proc") if getattr(spec, key) is not None}


@dataclasses.dataclass
class PushSpec:
    repo_id: str
    revision: str | None = None
    private: bool = False

    @classmethod
    def from_dict(cls, raw: Any) -> PushSpec | None:
        if raw is None:
            return None
        where = "output.push_to_hub"
        raw = as_mapping(raw, where)
        check_keys(raw, ("repo_id", "revision", "private"), where)
        if not raw.get("repo_id") or "/" not in str(raw["repo_id"]):
            raise RecipeError(f"{where}: 'repo_id' must look like OWNER/NAME, got {raw.get('repo_id')!r}")
        return cls(**raw)


@dataclasses.dataclass
class OutputSpec:
    """Where the release folder goes, its name and version, and where to push it (optional).

    ``candidate_matrices``: keep the N x N pair-metric matrices in the ``candidates`` config (off by
    default: they grow as N squared and PairMetrics recomputes them from the candidates in seconds).
    ``license``: the dataset's license for the card (default: the input's, when known).
    """

    folder: str = "hfpref-release"
    name: str = "hfpref-dataset"
    version: str = "0.1.0"
    license: str | None = None
    candidate_matrices: bool = False
    push_to_hub: PushSpec | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> OutputSpec:
        where = "output"
        raw = as_mapping(raw, where)
        check_keys(raw, tuple(f.name for f in dataclasses.fields(cls)), where)
        raw["version"] = str(raw.get("version", cls.version))
        check_version(raw["version"], f"{where}.version")
        raw["push_to_hub"] = PushSpec.from_dict(raw.get("push_to_hub"))
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.push_to_hub is None:
            out.pop("push_to_hub")
        if self.license is None:
            out.pop("license")
        return out
