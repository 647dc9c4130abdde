"""The ``pairs`` section of a recipe: strategies with their shared config, pair makers and mixes (sweeps and
filters are in ``hfpref.pipeline.sweep_specs``, read only when a recipe has them).

Every strategy, maker, mix, sweep level and filter becomes one release config; ``hfpref.pipeline.pairing``
runs them.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from typing import Any

from hfpref.core import columns as C
from hfpref.core.registry import import_target
from hfpref.pipeline.spec import map_settings
from hfpref.pipeline.validate import (
    RecipeError,
    as_list,
    as_mapping,
    build_config,
    build_step,
    check_keys,
    config_fields,
    named_section,
    read_map_settings,
)

ALL_STRATEGIES = "all"
# pairs.config.generator_ranking: "measured" ranks the generators by their IFEval accuracy on the candidates
# (hfpref.steps.capabilities), computed after the steps ran; a list is a ranking given by hand
MEASURED = "measured"
_MEASURED_PLACEHOLDER = ["(measured after the steps)"]  # stands in for the ranking while validating
MAKER_SOURCES = ("candidates", "prompts")
MIX_FUNCTION = "hfpref.steps.contrast.mix_contrast"
PAIR_SELECTOR = "hfpref.steps.selection:PairSelector"


@dataclasses.dataclass
class MakerSpec:
    """A pair-making step (changes the row count, writes ``drop_reason``) whose kept pairs form config ``name``.

    ``source``: "candidates" (the last step's output) or "prompts" (the rows before the first step that
    writes ``responses``).
    """

    name: str
    step: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "candidates"
    batch_size: int | None = None
    num_proc: int | None = None

    @classmethod
    def from_dict(cls, raw: Any, index: int) -> MakerSpec:
        where = f"pairs.makers[{index}]"
        raw, name = named_section(
            raw, where, tuple(f.name for f in dataclasses.fields(cls)), ("name", "step")
        )
        settings = read_map_settings(raw, f"{where} ({name})")
        source = raw.get("source", "candidates")
        if source not in MAKER_SOURCES:
            raise RecipeError(
                f"{where} ({name}).source: expected one of {list(MAKER_SOURCES)}, got {source!r}"
            )
        return cls(
            name=name,
            step=str(raw["step"]),
            config=as_mapping(raw.get("config"), f"{where} ({name}).config"),
            source=source,
            **settings,
        )

    def where(self, index: int) -> str:
        return f"pairs.makers[{index}] ({self.name}: {self.step})"

    def build(self, index: int):
        """The step, after checking that it makes pairs rows (row count changes, ``drop_reason`` written)."""
        step = build_step(self.step, self.config, self.where(index))
        if not getattr(type(step), "changes_row_count", False) or C.DROP_REASON not in step.output_columns():
            raise RecipeError(
                f"{self.where(index)}: {self.step} is not a pair maker: a maker must change the row count "
                f"(changes_row_count = True) and write {C.DROP_REASON!r}, as ContrastPairs and "
                "MCTSPairGenerator do; candidate-level steps go under 'steps'"
            )
        return step

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "step": self.step, "config": copy.deepcopy(self.config)}
        if self.source != "candidates":
            out["source"] = self.source
        return {**out, **map_settings(self)}


@dataclasses.dataclass
class MixSpec:
    """Config ``name``: ``mix_contrast`` over the concatenated kept pairs of the maker configs in ``from_``.

    ``size`` None: the largest size the pairs allow at ``ratio_high`` (``largest_mix_size``).
    """

    name: str
    from_: list[str]
    ratio_high: float = 0.5
    size: int | None = None
    seed: int = 0
    stratify: str | None = None
    allow_short: bool = False

    @classmethod
    def from_dict(cls, raw: Any, index: int) -> MixSpec:
        where = f"pairs.mixes[{index}]"
        allowed = ("name", "from", "ratio_high", "size", "seed", "stratify", "allow_short")
        raw, name = named_section(raw, where, allowed, ("name", "from"))
        where = f"{where} ({name})"
        sources = raw["from"]
        if not (isinstance(sources, list) and sources and all(isinstance(x, str) for x in sources)):
            raise RecipeError(f"{where}.from: expected a non-empty list of config names, got {sources!r}")
        if len(set(sources)) != len(sources):
            raise RecipeError(f"{where}.from: a config is named twice in {sources}")
        spec = cls(
            name=name, from_=list(sources), **{k: v for k, v in raw.items() if k not in ("name", "from")}
        )
        ratio = spec.ratio_high
        if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio <= 1):
            raise RecipeError(f"{where}.ratio_high: expected a number in [0, 1], got {ratio!r}")
        if spec.size is not None and not (
            isinstance(spec.size, int) and not isinstance(spec.size, bool) and spec.size >= 1
        ):
            raise RecipeError(
                f"{where}.size: expected a positive int or null (the largest), got {spec.size!r}"
            )
        if not (isinstance(spec.seed, int) and not isinstance(spec.seed, bool) and spec.seed >= 0):
            raise RecipeError(f"{where}.seed: expected a non-negative int, got {spec.seed!r}")
        if spec.stratify is not None and not isinstance(spec.stratify, str):
            raise RecipeError(f"{where}.stratify: expected a column name or null, got {spec.stratify!r}")
        if not isinstance(spec.allow_short, bool):
            raise RecipeError(f"{where}.allow_short: expected true or false, got {spec.allow_short!r}")
        return spec

    def arguments(self, size: int | None = None) -> dict[str, Any]:
        """``mix_contrast``'s keyword arguments (``size`` resolved when given)."""
        return {
            "ratio_high": self.ratio_high,
            "size": self.size if size is None else size,
            "seed": self.seed,
            "stratify": self.stratify,
            "allow_short": self.allow_short,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "from": list(self.from_), **self.arguments()}


@dataclasses.dataclass
class MixRecord:
    """How a mix config was drawn, described like a step for the manifest's ``pair_selection``."""

    spec: MixSpec
    size: int

    def describe(self) -> dict[str, Any]:
        return {
            "step": MIX_FUNCTION,
            "version": "1",
            "config": {"from": list(self.spec.from_), **self.spec.arguments(self.size)},
            "revision": None,
        }


@dataclasses.dataclass
class PairsSpec:
    """The pair strategies to run ("all" = every strategy that applies) and their shared config, plus
    optional pair makers and mixes (see the module docstring); ``strategies`` may be [] with makers."""

    strategies: list[str] | str = ALL_STRATEGIES
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    makers: list[MakerSpec] = dataclasses.field(default_factory=list)
    mixes: list[MixSpec] = dataclasses.field(default_factory=list)
    sweeps: list[Any] = dataclasses.field(default_factory=list)  # hfpref.pipeline.sweep_specs.SweepSpec
    filters: list[Any] = dataclasses.field(default_factory=list)  # hfpref.pipeline.sweep_specs.FilterSpec

    @classmethod
    def from_dict(cls, raw: Any) -> PairsSpec:
        where = "pairs"
        raw = as_mapping(raw, where)
        check_keys(raw, ("strategies", "config", "makers", "mixes", "sweeps", "filters"), where)
        sweeps_raw = as_list(raw.get("sweeps"), "pairs.sweeps")
        filters_raw = as_list(raw.get("filters"), "pairs.filters")
        sweeps, filters = [], []
        if sweeps_raw or filters_raw:  # read only when present: they import the sweep steps (numpy, datasets)
            from hfpref.pipeline.sweep_specs import FilterSpec, SweepSpec

            sweeps = [SweepSpec.from_dict(x, i) for i, x in enumerate(sweeps_raw)]
            filters = [FilterSpec.from_dict(x, i) for i, x in enumerate(filters_raw)]
        makers = [MakerSpec.from_dict(m, i) for i, m in enumerate(as_list(raw.get("makers"), "pairs.makers"))]
        mixes = [MixSpec.from_dict(m, i) for i, m in enumerate(as_list(raw.get("mixes"), "pairs.mixes"))]
        strategies = raw.get("strategies", ALL_STRATEGIES)
        if isinstance(strategies, str) and strategies != ALL_STRATEGIES:
            strategies = [s.strip() for s in strategies.split(",") if s.strip()]
        if not isinstance(strategies, str) and (
            not isinstance(strategies, list)
            or not (strategies or makers or sweeps)
            or not all(isinstance(s, str) for s in strategies)
        ):
            raise RecipeError(
                f"{where}.strategies: expected 'all' or a non-empty list of names (or [] when there are "
                f"makers or sweeps), got {strategies!r}"
            )
        return cls(
            strategies=strategies,
            config=as_mapping(raw.get("config"), f"{where}.config"),
            makers=makers,
            mixes=mixes,
            sweeps=sweeps,
            filters=filters,
        )

    @property
    def generator_ranking(self) -> list[str] | str | None:
        """The ranking as written: a list (given), "measured", or None."""
        return self.config.get("generator_ranking")

    @property
    def ranking_source(self) -> str | None:
        """ "measured", "given" (a hand-written list) or None (no ranking)."""
        ranking = self.generator_ranking
        return MEASURED if ranking == MEASURED else ("given" if ranking else None)

    def selector_values(self, ranking: list[str] | None = None) -> dict[str, Any]:
        """``config`` with a measured ranking resolved to ``ranking`` (a placeholder until it is known)."""
        values = copy.deepcopy(self.config)
        if values.get("generator_ranking") == MEASURED:
            values["generator_ranking"] = list(ranking) if ranking else list(_MEASURED_PLACEHOLDER)
        return values

    def _check_selector_config(self, config_class: type) -> None:
        """``pairs.config``: a known ranking form, no strategy, and only the selector's config fields."""
        ranking_value = self.config.get("generator_ranking")
        if isinstance(ranking_value, str) and ranking_value != MEASURED:
            raise RecipeError(
                f"pairs.config.generator_ranking: expected {MEASURED!r} (rank generators by their IFEval "
                f"accuracy on the candidates) or a list of generator names, strongest first; got {ranking_value!r}"
            )
        if "strategy" in self.config:
            raise RecipeError("pairs.config: give strategies in pairs.strategies, not pairs.config.strategy")
        known = [f for f in config_fields(config_class) if f != "strategy"]
        for field in self.config:
            if field not in known:
                raise RecipeError(
                    f"pairs.config: unknown config field {field!r} for {config_class.__name__}; known fields: {known}"
                )

    def selection_configs(self, ranking: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """(strategy -> SelectionConfig, strategy -> why it is skipped).

        "all" takes every strategy whose config builds from ``pairs.config`` and skips the others (e.g.
        ``ds_fix`` without a generator ranking); a named strategy must build, or the recipe is invalid.
        ``ranking``: the measured generator ranking, when ``generator_ranking: measured`` (before it is
        known, a placeholder ranking validates the configs).
        """
        selection = importlib.import_module("hfpref.steps.selection")
        config_class = import_target(PAIR_SELECTOR).config_class
        self._check_selector_config(config_class)
        values = self.selector_values(ranking)
        configs: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        if self.strategies == ALL_STRATEGIES:
            for strategy in selection.STRATEGIES:
                try:
                    configs[strategy] = build_config(
                        config_class, {**values, "strategy": strategy}, f"pairs ({strategy})"
                    )
                except RecipeError as err:
                    skipped[strategy] = str(err.__cause__ or err)
            if not configs:
                raise RecipeError(f"pairs.config: no strategy accepts {self.config!r}")
            return configs, skipped
        for strategy in self.strategies:
            if strategy not in selection.STRATEGIES:
                raise RecipeError(
                    f"pairs.strategies: unknown strategy {strategy!r}; known: {', '.join(selection.STRATEGIES)}"
                )
            configs[strategy] = build_config(
                config_class, {**values, "strategy": strategy}, f"pairs ({strategy})"
            )
        return configs, skipped

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "strategies": self.strategies if isinstance(self.strategies, str) else list(self.strategies),
            "config": copy.deepcopy(self.config),
        }
        if self.makers:  # absent otherwise, so recipes without makers read and print as before
            out["makers"] = [m.to_dict() for m in self.makers]
        if self.mixes:
            out["mixes"] = [m.to_dict() for m in self.mixes]
        if self.sweeps:
            out["sweeps"] = [m.to_dict() for m in self.sweeps]
        if self.filters:
            out["filters"] = [m.to_dict() for m in self.filters]
        return out
