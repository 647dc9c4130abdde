"""What ``Recipe.run`` does: build the steps and pair configs, check everything that can be checked before
the first step (files, output folder, columns, prompt forms, strategies the candidates cannot serve), load
the input, map the steps on the engine, rank the generators, then make every pair config
(``hfpref.pipeline.pairing``) and return a ``RecipeResult``.

A missing column or an unusable model fails here in seconds, not after hours of earlier model steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfpref.core import columns as C
from hfpref.core.cache import reopened
from hfpref.core.errors import UserError
from hfpref.core.registry import import_target
from hfpref.core.step import ROW_ERROR
from hfpref.pipeline.pair_specs import ALL_STRATEGIES, MEASURED, PAIR_SELECTOR
from hfpref.pipeline.pairing import PairBook, PairRun, StepMapper, made_pairs
from hfpref.pipeline.result import RecipeResult
from hfpref.pipeline.resume import DEFAULT_SHARD_ROWS
from hfpref.pipeline.validate import RecipeError
from hfpref.steps.chat_prompts import check_prompt_forms, prompt_form_of_feature

if TYPE_CHECKING:  # the recipe module imports this one
    from hfpref.pipeline.recipe import Recipe

# strategies whose score is p_Δ alone (hfpref.steps.selection drops every row without ref_logps for them): a run
# without a reference model skips them instead of writing empty configs. Spelled out here so that reading
# a recipe does not import hfpref.steps.selection; tests/test_recipe.py checks it against selection's own list.
STRATEGIES_NEEDING_REF_LOGPS = ("dcrm_no_edit", "logp_only")


@dataclasses.dataclass
class RunPlan:
    """The recipe's parts built and checked before any data is read."""

    steps: list[Any]
    configs: dict[str, Any]  # strategy -> SelectionConfig
    skipped: dict[str, str]  # strategy -> why it does not run
    makers: list[Any]
    prompts_at: int | None  # the index of the first step that writes responses, when a maker needs it

    def pair_configs(self, recipe: Recipe) -> int:
        """How many pair configs the run makes (or skips): for the progress bar."""
        pairs = recipe.pairs
        levels = sum(len(sweep.rejected) for sweep in pairs.sweeps)
        return len(self.configs) + len(self.makers) + len(pairs.mixes) + levels + len(pairs.filters)


def run_recipe(
    recipe: Recipe,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_proc: int | None = None,
    progress: bool = True,
    gpus: int | None = None,
    shard_rows: int | None = DEFAULT_SHARD_ROWS,
    engine: Any = None,
) -> RecipeResult:
    """``Recipe.run``: run the steps, then every pair strategy, maker, mix, sweep and filter; finished steps
    and makers are reused from the cache.

    ``engine``: where steps run (``hfpref.pipeline.engines``); by default this process, with model steps in
    ``gpus`` worker processes (one per GPU) when given, and every step in resumable shards of
    ``shard_rows`` rows, so a run killed mid-step resumes from its last finished shard.
    """
    import datasets
    from tqdm.auto import tqdm

    if engine is None:
        from hfpref.pipeline.engines.local import LocalEngine

        engine = LocalEngine(gpus=gpus, shard_rows=shard_rows)
    mapper = StepMapper(engine, batch_size, num_proc)
    plan = plan_run(recipe)
    quiet = contextlib.nullcontext() if progress else datasets_progress_off(datasets)
    with quiet:
        candidates, input_info = recipe.load_input(cache_dir)
        check_columns(recipe, plan, candidates)
        total = len(plan.steps) + plan.pair_configs(recipe)
        with tqdm(total=total, desc="recipe", unit="step", disable=not progress) as bar:
            steps_input = [candidates]
            del candidates  # run_steps takes the input out of the list (see there)
            candidates, prompts, step_rows = run_steps(recipe, plan, steps_input, mapper, bar)
            ranking, accuracy = rank_generators(recipe, candidates)
            selectors = build_selectors(recipe, plan, ranking if accuracy is not None else None, bar)
            run = PairRun(mapper, candidates, prompts, selectors, plan.makers, accuracy)
            book = make_pairs(recipe, run, plan.skipped, bar)
    # a fresh memory map of the candidates' cache files: the pages the selectors read (all of it) stay
    # resident while a map lives, and the map they read goes with this frame (hfpref.core.cache.reopened).
    # Not the pairs: nothing read them whole since they were written, and opening a map output already
    # makes about half of a pairs file resident (the pages around each record batch's header), which
    # here would count twice, old map and new, at the end of the run (+500 MB at 69k prompts)
    return RecipeResult(
        recipe=recipe,
        candidates=reopened(candidates),
        steps=plan.steps,
        pairs=book.pairs,
        dropped=book.dropped,
        selectors=book.made_by,
        input_info=input_info,
        skipped_strategies=book.skipped,
        step_rows=step_rows,
        resolved_ranking=ranking,
        generator_accuracy=accuracy,
        sweeps=book.sweeps,
        filters=book.filters,
    )


def plan_run(recipe: Recipe) -> RunPlan:
    """Build the steps, strategies and makers, check the pair configs, and run the checks that need no data."""
    steps = [spec.build(i) for i, spec in enumerate(recipe.steps)]
    configs, skipped = recipe.pairs.selection_configs()
    makers = recipe.build_makers(steps)
    recipe.check_pair_configs(list(configs), makers)
    uses_prompts = any(spec.source == "prompts" for spec in recipe.pairs.makers)
    prompts_at = recipe.prompts_index(steps) if uses_prompts else None
    preflight_run(recipe, steps, makers)
    return RunPlan(steps, configs, skipped, makers, prompts_at)


def run_steps(
    recipe: Recipe, plan: RunPlan, inputs: list[Any], mapper: StepMapper, bar: Any
) -> tuple[Any, Any, list[dict[str, int]]]:
    """(candidates after the last step, the rows before the first step that writes responses (None when no
    maker reads them), rows in/out of each step).

    ``inputs``: a list holding the loaded input, which this takes out: with no reference left elsewhere,
    each step's input goes once the step has its output, and with it the memory map whose pages the step
    read (the whole input: 1 GB at 69k prompts, resident through every later step otherwise)."""
    candidates = inputs.pop()
    step_rows: list[dict[str, int]] = []
    prompts = None
    for index, (spec, step) in enumerate(zip(recipe.steps, plan.steps, strict=True)):
        if index == plan.prompts_at:
            prompts = candidates  # the rows before the first step that writes responses
        bar.set_postfix_str(spec.step)
        rows_in = len(candidates)
        candidates = mapper.map(step, candidates, spec)
        rows = {"rows_in": rows_in, "rows_out": len(candidates)}
        if ROW_ERROR in candidates.column_names:  # rows a step dropped (on_row_error: drop)
            rows["row_errors"] = sum(m is not None for m in candidates[ROW_ERROR])
        step_rows.append(rows)
        step.unload()  # its models' memory goes to the next step (a later use loads again)
        bar.update(1)
    return candidates, prompts, step_rows


def build_selectors(recipe: Recipe, plan: RunPlan, measured: list[str] | None, bar: Any) -> dict[str, Any]:
    """strategy -> PairSelector for every strategy that runs; with a ``measured`` ranking the configs are
    built again with it (they were checked with a placeholder)."""
    configs = recipe.pairs.selection_configs(measured)[0] if measured is not None else plan.configs
    selector_class = import_target(PAIR_SELECTOR)
    selectors = {s: selector_class(c) for s, c in configs.items() if s not in plan.skipped}
    bar.update(len(configs) - len(selectors))
    return selectors


def make_pairs(recipe: Recipe, run: PairRun, skipped: dict[str, str], bar: Any) -> PairBook:
    """Every pair config, each recorded as it is made (``hfpref.pipeline.pairing``); ``skipped``: the
    strategies that do not run, and why."""
    bar.set_postfix_str("pairs")
    book = PairBook(skipped=skipped)
    for made in made_pairs(recipe, run, book):
        book.add(made)
        bar.set_postfix_str(made.name)
        bar.update(1)
    return book


def rank_generators(recipe: Recipe, candidates: Any) -> tuple[list[str] | None, list[dict[str, Any]] | None]:
    """(the generator ranking the selectors use, the measured accuracy it comes from or None when given)."""
    if recipe.pairs.ranking_source == MEASURED:
        # the ranking ds_fix and "stronger chosen" use comes from the candidates themselves
        from hfpref.steps.capabilities import generator_accuracy
        from hfpref.steps.capabilities import ranking as rank

        accuracy = generator_accuracy(candidates)
        return rank(accuracy), accuracy
    if recipe.pairs.ranking_source == "given":
        return list(recipe.pairs.generator_ranking), None
    return None, None


@contextlib.contextmanager
def datasets_progress_off(datasets_module) -> Iterator[None]:
    """Silence datasets' own progress bars for a block, restoring the previous setting after."""
    was_enabled = datasets_module.is_progress_bar_enabled()
    datasets_module.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets_module.enable_progress_bars()


# ---- checks before the first step ------------------------------------------------------------------------


def preflight_run(recipe: Recipe, steps: list[Any], makers: list[Any]) -> None:
    """Checks before the first step (``hfpref.pipeline.preflight``): the input file reads line by line with one
    prompt form, the output folder can be written, and each step's own ``preflight`` (a model step's
    ``max_length`` against the model's positions) passes, each error naming its step."""
    from hfpref.pipeline.preflight import check_input_file, check_output_folder

    if recipe.input.path is not None and Path(recipe.input.path).exists():
        renamed_to_prompt = [old for old, new in (recipe.input.rename or {}).items() if new == C.PROMPT]
        check_input_file(recipe.input.path, renamed_to_prompt[0] if renamed_to_prompt else C.PROMPT)
    check_output_folder(recipe.output.folder, "output.folder")
    named = [(spec.where(i), step) for i, (spec, step) in enumerate(zip(recipe.steps, steps, strict=True))]
    named += [(spec.where(i), m) for i, (spec, m) in enumerate(zip(recipe.pairs.makers, makers, strict=True))]
    for where, step in named:
        try:
            step.preflight()
        except UserError as err:
            raise RecipeError(f"{where}: {err}") from err


def check_columns(recipe: Recipe, plan: RunPlan, candidates: Any) -> list[str]:
    """Check every step's and maker's input columns and the prompt form against the loaded input; record the
    strategies the candidates cannot serve in ``plan.skipped`` (an error when they were named); return the
    columns the candidates will have after the last step."""
    columns = step_columns(recipe, plan.steps, candidates.column_names)
    # prompts a model step cannot format (chat messages for a model without a chat template)
    check_prompt_forms(
        plan.steps,
        [spec.where(i) for i, spec in enumerate(recipe.steps)],
        prompt_form_of_feature(candidates.features.get(C.PROMPT)),
    )
    columns_by_source = {"candidates": columns}
    if plan.prompts_at is not None:
        columns_by_source["prompts"] = step_columns(
            recipe, plan.steps, candidates.column_names, plan.prompts_at
        )
    check_maker_columns(recipe, plan.makers, columns_by_source)
    check_measured_ranking(recipe, columns)
    unservable = unservable_strategies(recipe, list(plan.configs), columns)
    if unservable and recipe.pairs.strategies != ALL_STRATEGIES:
        listed = "; ".join(f"{k}: {v}" for k, v in unservable.items())
        raise RecipeError(f"pairs.strategies: these strategies cannot run on the candidates: {listed}")
    plan.skipped.update(unservable)
    return columns


def step_columns(
    recipe: Recipe, steps: list[Any], input_columns: list[str], stop: int | None = None
) -> list[str]:
    """Check every step's input columns against the input's plus earlier steps' outputs; return the
    columns the candidates will have after the last step (after ``steps[:stop]`` when given)."""
    columns = list(input_columns)
    for index, (spec, step) in enumerate(zip(recipe.steps[:stop], steps[:stop], strict=True)):
        missing = [c for c in step.input_columns() if c not in columns]
        if missing:
            raise RecipeError(
                f"{spec.where(index)}: needs column(s) {missing}, which neither the input nor an earlier "
                f"step provides; columns available: {columns}"
            )
        columns += [c for c in step.output_columns() if c not in columns]
    return columns


def check_maker_columns(
    recipe: Recipe, makers: list[Any], columns_by_source: Mapping[str, list[str]]
) -> None:
    """Check every maker's input columns against its source's columns."""
    for index, (spec, maker) in enumerate(zip(recipe.pairs.makers, makers, strict=True)):
        columns = columns_by_source[spec.source]
        missing = [c for c in maker.input_columns() if c not in columns]
        if missing:
            raise RecipeError(
                f"{spec.where(index)}: needs column(s) {missing}, which its source ({spec.source}) lacks; "
                f"columns available: {columns}"
            )


def check_measured_ranking(recipe: Recipe, columns: list[str]) -> None:
    """``generator_ranking: measured`` needs generators and IFEval verdicts (or correctness)."""
    if recipe.pairs.ranking_source != MEASURED:
        return
    if C.GENERATORS not in columns or not ({C.IFEVAL_STRICT, C.CORRECTNESS} & set(columns)):
        raise RecipeError(
            f"pairs.config.generator_ranking: 'measured' ranks generators by their IFEval accuracy, which "
            f"needs {C.GENERATORS!r} and {C.IFEVAL_STRICT!r} or {C.CORRECTNESS!r} (an IFEvalVerifier step); "
            f"the candidates will have {columns}; give a ranking as a list instead"
        )


def unservable_strategies(recipe: Recipe, strategies: list[str], column_names: list[str]) -> dict[str, str]:
    """strategy -> what the candidates lack for it (an input column, or p_Δ's reference log-probs)."""
    reasons = {}
    selector_class = import_target(PAIR_SELECTOR)
    for strategy in strategies:
        selector = selector_class(strategy=strategy, **recipe.pairs.selector_values())
        missing = [c for c in selector.input_columns() if c not in column_names]
        if missing:
            reasons[strategy] = f"needs column(s) {missing}, which the candidates lack"
        elif strategy in STRATEGIES_NEEDING_REF_LOGPS and C.REF_LOGPS not in column_names:
            reasons[strategy] = (
                "needs p_Δ: no reference-model log-probs (ref_logps); add a LogProbAnnotator step"
            )
    return reasons
