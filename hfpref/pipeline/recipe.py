"""Recipes: a YAML file naming an input, a chain of candidate-level steps, pair configs and an output.

A recipe looks like::

    description: IFEval prompts, GPT-4 vs text-bison, verifiable rewards
    input: {default: ifeval}            # or ifeval-2, or {default: ifeval, generators: [...]}
                                        # or {hub: ID, revision: SHA_OR_TAG, split: train, config: NAME}
                                        # or {path: FILE_OR_FOLDER}
    steps:                              # candidate-level steps, in order
      - step: IFEvalVerifier
        config: {reward: strict}
      - step: PairMetrics
        config: {tokenizer: null}
    pairs:
      strategies: [best_of_n2, max_margin, ds_fix]     # or "all"
      config: {seed: 0, generator_ranking: measured}  # or a list, strongest first: [gpt-4-20231107, ...]
      makers:                           # optional: pair-making steps, one release config each
        - {name: rs_high_contrast, step: ContrastPairs, config: {mode: high}}
        - {name: rs_low_contrast, step: ContrastPairs, config: {mode: low}}
        - {name: mcts_pairs, step: MCTSPairGenerator, config: {model: M}, source: prompts}
      mixes:                            # optional: hfpref.steps.contrast.mix_contrast over maker configs
        - {name: rs_mixed, from: [rs_high_contrast, rs_low_contrast], ratio_high: 0.5, size: null}
      sweeps:                           # optional: generator-delta sweeps (hfpref.steps.delta_sweep)
        - {name: qwen_scale, chosen: qwen2.5-32b-instruct, rejected: [qwen2.5-7b-instruct, ...],
           size: null, seed: 0, capabilities: measured, steps: [{step: QualityJudge, config: ...}]}
      filters:                          # optional: sample-delta filters over any pair config
        - {name: qwen_scale_top25, from: qwen_scale-vs-qwen2.5-7b-instruct, top_fraction: 0.25}
    output:
      folder: hfpref-release
      name: hfpref-ifeval-two-generators
      version: 0.1.0
      push_to_hub: {repo_id: ORG/NAME}  # optional

``generator_ranking: measured`` ranks the generators by their strict IFEval accuracy on the candidates
(``hfpref.steps.capabilities``), computed after the steps ran and passed to every strategy (``ds_fix``, the
"stronger chosen" share); a list is a ranking given by hand. The card says which it was.

Every pair strategy, maker and mix becomes one release config, named by the strategy or by ``name``:

* a *strategy* is ``hfpref.steps.selection.PairSelector`` with ``pairs.config`` and that strategy, run over the
  annotated candidates (at most one pair per prompt);
* a *maker* is any registered step that changes the row count and writes ``drop_reason`` (a pair maker
  such as ``ContrastPairs`` or ``MCTSPairGenerator``), mapped by the engine like the steps (cached,
  resumable) over its ``source``: ``candidates`` (default: the output of the last step) or ``prompts``:
  the rows as they were *before the first step that writes* ``responses`` (the output of the steps before
  it, e.g. of ``ConstrainedPrompts`` when ``ResponseSampler`` comes next), for makers that answer the
  prompts themselves (MCTS); ``batch_size`` / ``num_proc`` as for steps;
* a *mix* draws ``hfpref.steps.contrast.mix_contrast(pairs, ratio_high, size, seed, stratify=, allow_short=)``
  from the kept pairs of the maker configs named in ``from`` (concatenated in that order; each must
  write ``contrast_level``); ``size: null`` takes the largest size the pairs allow
  (``largest_mix_size``), recorded in the manifest, and a mix with nothing to draw from is skipped.

* a *sweep* makes one config per rejected generator, ``<name>-vs-<generator>``, all on the same drawn
  prompts, chosen = the ``chosen`` generator's response (``hfpref.steps.delta_sweep``), tagged with measured (or
  given) capabilities and generator delta; its ``steps`` (pair-level, e.g. ``QualityJudge``) run on every
  level;
* a *filter* keeps the pairs of another config (any kind, run before it) by ``sample_delta``
  (``top_fraction`` or ``threshold``, ``hfpref.steps.judges.quality.filter_by_sample_delta``).

Drop reasons of strategies and makers are counted alike (``hfpref.steps.selection.split_dropped``).

Step names resolve through ``STEP_REGISTRY`` (name -> "module:Class" strings), so a step's module,
and whatever heavy library it needs, is imported only when a recipe names it.

``Recipe.run`` maps each step with an engine (``hfpref.pipeline.engines``; by default ``Dataset.map`` in this
process): every step's output is ``datasets`` cache files keyed by the input's fingerprint and the
step's, written shard by shard (``hfpref.pipeline.resume``), so rerunning a finished recipe is all cache hits and
a run stopped part-way (crash, Ctrl-C, kill) resumes from the last finished shard of the step it was in.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core import registry
from hfpref.core.errors import UserError
from hfpref.core.registry import STEP_REGISTRY, import_target, register_step  # noqa: F401 (re-exported)
from hfpref.core.step import ROW_ERROR
from hfpref.pipeline.resume import DEFAULT_SHARD_ROWS
from hfpref.steps.chat_prompts import check_prompt_forms, prompt_form_of_feature

PAIR_SELECTOR = "hfpref.steps.selection:PairSelector"
# strategies whose score is p_Δ alone (hfpref.steps.selection drops every row without ref_logps for them): a run
# without a reference model skips them instead of writing empty configs. Spelled out here so that reading
# a recipe does not import hfpref.steps.selection; tests/test_recipe.py checks it against selection's own list.
STRATEGIES_NEEDING_REF_LOGPS = ("dcrm_no_edit", "logp_only")
DEFAULT_INPUTS = ("ifeval", "ifeval-2")  # hfpref.pipeline.default_data.NAMED_INPUTS (tests check they agree)
# pairs.config.generator_ranking: "measured" ranks the generators by their IFEval accuracy on the candidates
# (hfpref.steps.capabilities), computed after the steps ran; a list is a ranking given by hand
MEASURED = "measured"
_MEASURED_PLACEHOLDER = ["(measured after the steps)"]  # stands in for the ranking while validating
ALL_STRATEGIES = "all"
# the release config of the annotated candidates: no strategy, maker or mix may take its name
CANDIDATES_CONFIG = "candidates"
MAKER_SOURCES = ("candidates", "prompts")
MIX_FUNCTION = "hfpref.steps.contrast.mix_contrast"
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name under data/ and a config name

_TOP_LEVEL_KEYS = ("description", "input", "steps", "pairs", "output")
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([-+][0-9A-Za-z.]+)?$")


class RecipeError(UserError):
    """A recipe that cannot run as written; the message says where and what is wrong."""


def step_class(name: str, where: str = "steps") -> type:
    return registry.step_class(name, where, RecipeError)


def build_config(config_class: type, values: Mapping[str, Any], where: str) -> Any:
    return registry.build_config(config_class, values, where, RecipeError)


def _config_fields(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class)]


def _check_keys(mapping: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {unknown}; allowed: {list(allowed)}")


def _as_mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _as_list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return value


def _check_map_settings(raw: Mapping[str, Any], where: str) -> None:
    """``batch_size`` and ``num_proc`` of a step or maker: a positive int or absent/null."""
    for key in ("batch_size", "num_proc"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            hint = " (write the number without quotes)" if isinstance(value, str) and value.isdigit() else ""
            raise RecipeError(
                f"{where}.{key}: expected a positive int or null, got {type(value).__name__} {value!r}{hint}"
            )


# ---- the recipe's parts ------------------------------------------------------------------------------


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
        raw = _as_mapping(raw, where)
        _check_keys(raw, tuple(f.name for f in dataclasses.fields(cls)), where)
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
        raw = _as_mapping(raw, where)
        _check_keys(raw, ("step", "config", "batch_size", "num_proc"), where)
        if "step" not in raw:
            raise RecipeError(f"{where}: missing 'step' (one of: {', '.join(sorted(STEP_REGISTRY))})")
        config = _as_mapping(raw.get("config"), f"{where} ({raw['step']}).config")
        _check_map_settings(raw, f"{where} ({raw['step']})")
        return cls(
            step=str(raw["step"]),
            config=config,
            batch_size=raw.get("batch_size"),
            num_proc=raw.get("num_proc"),
        )

    def where(self, index: int) -> str:
        return f"steps[{index}] ({self.step})"

    def build(self, index: int):
        cls = step_class(self.step, self.where(index))
        return cls(build_config(cls.config_class, self.config, self.where(index)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "config": copy.deepcopy(self.config)}
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.num_proc is not None:
            out["num_proc"] = self.num_proc
        return out


def _check_config_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _CONFIG_NAME_RE.match(name):
        raise RecipeError(
            f"{where}.name: expected a config name (letters, digits, '_', '-', '.'; not starting with "
            f"'_', '-' or '.'), got {name!r}"
        )
    if name == CANDIDATES_CONFIG:
        raise RecipeError(f"{where}.name: {CANDIDATES_CONFIG!r} is the release's candidates config")
    return name


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
        raw = _as_mapping(raw, where)
        _check_keys(raw, tuple(f.name for f in dataclasses.fields(cls)), where)
        for required in ("name", "step"):
            if required not in raw:
                raise RecipeError(f"{where}: missing '{required}'")
        name = _check_config_name(raw["name"], where)
        _check_map_settings(raw, f"{where} ({name})")
        source = raw.get("source", "candidates")
        if source not in MAKER_SOURCES:
            raise RecipeError(
                f"{where} ({name}).source: expected one of {list(MAKER_SOURCES)}, got {source!r}"
            )
        return cls(
            name=name,
            step=str(raw["step"]),
            config=_as_mapping(raw.get("config"), f"{where} ({name}).config"),
            source=source,
            batch_size=raw.get("batch_size"),
            num_proc=raw.get("num_proc"),
        )

    def where(self, index: int) -> str:
        return f"pairs.makers[{index}] ({self.name}: {self.step})"

    def build(self, index: int):
        """The step, after checking that it makes pairs rows (row count changes, ``drop_reason`` written)."""
        cls = step_class(self.step, self.where(index))
        step = cls(build_config(cls.config_class, self.config, self.where(index)))
        if not getattr(cls, "changes_row_count", False) or C.DROP_REASON not in step.output_columns():
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
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.num_proc is not None:
            out["num_proc"] = self.num_proc
        return out


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
        raw = _as_mapping(raw, where)
        allowed = ("name", "from", "ratio_high", "size", "seed", "stratify", "allow_short")
        _check_keys(raw, allowed, where)
        for required in ("name", "from"):
            if required not in raw:
                raise RecipeError(f"{where}: missing '{required}'")
        name = _check_config_name(raw["name"], where)
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
    sweeps: list[Any] = dataclasses.field(default_factory=list)  # hfpref.steps.delta_sweep.SweepSpec
    filters: list[Any] = dataclasses.field(default_factory=list)  # hfpref.steps.delta_sweep.FilterSpec

    @classmethod
    def from_dict(cls, raw: Any) -> PairsSpec:
        where = "pairs"
        raw = _as_mapping(raw, where)
        _check_keys(raw, ("strategies", "config", "makers", "mixes", "sweeps", "filters"), where)
        sweeps_raw = _as_list(raw.get("sweeps"), "pairs.sweeps")
        filters_raw = _as_list(raw.get("filters"), "pairs.filters")
        sweeps, filters = [], []
        if sweeps_raw or filters_raw:
            from hfpref.steps.delta_sweep import FilterSpec, SweepSpec

            sweeps = [SweepSpec.from_dict(x, i) for i, x in enumerate(sweeps_raw)]
            filters = [FilterSpec.from_dict(x, i) for i, x in enumerate(filters_raw)]
        makers = [
            MakerSpec.from_dict(m, i) for i, m in enumerate(_as_list(raw.get("makers"), "pairs.makers"))
        ]
        mixes = [MixSpec.from_dict(m, i) for i, m in enumerate(_as_list(raw.get("mixes"), "pairs.mixes"))]
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
            config=_as_mapping(raw.get("config"), f"{where}.config"),
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
        raw = _as_mapping(raw, where)
        _check_keys(raw, ("repo_id", "revision", "private"), where)
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
        raw = _as_mapping(raw, where)
        _check_keys(raw, tuple(f.name for f in dataclasses.fields(cls)), where)
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


def check_version(version: str, where: str = "version") -> str:
    if not _VERSION_RE.match(version):
        raise RecipeError(f"{where}: {version!r} is not a version like 0.1.0 (it becomes the tag v{version})")
    return version


# ---- the recipe --------------------------------------------------------------------------------------


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


@dataclasses.dataclass
class Recipe:
    input: InputSpec
    steps: list[StepSpec]
    pairs: PairsSpec
    output: OutputSpec
    description: str = ""
    source: str | None = None  # the file it was read from, for error messages and the card

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None, validate: bool = True) -> Recipe:
        try:
            raw = _as_mapping(raw, "recipe")
            _check_keys(raw, _TOP_LEVEL_KEYS, "recipe")
            for required in ("input", "pairs"):
                if required not in raw:
                    raise RecipeError(f"recipe: missing '{required}'")
            steps_raw = raw.get("steps") or []
            if not isinstance(steps_raw, list):
                raise RecipeError(
                    f"steps: expected a list of {{step: NAME, config: {{...}}}}, got {steps_raw!r}"
                )
            recipe = cls(
                input=InputSpec.from_dict(raw["input"]),
                steps=[StepSpec.from_dict(s, i) for i, s in enumerate(steps_raw)],
                pairs=PairsSpec.from_dict(raw["pairs"]),
                output=OutputSpec.from_dict(raw.get("output")),
                description=str(raw.get("description") or ""),
                source=source,
            )
            if validate:
                recipe.validate()
        except RecipeError as err:
            if source:
                raise RecipeError(f"recipe {source}: {err}") from None
            raise
        return recipe

    @classmethod
    def from_yaml(cls, path: str | Path, validate: bool = True) -> Recipe:
        return cls.from_dict(read_recipe_yaml(path, RecipeError), source=str(path), validate=validate)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        out["input"] = self.input.to_dict()
        out["steps"] = [s.to_dict() for s in self.steps]
        out["pairs"] = self.pairs.to_dict()
        out["output"] = self.output.to_dict()
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    # ---- validation ----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check step names, config fields and values, and strategy names against the registry.

        Imports each named step's module (not its models: those load on first use), never the network.
        """
        steps = [spec.build(index) for index, spec in enumerate(self.steps)]
        configs, _ = self.selection_configs()
        self.check_pair_configs(list(configs), self.build_makers(steps))
        for index, sweep in enumerate(self.pairs.sweeps):
            sweep.build_steps(index)

    def prompts_index(self, steps: list[Any]) -> int | None:
        """The index of the first step that writes ``responses``: a maker's "prompts" source is the rows
        that step receives (the input after the steps before it). None when no step writes responses."""
        for index, step in enumerate(steps):
            if C.RESPONSES in step.output_columns():
                return index
        return None

    def build_makers(self, steps: list[Any]) -> list[Any]:
        """The makers' steps, after checking that a "prompts" source exists."""
        makers = [spec.build(index) for index, spec in enumerate(self.pairs.makers)]
        for index, spec in enumerate(self.pairs.makers):
            if spec.source == "prompts" and self.prompts_index(steps) is None:
                raise RecipeError(
                    f"{spec.where(index)}.source: 'prompts' are the rows before the first step that writes "
                    f"{C.RESPONSES!r}, and no step does; use source: candidates to run on the steps' output"
                )
        return makers

    def check_pair_configs(self, strategies: list[str], makers: list[Any]) -> None:
        """Config names are unique; every mix draws from maker configs that write ``contrast_level``."""
        taken = {name: f"pairs.strategies ({name})" for name in strategies}
        for index, spec in enumerate(self.pairs.makers):
            if spec.name in taken:
                raise RecipeError(
                    f"{spec.where(index)}: config name {spec.name!r} is taken by {taken[spec.name]}"
                )
            taken[spec.name] = spec.where(index)
        maker_steps = {spec.name: step for spec, step in zip(self.pairs.makers, makers, strict=True)}
        if self.pairs.mixes:
            from hfpref.steps.contrast import CONTRAST_LEVEL
        for index, mix in enumerate(self.pairs.mixes):
            where = f"pairs.mixes[{index}] ({mix.name})"
            if mix.name in taken:
                raise RecipeError(f"{where}: config name {mix.name!r} is taken by {taken[mix.name]}")
            taken[mix.name] = where
            for name in mix.from_:
                if name in maker_steps:
                    if CONTRAST_LEVEL not in maker_steps[name].output_columns():
                        raise RecipeError(
                            f"{where}.from: maker config {name!r} ({type(maker_steps[name]).__name__}) writes no "
                            f"{CONTRAST_LEVEL!r} column, which mix_contrast draws by"
                        )
                    continue
                what = (
                    "a pair strategy, whose pairs have no contrast level"
                    if name in strategies
                    else "another mix"
                    if name in taken
                    else "not a config of this recipe"
                )
                raise RecipeError(
                    f"{where}.from: {name!r} is {what}; a mix draws from maker configs: {list(maker_steps)}"
                )
        for index, sweep in enumerate(self.pairs.sweeps):
            for level in sweep.level_names():
                if level in taken:
                    raise RecipeError(
                        f"{sweep.where(index)}: level config {level!r} is taken by {taken[level]}; rename the sweep"
                    )
                taken[level] = sweep.where(index)
        for index, spec in enumerate(self.pairs.filters):
            if spec.name in taken:
                raise RecipeError(
                    f"{spec.where(index)}: config name {spec.name!r} is taken by {taken[spec.name]}"
                )
            if spec.from_ not in taken:
                raise RecipeError(
                    f"{spec.where(index)}.from: {spec.from_!r} is not a config made before it; configs: {list(taken)}"
                )
            taken[spec.name] = spec.where(index)

    def selection_configs(self, ranking: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """(strategy -> SelectionConfig, strategy -> why it is skipped).

        "all" takes every strategy whose config builds from ``pairs.config`` and skips the others (e.g.
        ``ds_fix`` without a generator ranking); a named strategy must build, or the recipe is invalid.
        ``ranking``: the measured generator ranking, when ``generator_ranking: measured`` (before it is
        known, a placeholder ranking validates the configs).
        """
        selection = importlib.import_module("hfpref.steps.selection")
        config_class = import_target(PAIR_SELECTOR).config_class
        ranking_value = self.pairs.config.get("generator_ranking")
        if isinstance(ranking_value, str) and ranking_value != MEASURED:
            raise RecipeError(
                f"pairs.config.generator_ranking: expected {MEASURED!r} (rank generators by their IFEval "
                f"accuracy on the candidates) or a list of generator names, strongest first; got {ranking_value!r}"
            )
        values = self.pairs.selector_values(ranking)
        if "strategy" in self.pairs.config:
            raise RecipeError("pairs.config: give strategies in pairs.strategies, not pairs.config.strategy")
        known = [f for f in _config_fields(config_class) if f != "strategy"]
        for field in self.pairs.config:
            if field not in known:
                raise RecipeError(
                    f"pairs.config: unknown config field {field!r} for {config_class.__name__}; known fields: {known}"
                )
        configs: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        if self.pairs.strategies == ALL_STRATEGIES:
            for strategy in selection.STRATEGIES:
                try:
                    configs[strategy] = build_config(
                        config_class, {**values, "strategy": strategy}, f"pairs ({strategy})"
                    )
                except RecipeError as err:
                    skipped[strategy] = str(err.__cause__ or err)
            if not configs:
                raise RecipeError(f"pairs.config: no strategy accepts {self.pairs.config!r}")
            return configs, skipped
        for strategy in self.pairs.strategies:
            if strategy not in selection.STRATEGIES:
                raise RecipeError(
                    f"pairs.strategies: unknown strategy {strategy!r}; known: {', '.join(selection.STRATEGIES)}"
                )
            configs[strategy] = build_config(
                config_class, {**values, "strategy": strategy}, f"pairs ({strategy})"
            )
        return configs, skipped

    def preflight(self, steps: list[Any], input_columns: list[str], stop: int | None = None) -> list[str]:
        """Check every step's input columns against the input's plus earlier steps' outputs; return the
        columns the candidates will have after the last step (after ``steps[:stop]`` when given)."""
        columns = list(input_columns)
        for index, (spec, step) in enumerate(zip(self.steps[:stop], steps[:stop], strict=True)):
            missing = [c for c in step.input_columns() if c not in columns]
            if missing:
                raise RecipeError(
                    f"{spec.where(index)}: needs column(s) {missing}, which neither the input nor an earlier "
                    f"step provides; columns available: {columns}"
                )
            columns += [c for c in step.output_columns() if c not in columns]
        return columns

    def preflight_run(self, steps: list[Any], makers: list[Any]) -> None:
        """Checks before the first step (``hfpref.pipeline.preflight``): the input file reads line by line with one
        prompt form, the output folder can be written, and each step's own ``preflight`` (a model step's
        ``max_length`` against the model's positions) passes, each error naming its step."""
        from hfpref.pipeline.preflight import check_input_file, check_output_folder

        if self.input.path is not None and Path(self.input.path).exists():
            renamed_to_prompt = [old for old, new in (self.input.rename or {}).items() if new == C.PROMPT]
            check_input_file(self.input.path, renamed_to_prompt[0] if renamed_to_prompt else C.PROMPT)
        check_output_folder(self.output.folder, "output.folder")
        named = [(spec.where(i), step) for i, (spec, step) in enumerate(zip(self.steps, steps, strict=True))]
        named += [
            (spec.where(i), m) for i, (spec, m) in enumerate(zip(self.pairs.makers, makers, strict=True))
        ]
        for where, step in named:
            try:
                step.preflight()
            except UserError as err:
                raise RecipeError(f"{where}: {err}") from err

    def preflight_makers(self, makers: list[Any], columns_by_source: Mapping[str, list[str]]) -> None:
        """Check every maker's input columns against its source's columns."""
        for index, (spec, maker) in enumerate(zip(self.pairs.makers, makers, strict=True)):
            columns = columns_by_source[spec.source]
            missing = [c for c in maker.input_columns() if c not in columns]
            if missing:
                raise RecipeError(
                    f"{spec.where(index)}: needs column(s) {missing}, which its source ({spec.source}) lacks; "
                    f"columns available: {columns}"
                )

    def preflight_measured_ranking(self, columns: list[str]) -> None:
        """``generator_ranking: measured`` needs generators and IFEval verdicts (or correctness)."""
        if self.pairs.ranking_source != MEASURED:
            return
        if C.GENERATORS not in columns or not ({C.IFEVAL_STRICT, C.CORRECTNESS} & set(columns)):
            raise RecipeError(
                f"pairs.config.generator_ranking: 'measured' ranks generators by their IFEval accuracy, which "
                f"needs {C.GENERATORS!r} and {C.IFEVAL_STRICT!r} or {C.CORRECTNESS!r} (an IFEvalVerifier step); "
                f"the candidates will have {columns}; give a ranking as a list instead"
            )

    def unservable_strategies(self, strategies: list[str], column_names: list[str]) -> dict[str, str]:
        """strategy -> what the candidates lack for it (an input column, or p_Δ's reference log-probs)."""
        reasons = {}
        selector_class = import_target(PAIR_SELECTOR)
        for strategy in strategies:
            selector = selector_class(strategy=strategy, **self.pairs.selector_values())
            missing = [c for c in selector.input_columns() if c not in column_names]
            if missing:
                reasons[strategy] = f"needs column(s) {missing}, which the candidates lack"
            elif strategy in STRATEGIES_NEEDING_REF_LOGPS and C.REF_LOGPS not in column_names:
                reasons[strategy] = (
                    "needs p_Δ: no reference-model log-probs (ref_logps); add a LogProbAnnotator step"
                )
        return reasons

    # ---- overrides (the command line) ----------------------------------------------------------------
    def with_overrides(
        self,
        *,
        input: InputSpec | None = None,
        strategies: list[str] | str | None = None,
        tokenizer: str | None = None,
        folder: str | None = None,
        version: str | None = None,
        push_to_hub: PushSpec | None = None,
    ) -> Recipe:
        """A copy with command-line overrides applied (and validated)."""
        raw = self.to_dict()
        if input is not None:
            raw["input"] = input.to_dict()
        if strategies is not None:
            # "all" stays a string: list("all") would be the strategies 'a', 'l', 'l'
            raw["pairs"]["strategies"] = strategies if isinstance(strategies, str) else list(strategies)
        if tokenizer is not None:
            metric_steps = [s for s in raw["steps"] if s["step"] == "PairMetrics"]
            if not metric_steps:
                raise RecipeError("--tokenizer: the recipe has no PairMetrics step to give a tokenizer to")
            for spec in metric_steps:
                # e_Δ's unit, under the spelling the recipe uses (``tokenizer`` is the older one)
                if "edit_distance_unit" in spec["config"]:
                    spec["config"].pop("tokenizer", None)
                    spec["config"]["edit_distance_unit"] = tokenizer
                else:
                    spec["config"]["tokenizer"] = tokenizer
        if folder is not None:
            raw["output"]["folder"] = folder
        if version is not None:
            raw["output"]["version"] = version
        if push_to_hub is not None:
            raw["output"]["push_to_hub"] = dataclasses.asdict(push_to_hub)
        return Recipe.from_dict(raw, source=self.source)

    # ---- running -------------------------------------------------------------------------------------
    def load_input(self, cache_dir: str | Path | None = None):
        """(candidates dataset, description of the input for the card and manifest)."""
        return load_input(self.input, cache_dir=cache_dir)

    def run(
        self,
        *,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        num_proc: int | None = None,
        progress: bool = True,
        gpus: int | None = None,
        shard_rows: int | None = DEFAULT_SHARD_ROWS,
        engine: Any = None,
    ) -> RecipeResult:
        """Run the steps, then every pair strategy, maker and mix; finished steps and makers are reused
        from the cache.

        ``engine``: where steps run (``hfpref.pipeline.engines``); by default this process, with model steps in
        ``gpus`` worker processes (one per GPU) when given, and every step in resumable shards of
        ``shard_rows`` rows, so a run killed mid-step resumes from its last finished shard.
        """
        import datasets
        from tqdm.auto import tqdm

        from hfpref.pipeline.engines.local import LocalEngine

        if engine is None:
            engine = LocalEngine(gpus=gpus, shard_rows=shard_rows)
        selection = importlib.import_module("hfpref.steps.selection")
        selector_class = import_target(PAIR_SELECTOR)
        steps = [spec.build(i) for i, spec in enumerate(self.steps)]
        configs, skipped = self.selection_configs()
        makers = self.build_makers(steps)
        self.check_pair_configs(list(configs), makers)
        uses_prompts = any(spec.source == "prompts" for spec in self.pairs.makers)
        prompts_at = self.prompts_index(steps) if uses_prompts else None
        self.preflight_run(steps, makers)

        quiet = contextlib.nullcontext() if progress else _datasets_progress_off(datasets)
        with quiet:
            candidates, input_info = self.load_input(cache_dir)
            # preflight: a missing column fails now, not after hours of earlier (model) steps
            columns = self.preflight(steps, candidates.column_names)
            # and prompts a model step cannot format (chat messages for a model without a chat template)
            check_prompt_forms(
                steps,
                [spec.where(i) for i, spec in enumerate(self.steps)],
                prompt_form_of_feature(candidates.features.get(C.PROMPT)),
            )
            columns_by_source = {"candidates": columns}
            if prompts_at is not None:
                columns_by_source["prompts"] = self.preflight(steps, candidates.column_names, stop=prompts_at)
            self.preflight_makers(makers, columns_by_source)
            self.preflight_measured_ranking(columns)
            unservable = self.unservable_strategies(list(configs), columns)
            if unservable and self.pairs.strategies != ALL_STRATEGIES:
                listed = "; ".join(f"{k}: {v}" for k, v in unservable.items())
                raise RecipeError(
                    f"pairs.strategies: these strategies cannot run on the candidates: {listed}"
                )
            skipped.update(unservable)
            total = len(steps) + len(configs) + len(makers) + len(self.pairs.mixes)
            bar = tqdm(total=total, desc="recipe", unit="step", disable=not progress)
            with bar:
                step_rows: list[dict[str, int]] = []
                prompts = None
                for index, (spec, step) in enumerate(zip(self.steps, steps, strict=True)):
                    if index == prompts_at:
                        prompts = candidates  # the rows before the first step that writes responses
                    bar.set_postfix_str(spec.step)
                    rows_in = len(candidates)
                    candidates = engine.map_step(
                        step,
                        candidates,
                        batch_size=spec.batch_size or batch_size,
                        num_proc=spec.num_proc if spec.num_proc is not None else num_proc,
                    )
                    rows = {"rows_in": rows_in, "rows_out": len(candidates)}
                    if ROW_ERROR in candidates.column_names:  # rows a step dropped (on_row_error: drop)
                        rows["row_errors"] = sum(m is not None for m in candidates[ROW_ERROR])
                    step_rows.append(rows)
                    step.unload()  # its models' memory goes to the next step (a later use loads again)
                    bar.update(1)
                pairs: dict[str, Any] = {}
                dropped: dict[str, Counter] = {}
                accuracy = ranking = None
                if self.pairs.ranking_source == MEASURED:
                    # the ranking ds_fix and "stronger chosen" use comes from the candidates themselves
                    from hfpref.steps.capabilities import generator_accuracy
                    from hfpref.steps.capabilities import ranking as rank_generators

                    accuracy = generator_accuracy(candidates)
                    ranking = rank_generators(accuracy)
                    configs, _ = self.selection_configs(ranking)
                elif self.pairs.ranking_source == "given":
                    ranking = list(self.pairs.generator_ranking)
                selectors = {s: selector_class(c) for s, c in configs.items() if s not in skipped}
                bar.update(len(configs) - len(selectors))
                bar.set_postfix_str("pairs")
                for strategy, selected in engine.select_pairs(
                    selectors, candidates, batch_size=batch_size, num_proc=num_proc
                ):
                    kept, reasons = selection.split_dropped(selected)
                    pairs[strategy] = kept
                    dropped[strategy] = Counter(reasons)
                    bar.update(1)
                made_by: dict[str, Any] = dict(selectors)
                for spec, maker in zip(self.pairs.makers, makers, strict=True):
                    bar.set_postfix_str(spec.name)
                    selected = engine.map_step(
                        maker,
                        prompts if spec.source == "prompts" else candidates,
                        batch_size=spec.batch_size or batch_size,
                        num_proc=spec.num_proc if spec.num_proc is not None else num_proc,
                    )
                    kept, reasons = selection.split_dropped(selected)
                    pairs[spec.name] = kept
                    dropped[spec.name] = Counter(reasons)
                    made_by[spec.name] = maker
                    bar.update(1)
                if accuracy is not None:
                    tag_generator_delta(pairs, accuracy)
                for index, mix in enumerate(self.pairs.mixes):
                    bar.set_postfix_str(mix.name)
                    mixed = self.run_mix(index, pairs)
                    if isinstance(mixed, str):
                        skipped[mix.name] = mixed
                    else:
                        pairs[mix.name], made_by[mix.name] = mixed
                        dropped[mix.name] = Counter()
                    bar.update(1)
                sweeps = self.run_sweeps(candidates, pairs, dropped, made_by, engine, batch_size, num_proc)
                filters = self.run_filters(pairs, dropped, made_by, skipped)
        return RecipeResult(
            recipe=self,
            candidates=candidates,
            steps=steps,
            pairs=pairs,
            dropped=dropped,
            selectors=made_by,
            input_info=input_info,
            skipped_strategies=skipped,
            step_rows=step_rows,
            resolved_ranking=ranking,
            generator_accuracy=accuracy,
            sweeps=sweeps,
            filters=filters,
        )

    def run_sweeps(
        self,
        candidates: Any,
        pairs: dict[str, Any],
        dropped: dict[str, Counter],
        made_by: dict[str, Any],
        engine: Any,
        batch_size: int,
        num_proc: int | None,
    ) -> dict[str, dict[str, Any]]:
        """Every sweep's level configs into ``pairs`` (see ``hfpref.steps.delta_sweep``); per sweep, what the
        manifest records: capabilities (measured or given), the plan, and the analysis table."""
        from hfpref.steps.delta_sweep import SweepRecord, level_pairs, plan_sweep, sweep_analysis
        from hfpref.steps.generator_delta import measure_capabilities

        out: dict[str, dict[str, Any]] = {}
        for index, sweep in enumerate(self.pairs.sweeps):
            steps = sweep.build_steps(index)
            if sweep.capabilities == MEASURED:
                try:
                    table = measure_capabilities(candidates, measure=sweep.measure)
                except UserError as err:
                    raise RecipeError(f"{sweep.where(index)}.capabilities: {err}") from err
            else:
                table = {
                    "source": "given",
                    "capability_name": "capability",
                    "capabilities": dict(sweep.capabilities),
                }
            plan = plan_sweep(
                candidates, name=sweep.name, chosen=sweep.chosen, rejected=sweep.rejected, size=sweep.size,
                seed=sweep.seed, level_names=sweep.level_names(),
            )  # fmt: skip
            missing = [g for g in [sweep.chosen, *sweep.rejected] if g not in table["capabilities"]]
            if missing:
                raise RecipeError(f"{sweep.where(index)}: no capability measured for {missing}")
            levels = {}
            for level in plan.levels:
                level_data = level_pairs(candidates, plan, level, table["capabilities"])
                for step in steps:
                    level_data = engine.map_step(step, level_data, batch_size=batch_size, num_proc=num_proc)
                levels[level.name] = pairs[level.name] = level_data
                reasons = {k: v for k, v in plan.excluded.items() if v}
                if plan.common > len(plan.rows):
                    reasons["not_drawn"] = plan.common - len(plan.rows)
                dropped[level.name] = Counter(reasons)
                made_by[level.name] = SweepRecord(sweep, level.name, level.rejected, steps)
            out[sweep.name] = {
                "chosen": sweep.chosen,
                "levels": {level.name: level.rejected for level in plan.levels},
                "prompts_common": plan.common,
                "prompts_drawn": len(plan.rows),
                "excluded": dict(plan.excluded),
                "size": sweep.size,
                "seed": sweep.seed,
                "capabilities": table,
                "analysis": sweep_analysis(levels),
            }
        return out

    def run_filters(
        self,
        pairs: dict[str, Any],
        dropped: dict[str, Counter],
        made_by: dict[str, Any],
        skipped: dict[str, str],
    ) -> dict[str, dict[str, Any]]:
        """Every sample-delta filter's config into ``pairs``; per filter, how much of its source it kept."""
        from hfpref.steps.delta_sweep import FilterRecord
        from hfpref.steps.judges.quality import filter_by_sample_delta

        out: dict[str, dict[str, Any]] = {}
        for index, spec in enumerate(self.pairs.filters):
            source = pairs.get(spec.from_)
            if source is None:
                skipped[spec.name] = f"its source config {spec.from_!r} was not made"
                continue
            if spec.column not in source.column_names:
                raise RecipeError(
                    f"{spec.where(index)}.column: config {spec.from_!r} has no {spec.column!r} column (add a "
                    f"QualityJudge to the steps that make it); its columns: {source.column_names}"
                )
            kept, report = filter_by_sample_delta(
                source,
                **{
                    k: v
                    for k, v in spec.arguments().items()
                    if k in ("top_fraction", "threshold") and v is not None
                },
                column=spec.column,
            )
            pairs[spec.name] = kept
            dropped[spec.name] = Counter({k: v for k, v in report.items() if k != "kept" and v})
            made_by[spec.name] = FilterRecord(spec)
            out[spec.name] = {
                "from": spec.from_,
                **spec.arguments(),
                "source_rows": len(source),
                "kept": report["kept"],
                "kept_fraction": report["kept"] / len(source) if len(source) else None,
                "dropped": {k: v for k, v in report.items() if k != "kept"},
            }
        return out

    def run_mix(self, index: int, pairs: Mapping[str, Any]) -> tuple[Any, MixRecord] | str:
        """(mixed pairs, how they were drawn) for ``pairs.mixes[index]``, or why it was skipped."""
        import datasets

        from hfpref.steps.contrast import MixError, largest_mix_size, mix_contrast

        mix = self.pairs.mixes[index]
        where = f"pairs.mixes[{index}] ({mix.name})"
        try:
            pool = datasets.concatenate_datasets([pairs[name] for name in mix.from_])
        except ValueError as err:  # e.g. makers whose pairs have different columns
            raise RecipeError(f"{where}: cannot concatenate the pairs of {mix.from_}: {err}") from err
        size = mix.size if mix.size is not None else largest_mix_size(pool, mix.ratio_high)
        if size == 0:
            return f"no high- and low-contrast pairs to mix at ratio_high={mix.ratio_high} in {mix.from_}"
        try:
            mixed = mix_contrast(pool, **mix.arguments(size))
        except (MixError, ValueError) as err:
            raise RecipeError(f"{where}: {err}") from err
        return mixed, MixRecord(mix, size)


def tag_generator_delta(pairs: dict[str, Any], accuracy: list[dict[str, Any]]) -> None:
    """Tag every pairs config that names its generators with ``GeneratorDeltaTagger``, the capabilities being
    the measured prompt-level IFEval accuracies (``accuracy``, the very numbers of the measured ranking the
    card shows); a generator without a measurement gets no delta. Configs already tagged are left as they are."""
    from hfpref.steps.generator_delta import GENERATOR_DELTA, GeneratorDeltaTagger, capabilities_config

    table = {
        "measure": "ifeval_prompt_level",
        "capability_name": "ifeval_prompt_level_strict_accuracy",
        "capabilities": {a["generator"]: a["prompt_level"] for a in accuracy},
        "intervals": {a["generator"]: a["prompt_level_ci"] for a in accuracy},
    }
    tagger = GeneratorDeltaTagger(capabilities_config(table, on_unknown="missing"))
    for name, data in pairs.items():
        names = data.column_names
        if C.CHOSEN_GENERATOR in names and C.REJECTED_GENERATOR in names and GENERATOR_DELTA not in names:
            pairs[name] = tagger.apply(data)


@dataclasses.dataclass
class RecipeResult:
    """What a run produced: annotated candidates, kept pairs and drop counts per strategy, the steps run."""

    recipe: Recipe
    candidates: Any  # datasets.Dataset
    steps: list[Any]
    pairs: dict[str, Any]  # config (strategy, maker or mix name) -> datasets.Dataset of kept pairs
    dropped: dict[str, Counter]  # config -> drop reason -> count
    selectors: dict[str, Any]  # config -> what made it (anything with describe(): a step, a MixRecord)
    input_info: dict[str, Any]
    skipped_strategies: dict[str, str] = dataclasses.field(default_factory=dict)
    step_rows: list[dict[str, int]] = dataclasses.field(default_factory=list)  # rows in/out of each step
    resolved_ranking: list[str] | None = None  # the ranking the selectors used (measured or given)
    generator_accuracy: list[dict[str, Any]] | None = None  # hfpref.steps.capabilities, when measured
    sweeps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # Recipe.run_sweeps
    filters: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # Recipe.run_filters

    @property
    def generator_ranking(self) -> list[str] | None:
        """Generator names, strongest first, as the selectors used them (measured or given)."""
        if self.resolved_ranking is not None:
            return self.resolved_ranking
        given = self.recipe.pairs.generator_ranking
        return list(given) if isinstance(given, list) else None

    @property
    def ranking_source(self) -> str | None:
        return self.recipe.pairs.ranking_source if self.generator_ranking else None

    def edit_distance_unit(self) -> str | None:
        """ "word" or "token:<id>@<rev>", as the pair-metrics step wrote it (None without that step)."""
        if "edit_distance_unit" in self.candidates.column_names and len(self.candidates):
            return self.candidates[0]["edit_distance_unit"]
        return None


@contextlib.contextmanager
def _datasets_progress_off(datasets_module) -> Iterator[None]:
    """Silence datasets' own progress bars for a block, restoring the previous setting after."""
    was_enabled = datasets_module.is_progress_bar_enabled()
    datasets_module.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets_module.enable_progress_bars()


# ---- inputs --------------------------------------------------------------------------------------------

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def _sha256_files(paths: list[Path]) -> dict[str, str]:
    """path -> sha256 of its bytes, for each path in order."""
    import hashlib

    out = {}
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        out[str(path)] = digest.hexdigest()
    return out


# bump when the way a local input becomes rows changes: every input is then loaded afresh
INPUT_LOADER_VERSION = "1"


def load_input(spec: InputSpec, cache_dir: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Load a recipe's input as a candidates ``Dataset`` (with cache files, so steps are cached),
    renamed and narrowed as the spec says, and describe it for the card (kind, id or path, revision,
    file hashes, license when known)."""
    dataset, info = _load_input_rows(spec, cache_dir)
    if spec.rename:
        missing = [c for c in spec.rename if c not in dataset.column_names]
        if missing:
            raise RecipeError(
                f"input.rename: column(s) {missing} not in the input; it has {dataset.column_names}"
            )
        dataset = dataset.rename_columns(dict(spec.rename))
    if spec.columns:
        missing = [c for c in spec.columns if c not in dataset.column_names]
        if missing:
            raise RecipeError(
                f"input.columns: column(s) {missing} not in the input; it has {dataset.column_names}"
            )
        dataset = dataset.select_columns(list(spec.columns))
    return dataset, info


def _load_input_rows(spec: InputSpec, cache_dir: str | Path | None) -> tuple[Any, dict[str, Any]]:
    import json
    import shutil

    import datasets

    cache = str(cache_dir) if cache_dir is not None else None
    if spec.default is not None:
        from hfpref.pipeline import default_data

        return (
            default_data.load_ifeval_candidates(cache_dir, spec.generators, name=spec.default),
            default_data.input_description(spec.default, spec.generators),
        )
    if spec.hub is not None:
        dataset = datasets.load_dataset(
            spec.hub, name=spec.config, revision=spec.revision, split=spec.split, cache_dir=cache
        )
        info = {
            "kind": "hub",
            "id": spec.hub,
            "revision": spec.revision,
            "split": spec.split,
            "config": spec.config,
        }
        info["resolved_revision"] = _hub_commit(spec.hub, spec.revision)
        return dataset, info
    path = Path(spec.path)
    if not path.exists():
        raise RecipeError(f"input.path: {spec.path!r} does not exist")
    info: dict[str, Any] = {"kind": "path", "path": str(path), "split": spec.split, "revision": None}
    if path.is_dir() and (path / "state.json").exists():  # a folder written by Dataset.save_to_disk
        kind = "arrow-folder"
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        # the files the dataset is made of (steps may write their own cache-*.arrow files beside them)
        files = [path / entry["filename"] for entry in state.get("_data_files", [])]
    elif path.is_dir():
        kind = "folder"
        files = sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)
    else:
        kind = _FILE_BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if kind is None:
            raise RecipeError(
                f"input.path: cannot read {spec.path!r}; known file types: {sorted(_FILE_BUILDERS)}"
            )
        files = [path]
    hashes = _sha256_files(files)
    info["files_sha256"] = hashes
    # Rows are keyed by the bytes, not the path: datasets' json/csv/parquet builders key their cache on path
    # and modification time, so a file rewritten with its old mtime (cp -p, rsync -a, unzip) would load the
    # old rows. Each content gets its own builder cache folder and the dataset a fingerprint made from the
    # hashes, so the step caches downstream follow the content too.
    key = _content_key(kind, spec.split, path, hashes)
    content_cache = Path(cache if cache is not None else datasets.config.HF_DATASETS_CACHE) / "hfpref-inputs"
    content_cache = content_cache / key
    if kind == "arrow-folder":
        dataset = datasets.load_from_disk(str(path))  # memory-mapped as it is: no builder cache
    elif kind == "folder":
        dataset = datasets.load_dataset(str(path), split=spec.split, cache_dir=str(content_cache))
    else:
        dataset = datasets.load_dataset(
            kind, data_files=str(path), split="train", cache_dir=str(content_cache)
        )
    if _sha256_files(files) != hashes:  # written to while it was read: the rows may be of neither version
        shutil.rmtree(content_cache, ignore_errors=True)
        raise RecipeError(
            f"input.path: {spec.path!r} changed while it was being read; run again once it is no longer "
            "being written"
        )
    # a contiguous select is a zero-copy view over the same Arrow files, with the fingerprint we give it
    return dataset.select(range(len(dataset)), new_fingerprint=key), info


def _content_key(kind: str, split: str, root: Path, hashes: Mapping[str, str]) -> str:
    """A fingerprint of an input made from what it holds: its kind, split and files' names (relative to
    the input path, since a folder's file names can name splits) and bytes, not where it lies or when it
    was written."""
    import hashlib
    import json

    files = {
        (str(Path(name).relative_to(root)) if root.is_dir() else Path(name).suffix): digest
        for name, digest in hashes.items()
    }
    record = {"loader": INPUT_LOADER_VERSION, "kind": kind, "split": split, "files": files}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub revision (branch or tag) points to, or None when the Hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:  # offline, or a private repo without a token: the card then shows the revision as given
        return None


# ---- the embedded default --------------------------------------------------------------------------

DEFAULT_STRATEGIES = [
    "best_of_n2",
    "best_of_n2_ds",
    "max_margin",
    "random",
    "ds_rm",
    "ds_fix",
    "dcrm_no_logp",
    "dcrm_no_reward",
    "edit_only",
    "reward_only",
]  # not dcrm_no_edit and logp_only: they need p_Δ, and the default has no reference model
DEFAULT_RECIPE: dict[str, Any] = {
    "description": (
        "IFEval's 541 prompts, each with up to eight real responses (GPT-4 and PaLM-2 text-bison as published "
        "with IFEval; Qwen2.5-0.5B/1.5B/7B/14B/32B-Instruct and Mistral-7B-Instruct-v0.3 from M-IFEval), "
        "screened for answers to an older prompt and runaway answers, rewarded by the fraction of the "
        "prompt's verifiable constraints each response meets (strict), with the generators ranked by their "
        "measured IFEval accuracy, paired with every hfpref pair strategy that needs no reference model."
    ),
    "input": {"default": "ifeval"},
    "steps": [
        {
            "step": "ScreenResponses",
            "config": {
                "stale_prompt": "arguments",
                "max_chars": 10_000,
                "repetition_min_chars": 1_000,
                "min_distinct_trigrams": 0.2,
            },
        },
        {"step": "IFEvalVerifier", "config": {"reward": "strict"}},
        {"step": "PairMetrics", "config": {"tokenizer": None}},
    ],
    "pairs": {
        "strategies": DEFAULT_STRATEGIES,
        "config": {"seed": 0, "generator_ranking": MEASURED, "eps": 1.0},
    },
    "output": {"folder": "hfpref-release", "name": "hfpref-ifeval-eight-generators", "version": "0.2.0"},
}


def default_recipe(validate: bool = True) -> Recipe:
    """The recipe ``hfpref curate`` runs without arguments (also ``dataset_scripts/ifeval_eight_generators.yaml``)."""
    return Recipe.from_dict(
        copy.deepcopy(DEFAULT_RECIPE), source="(embedded default recipe)", validate=validate
    )
