"""``pairs.sweeps`` and ``pairs.filters`` of a recipe: generator-delta sweeps and sample-delta filters, and the
records that describe the configs they made in the manifest's ``pair_selection``.

The pairs themselves are made by ``hfpref.steps.delta_sweep`` (plan, levels, analysis) and
``hfpref.steps.judges.quality.filter_by_sample_delta``; ``hfpref.pipeline.pairing`` runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hfpref.pipeline.spec import StepSpec
from hfpref.pipeline.validate import (
    RecipeError,
    as_list,
    named_section,
    non_negative_int,
)
from hfpref.steps.delta_sweep import SAMPLE_DELTA, level_config_name
from hfpref.steps.generator_delta import MEASURED, MEASURES


@dataclasses.dataclass
class SweepSpec:
    """``pairs.sweeps[i]`` of a recipe: one release config per rejected generator (see the module notes).

    ``capabilities``: ``measured`` (default; ``measure`` as in ``hfpref.steps.generator_delta.measure_capabilities``)
    or a table ``{generator: number}`` (labelled "given"). ``steps``: pair-level steps (e.g. ``QualityJudge``
    for the sample delta) mapped over every level's pairs, as ``steps`` are over the candidates.
    """

    name: str
    chosen: str
    rejected: list[str]
    size: int | None = None
    seed: int = 0
    capabilities: dict[str, float] | str = MEASURED
    measure: str = "auto"
    steps: list[StepSpec] = dataclasses.field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: Any, index: int) -> SweepSpec:
        where = f"pairs.sweeps[{index}]"
        allowed = tuple(f.name for f in dataclasses.fields(cls))
        raw, name = named_section(raw, where, allowed, ("name", "chosen", "rejected"))
        where = f"{where} ({name})"
        rejected = raw["rejected"]
        if not (isinstance(rejected, list) and rejected and all(isinstance(r, str) for r in rejected)):
            raise RecipeError(
                f"{where}.rejected: expected a non-empty list of generator names, got {rejected!r}"
            )
        if len(set(rejected)) != len(rejected):
            raise RecipeError(f"{where}.rejected: a generator is named twice in {rejected}")
        if not isinstance(raw["chosen"], str) or raw["chosen"] in rejected:
            raise RecipeError(
                f"{where}.chosen: expected a generator name not among the rejected, got {raw['chosen']!r}"
            )
        non_negative_int(raw.get("size"), f"{where}.size", allow_none=True, minimum=1)
        non_negative_int(raw.get("seed", 0), f"{where}.seed")
        capabilities = raw.get("capabilities", MEASURED)
        if capabilities != MEASURED and not (
            isinstance(capabilities, Mapping)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in capabilities.values())
        ):
            raise RecipeError(
                f"{where}.capabilities: expected {MEASURED!r} or a table {{generator: number}}, got {capabilities!r}"
            )
        if isinstance(capabilities, Mapping):
            unlisted = [g for g in [raw["chosen"], *rejected] if g not in capabilities]
            if unlisted:
                raise RecipeError(f"{where}.capabilities: no capability given for {unlisted}")
        measure = raw.get("measure", "auto")
        if measure not in MEASURES:
            raise RecipeError(f"{where}.measure: expected one of {list(MEASURES)}, got {measure!r}")
        steps = [StepSpec.from_dict(s, i) for i, s in enumerate(as_list(raw.get("steps"), f"{where}.steps"))]
        return cls(
            name=name,
            chosen=raw["chosen"],
            rejected=list(rejected),
            size=raw.get("size"),
            seed=raw.get("seed", 0),
            capabilities=dict(capabilities) if isinstance(capabilities, Mapping) else capabilities,
            measure=measure,
            steps=steps,
        )

    def where(self, index: int) -> str:
        return f"pairs.sweeps[{index}] ({self.name})"

    def level_names(self) -> list[str]:
        return [level_config_name(self.name, r) for r in self.rejected]

    def build_steps(self, index: int) -> list[Any]:
        """The pair-level steps; each must keep the row count (a maker belongs under ``makers``)."""
        built = []
        for k, spec in enumerate(self.steps):
            step = spec.build(k)
            if getattr(type(step), "changes_row_count", False):
                raise RecipeError(
                    f"{self.where(index)}.steps[{k}] ({spec.step}): changes the row count; a sweep's steps tag "
                    "each level's pairs (e.g. QualityJudge), so that every level keeps the same prompts"
                )
            built.append(step)
        return built

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "chosen": self.chosen,
            "rejected": list(self.rejected),
            "size": self.size,
            "seed": self.seed,
            "capabilities": self.capabilities
            if isinstance(self.capabilities, str)
            else dict(self.capabilities),
            "measure": self.measure,
        }
        if self.steps:
            out["steps"] = [s.to_dict() for s in self.steps]
        return out


@dataclasses.dataclass
class FilterSpec:
    """``pairs.filters[i]``: config ``name`` = the pairs of config ``from_`` whose ``column`` (default
    ``sample_delta``, a judge's quality gap) is in the top ``top_fraction`` or at least ``threshold``
    (``hfpref.steps.judges.quality.filter_by_sample_delta``; exactly one of the two)."""

    name: str
    from_: str
    top_fraction: float | None = None
    threshold: float | None = None
    column: str = SAMPLE_DELTA

    @classmethod
    def from_dict(cls, raw: Any, index: int) -> FilterSpec:
        where = f"pairs.filters[{index}]"
        allowed = ("name", "from", "top_fraction", "threshold", "column")
        raw, name = named_section(raw, where, allowed, ("name", "from"))
        where = f"{where} ({name})"
        if not isinstance(raw["from"], str):
            raise RecipeError(f"{where}.from: expected a config name, got {raw['from']!r}")
        top, threshold = raw.get("top_fraction"), raw.get("threshold")
        if (top is None) == (threshold is None):
            raise RecipeError(
                f"{where}: give exactly one of top_fraction (e.g. 0.25) or threshold (e.g. 2.0)"
            )
        if top is not None and not (
            isinstance(top, (int, float)) and not isinstance(top, bool) and 0 < top <= 1
        ):
            raise RecipeError(f"{where}.top_fraction: expected a number in (0, 1], got {top!r}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise RecipeError(f"{where}.threshold: expected a number, got {threshold!r}")
        column = raw.get("column", SAMPLE_DELTA)
        if not isinstance(column, str):
            raise RecipeError(f"{where}.column: expected a column name, got {column!r}")
        return cls(name=name, from_=raw["from"], top_fraction=top, threshold=threshold, column=column)

    def where(self, index: int) -> str:
        return f"pairs.filters[{index}] ({self.name})"

    def arguments(self) -> dict[str, Any]:
        return {"top_fraction": self.top_fraction, "threshold": self.threshold, "column": self.column}

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "from": self.from_, "column": self.column}
        out.update({k: v for k, v in self.arguments().items() if k != "column" and v is not None})
        return out


@dataclasses.dataclass
class SweepRecord:
    """How one level config of a sweep was made, described like a step for the manifest's ``pair_selection``."""

    spec: SweepSpec
    level: str
    rejected: str
    steps: list[Any]

    def describe(self) -> dict[str, Any]:
        config = {**self.spec.to_dict(), "level": self.level, "level_rejected": self.rejected}
        config.pop("steps", None)
        described = {"step": "hfpref.steps.delta_sweep", "version": "1", "config": config, "revision": None}
        if self.steps:
            described["pair_steps"] = [s.describe() for s in self.steps]
        return described


@dataclasses.dataclass
class FilterRecord:
    """How a filter config was made, for the manifest's ``pair_selection``."""

    spec: FilterSpec

    def describe(self) -> dict[str, Any]:
        return {
            "step": "hfpref.steps.judges.quality.filter_by_sample_delta",
            "version": "1",
            "config": {"from": self.spec.from_, **self.spec.arguments()},
            "revision": None,
        }
