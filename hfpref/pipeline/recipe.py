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

Every kind of pair config is made through one path (``hfpref.pipeline.pairing``), so drop reasons of
strategies and makers are counted alike (``hfpref.steps.selection.split_dropped``).

Step names resolve through ``STEP_REGISTRY`` (name -> "module:Class" strings), so a step's module,
and whatever heavy library it needs, is imported only when a recipe names it.

``Recipe.run`` (``hfpref.pipeline.runner``) maps each step with an engine (``hfpref.pipeline.engines``; by default ``Dataset.map`` in this
process): every step's output is ``datasets`` cache files keyed by the input's fingerprint and the
step's, written shard by shard (``hfpref.pipeline.resume``), so rerunning a finished recipe is all cache hits and
a run stopped part-way (crash, Ctrl-C, kill) resumes from the last finished shard of the step it was in.

Where the parts live: ``validate`` (the YAML checks every recipe format shares), ``spec`` (input, steps,
output), ``pair_specs`` and ``sweep_specs`` (the ``pairs`` section), ``inputs`` (loading the input),
``runner`` and ``pairing`` (running), ``result`` (``RecipeResult``), ``default_recipe``; this module holds
the ``Recipe`` itself and re-exports the names its importers use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.registry import STEP_REGISTRY, import_target, register_step
from hfpref.pipeline.inputs import INPUT_LOADER_VERSION, load_input
from hfpref.pipeline.pair_specs import (
    ALL_STRATEGIES,
    MAKER_SOURCES,
    MEASURED,
    MIX_FUNCTION,
    PAIR_SELECTOR,
    MakerSpec,
    MixRecord,
    MixSpec,
    PairsSpec,
)
from hfpref.pipeline.pairing import tag_generator_delta
from hfpref.pipeline.result import RecipeResult
from hfpref.pipeline.runner import STRATEGIES_NEEDING_REF_LOGPS, run_recipe
from hfpref.pipeline.spec import DEFAULT_INPUTS, InputSpec, OutputSpec, PushSpec, StepSpec
from hfpref.pipeline.validate import (
    CANDIDATES_CONFIG,
    RecipeError,
    build_config,
    check_version,
    naming_the_file,
    read_recipe_yaml,
    read_section,
    step_class,
)

_TOP_LEVEL_KEYS = ("description", "input", "steps", "pairs", "output")


def _check_name_free(taken: dict[str, str], name: str, where: str) -> None:
    if name in taken:
        raise RecipeError(f"{where}: config name {name!r} is taken by {taken[name]}")


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
        with naming_the_file(source):
            raw = read_section(raw, "recipe", _TOP_LEVEL_KEYS, ("input", "pairs"))
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
        configs, _ = self.pairs.selection_configs()
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
        """Config names are unique; every mix draws from maker configs that write ``contrast_level``; a
        filter draws from a config made before it."""
        taken = {name: f"pairs.strategies ({name})" for name in strategies}
        for index, spec in enumerate(self.pairs.makers):
            _check_name_free(taken, spec.name, spec.where(index))
            taken[spec.name] = spec.where(index)
        maker_steps = {spec.name: step for spec, step in zip(self.pairs.makers, makers, strict=True)}
        for index, mix in enumerate(self.pairs.mixes):
            where = f"pairs.mixes[{index}] ({mix.name})"
            _check_name_free(taken, mix.name, where)
            taken[mix.name] = where
            self._check_mix_sources(mix, where, maker_steps, strategies, taken)
        for index, sweep in enumerate(self.pairs.sweeps):
            for level in sweep.level_names():
                if level in taken:
                    raise RecipeError(
                        f"{sweep.where(index)}: level config {level!r} is taken by {taken[level]}; rename the sweep"
                    )
                taken[level] = sweep.where(index)
        for index, spec in enumerate(self.pairs.filters):
            _check_name_free(taken, spec.name, spec.where(index))
            if spec.from_ not in taken:
                raise RecipeError(
                    f"{spec.where(index)}.from: {spec.from_!r} is not a config made before it; configs: {list(taken)}"
                )
            taken[spec.name] = spec.where(index)

    @staticmethod
    def _check_mix_sources(
        mix: MixSpec, where: str, maker_steps: dict[str, Any], strategies: list[str], taken: dict[str, str]
    ) -> None:
        """Every config a mix draws from is a maker's that writes ``contrast_level``."""
        from hfpref.core.columns import CONTRAST_LEVEL

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

    # ``recipe.run(cache_dir=, batch_size=, num_proc=, progress=, gpus=, shard_rows=, engine=)``: the runner's
    # function is the method itself (its first argument is the recipe); see hfpref.pipeline.runner.run_recipe
    run = run_recipe


# the embedded default recipe needs Recipe itself, so it is imported after it
from hfpref.pipeline.default_recipe import DEFAULT_RECIPE, DEFAULT_STRATEGIES, default_recipe  # noqa: E402

__all__ = [
    "ALL_STRATEGIES",
    "CANDIDATES_CONFIG",
    "DEFAULT_INPUTS",
    "DEFAULT_RECIPE",
    "DEFAULT_STRATEGIES",
    "INPUT_LOADER_VERSION",
    "MAKER_SOURCES",
    "MEASURED",
    "MIX_FUNCTION",
    "PAIR_SELECTOR",
    "STEP_REGISTRY",
    "STRATEGIES_NEEDING_REF_LOGPS",
    "InputSpec",
    "MakerSpec",
    "MixRecord",
    "MixSpec",
    "OutputSpec",
    "PairsSpec",
    "PushSpec",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "StepSpec",
    "build_config",
    "check_version",
    "default_recipe",
    "import_target",
    "load_input",
    "read_recipe_yaml",
    "register_step",
    "step_class",
    "tag_generator_delta",
]
