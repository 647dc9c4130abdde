"""Every pair config of a recipe, made one way: strategies, makers, mixes, sweep levels and filters each
yield ``MadePairs`` (name, kept pairs, drop counts, what made them; or why the config was skipped), and one
``PairBook.add`` records them for the release.

The kinds differ only in how the pairs come about:

* a *strategy* is ``PairSelector`` over the candidates (``engine.select_pairs``, which may run the selectors
  side by side);
* a *maker* is a registered pair-making step mapped by the engine over its source;
* a *mix* draws from the makers' kept pairs (``hfpref.steps.contrast.mix_contrast``);
* a *sweep* makes one config per level (``hfpref.steps.delta_sweep``) and runs its pair-level steps on each;
* a *filter* keeps another config's pairs by sample delta.

``made_pairs`` yields them in that order, lazily: a mix or filter reads the configs recorded before it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.pipeline.pair_specs import MEASURED, MixRecord
from hfpref.pipeline.validate import RecipeError

if TYPE_CHECKING:  # the recipe module imports this one
    from hfpref.pipeline.recipe import Recipe


@dataclasses.dataclass
class MadePairs:
    """One pair config: its kept pairs, rows dropped by reason, and what made it (anything with
    ``describe()``: a step, a ``MixRecord``, a ``SweepRecord``); or, with ``skipped``, why it has none."""

    name: str
    pairs: Any = None  # datasets.Dataset
    dropped: Counter = dataclasses.field(default_factory=Counter)
    made_by: Any = None
    skipped: str | None = None


@dataclasses.dataclass
class PairBook:
    """The pair configs made so far, as ``RecipeResult`` holds them; ``sweeps`` and ``filters``: what the
    manifest records per sweep and per filter."""

    pairs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dropped: dict[str, Counter] = dataclasses.field(default_factory=dict)
    made_by: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    sweeps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    filters: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def add(self, made: MadePairs) -> None:
        if made.skipped is not None:
            self.skipped[made.name] = made.skipped
            return
        self.pairs[made.name] = made.pairs
        self.dropped[made.name] = made.dropped
        self.made_by[made.name] = made.made_by


@dataclasses.dataclass
class StepMapper:
    """The engine steps run on, with the run's map settings; a step's or maker's own settings win."""

    engine: Any
    batch_size: int = 64
    num_proc: int | None = None

    def map(self, step: Any, data: Any, spec: Any = None) -> Any:
        """``engine.map_step`` with ``spec``'s ``batch_size``/``num_proc`` (a StepSpec or MakerSpec) when set."""
        batch_size = getattr(spec, "batch_size", None)
        num_proc = getattr(spec, "num_proc", None)
        return self.engine.map_step(
            step,
            data,
            batch_size=batch_size or self.batch_size,
            num_proc=num_proc if num_proc is not None else self.num_proc,
        )


@dataclasses.dataclass
class PairRun:
    """What the pair configs run on: the engine, the candidates (and the rows before the first step that
    writes responses, for makers with ``source: prompts``), the built selectors and makers, and the measured
    generator accuracy (None when the ranking is not measured)."""

    mapper: StepMapper
    candidates: Any
    prompts: Any
    selectors: dict[str, Any]
    makers: list[Any]
    accuracy: list[dict[str, Any]] | None = None


def made_pairs(recipe: Recipe, run: PairRun, book: PairBook) -> Iterator[MadePairs]:
    """Every pair config of ``recipe``, in release order; ``book`` must have recorded each one before the
    next is asked for (mixes draw from makers, filters from any config made before them)."""
    yield from strategy_pairs(run)
    yield from maker_pairs(recipe, run)
    if run.accuracy is not None:  # measured capabilities tag every config that names its generators
        tag_generator_delta(book.pairs, run.accuracy)
    for index in range(len(recipe.pairs.mixes)):
        yield mix_pairs(recipe, index, book.pairs)
    for index in range(len(recipe.pairs.sweeps)):
        yield from sweep_pairs(recipe, index, run, book.sweeps)
    for index in range(len(recipe.pairs.filters)):
        yield filter_pairs(recipe, index, book.pairs, book.filters)


def _split(selected: Any) -> tuple[Any, Counter]:
    from hfpref.steps.selection import split_dropped

    kept, reasons = split_dropped(selected)
    return kept, Counter(reasons)


def strategy_pairs(run: PairRun) -> Iterator[MadePairs]:
    """One config per strategy: ``PairSelector`` is a pair maker whose rows are split like any maker's; the
    engine may run the selectors side by side (``engine.select_pairs``)."""
    mapper = run.mapper
    selected_by = mapper.engine.select_pairs(
        run.selectors, run.candidates, batch_size=mapper.batch_size, num_proc=mapper.num_proc
    )
    for strategy, selected in selected_by:
        kept, dropped = _split(selected)
        yield MadePairs(strategy, kept, dropped, run.selectors[strategy])


def maker_pairs(recipe: Recipe, run: PairRun) -> Iterator[MadePairs]:
    """One config per maker, mapped by the engine (cached, resumable) over its source."""
    for spec, maker in zip(recipe.pairs.makers, run.makers, strict=True):
        source = run.prompts if spec.source == "prompts" else run.candidates
        kept, dropped = _split(run.mapper.map(maker, source, spec))
        yield MadePairs(spec.name, kept, dropped, maker)


def mix_pairs(recipe: Recipe, index: int, pairs: Mapping[str, Any]) -> MadePairs:
    """The mixed pairs of ``pairs.mixes[index]`` and how they were drawn, or why the mix was skipped."""
    import datasets

    from hfpref.steps.contrast import MixError, largest_mix_size, mix_contrast

    mix = recipe.pairs.mixes[index]
    where = f"pairs.mixes[{index}] ({mix.name})"
    try:
        pool = datasets.concatenate_datasets([pairs[name] for name in mix.from_])
    except ValueError as err:  # e.g. makers whose pairs have different columns
        raise RecipeError(f"{where}: cannot concatenate the pairs of {mix.from_}: {err}") from err
    size = mix.size if mix.size is not None else largest_mix_size(pool, mix.ratio_high)
    if size == 0:
        reason = f"no high- and low-contrast pairs to mix at ratio_high={mix.ratio_high} in {mix.from_}"
        return MadePairs(mix.name, skipped=reason)
    try:
        mixed = mix_contrast(pool, **mix.arguments(size))
    except (MixError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from err
    return MadePairs(mix.name, mixed, Counter(), MixRecord(mix, size))


def _sweep_capabilities(sweep: Any, index: int, candidates: Any) -> dict[str, Any]:
    """The sweep's capability table: measured on the candidates, or given in the recipe."""
    from hfpref.steps.generator_delta import measure_capabilities

    if sweep.capabilities != MEASURED:
        return {"source": "given", "capability_name": "capability", "capabilities": dict(sweep.capabilities)}
    try:
        return measure_capabilities(candidates, measure=sweep.measure)
    except UserError as err:
        raise RecipeError(f"{sweep.where(index)}.capabilities: {err}") from err


def sweep_pairs(
    recipe: Recipe, index: int, run: PairRun, reports: dict[str, dict[str, Any]]
) -> Iterator[MadePairs]:
    """One config per level of ``pairs.sweeps[index]``, tagged by its pair-level steps; the sweep's manifest
    record (capabilities, the plan, the analysis table) goes into ``reports``."""
    from hfpref.pipeline.sweep_specs import SweepRecord
    from hfpref.steps.delta_sweep import level_pairs, plan_sweep, sweep_analysis

    sweep, candidates = recipe.pairs.sweeps[index], run.candidates
    steps = sweep.build_steps(index)
    table = _sweep_capabilities(sweep, index, candidates)
    plan = plan_sweep(
        candidates, name=sweep.name, chosen=sweep.chosen, rejected=sweep.rejected, size=sweep.size,
        seed=sweep.seed, level_names=sweep.level_names(),
    )  # fmt: skip
    missing = [g for g in [sweep.chosen, *sweep.rejected] if g not in table["capabilities"]]
    if missing:
        raise RecipeError(f"{sweep.where(index)}: no capability measured for {missing}")
    reasons = {k: v for k, v in plan.excluded.items() if v}
    if plan.common > len(plan.rows):
        reasons["not_drawn"] = plan.common - len(plan.rows)
    levels = {}
    for level in plan.levels:
        level_data = level_pairs(candidates, plan, level, table["capabilities"])
        for step in steps:
            level_data = run.mapper.map(step, level_data)
        levels[level.name] = level_data
        yield MadePairs(
            level.name, level_data, Counter(reasons), SweepRecord(sweep, level.name, level.rejected, steps)
        )
    reports[sweep.name] = {
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


def filter_pairs(
    recipe: Recipe, index: int, pairs: Mapping[str, Any], reports: dict[str, dict[str, Any]]
) -> MadePairs:
    """The pairs of ``pairs.filters[index]``'s source config kept by sample delta; how much of the source it
    kept goes into ``reports``."""
    from hfpref.pipeline.sweep_specs import FilterRecord
    from hfpref.steps.judges.quality import filter_by_sample_delta

    spec = recipe.pairs.filters[index]
    source = pairs.get(spec.from_)
    if source is None:
        return MadePairs(spec.name, skipped=f"its source config {spec.from_!r} was not made")
    if spec.column not in source.column_names:
        raise RecipeError(
            f"{spec.where(index)}.column: config {spec.from_!r} has no {spec.column!r} column (add a "
            f"QualityJudge to the steps that make it); its columns: {source.column_names}"
        )
    bounds = {
        k: v for k, v in spec.arguments().items() if k in ("top_fraction", "threshold") and v is not None
    }
    kept, report = filter_by_sample_delta(source, **bounds, column=spec.column)
    reports[spec.name] = {
        "from": spec.from_,
        **spec.arguments(),
        "source_rows": len(source),
        "kept": report["kept"],
        "kept_fraction": report["kept"] / len(source) if len(source) else None,
        "dropped": {k: v for k, v in report.items() if k != "kept"},
    }
    dropped = Counter({k: v for k, v in report.items() if k != "kept" and v})
    return MadePairs(spec.name, kept, dropped, FilterRecord(spec))


def tag_generator_delta(pairs: dict[str, Any], accuracy: list[dict[str, Any]]) -> None:
    """Tag every pairs config that names its generators with ``GeneratorDeltaTagger``, the capabilities being
    the measured prompt-level IFEval accuracies (``accuracy``, the very numbers of the measured ranking the
    card shows); a generator without a measurement gets no delta. Configs already tagged are left as they are."""
    from hfpref.core.columns import GENERATOR_DELTA
    from hfpref.steps.generator_delta import GeneratorDeltaTagger, capabilities_config

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
