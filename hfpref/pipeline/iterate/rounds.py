"""One round of the iterate loop as a curate recipe, run by the recipe runner and written as a release.

Round r is a ``Recipe`` of registered steps: ``ChatPrompts`` (when prompts become messages), sample from
π_r (``ResponseSampler``), score under its reference and under π_r (``LogProbAnnotator`` twice, or
``CopyColumns`` when π_r is its own reference), ``ImplicitMargins``, ``AnnotationSelector`` with the
round's budget, ``AnnotateSelected`` with the recipe's annotator, and the pair maker ``AnnotatedPairs``
whose kept pairs are the round's config (e.g. ``smallest_margin_corpus``). ``Recipe.run`` runs it, so a
round gets the engines (``--gpus``, Ray) and shard-level resume, and the release's "recipe as run" reruns
as is with ``hfpref curate``. When people label the pairs (Label Studio) the recipe stops after the
selector and ``hfpref.pipeline.iterate.human`` makes the pairs from their labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.step import Step
from hfpref.pipeline.iterate.errors import IterateError
from hfpref.pipeline.iterate.record import iteration_card_section, iteration_record
from hfpref.pipeline.iterate.spec import IterateRecipe, ModelRef
from hfpref.pipeline.pair_specs import MakerSpec, PairsSpec
from hfpref.pipeline.recipe import Recipe
from hfpref.pipeline.result import RecipeResult
from hfpref.pipeline.spec import OutputSpec, StepSpec
from hfpref.pipeline.validate import check_version
from hfpref.steps.margins import EqualMarginsError


def release_dir(folder: Path, round_number: int) -> Path:
    return folder / f"round-{round_number}" / "release"


def checkpoint_dir(folder: Path, round_number: int) -> Path:
    return folder / f"round-{round_number}" / "policy"


def round_version(version: str, round_number: int) -> str:
    """The version of round r's release, e.g. ``0.1.0-round.2`` (a valid tag ``v0.1.0-round.2``)."""
    return check_version(f"{version}-round.{round_number}")


def round_step_specs(recipe: IterateRecipe, r: int, policy: ModelRef, reference: ModelRef) -> list[StepSpec]:
    """Round ``r``'s steps as recipe entries: sample from ``policy``, score under ``reference`` and ``policy``,
    margins, selection, annotation (no ``AnnotateSelected`` when people label the selected pairs)."""
    generator = (
        recipe.policy.model if r == recipe.first_round else f"{recipe.output.name}/round-{r - 1}/policy"
    )
    specs = [
        StepSpec("ResponseSampler", recipe.sampler_values(policy, generator)),
        StepSpec("LogProbAnnotator", recipe.logprob_values(reference, "ref")),
    ]
    if policy == reference:
        copied = {C.REF_LOGPS: C.POLICY_LOGPS, C.REF_TOKEN_COUNTS: "policy_token_counts"}
        reason = f"round {r}: the policy is its own reference, so its log-probs are the reference's"
        specs.append(StepSpec("CopyColumns", {"columns": copied, "reason": reason}))
    else:
        specs.append(StepSpec("LogProbAnnotator", recipe.logprob_values(policy, "policy")))
    specs += [
        StepSpec("ImplicitMargins", recipe.margin_values()),
        StepSpec("AnnotationSelector", recipe.selection_values(r)),
    ]
    if not recipe.human_labels:
        specs.append(StepSpec("AnnotateSelected", recipe.annotate_values()))
    return specs


def round_steps(recipe: IterateRecipe, r: int, policy: ModelRef, reference: ModelRef) -> list[Step]:
    """Round ``r``'s steps, built as the runner builds them (the last is the ``AnnotateSelected``; with Label
    Studio labels the ``AnnotationSelector``, and people annotate after it)."""
    return [spec.build(index) for index, spec in enumerate(round_step_specs(recipe, r, policy, reference))]


def round_recipe(
    recipe: IterateRecipe, r: int, policy: ModelRef, reference: ModelRef, folder: Path, messages: bool
) -> Recipe:
    """Round ``r`` as a curate recipe writing ``round-r/release`` (``messages``: prompts become chat
    messages first)."""
    steps = round_step_specs(recipe, r, policy, reference)
    if messages:
        steps.insert(0, StepSpec("ChatPrompts", {}))
    selection = recipe.selection_config(r)
    makers = []
    if not recipe.human_labels:
        column = _preferences_column(recipe)
        config = {"preferences_column": column} if column else {}
        makers.append(MakerSpec(name=selection.name, step="AnnotatedPairs", config=config))
    description = (
        f"Round {r} of {recipe.rounds} of iterative DPO with annotation by implicit-margin selection "
        f"({selection.strategy}, {selection.level} level)."
        + (f" {recipe.description}" if recipe.description else "")
    )
    output = OutputSpec(
        folder=str(release_dir(folder, r)),
        name=recipe.output.name,
        version=round_version(recipe.output.version, r),
        license=recipe.output.license,
        candidate_matrices=recipe.output.candidate_matrices,
    )
    pairs = PairsSpec(strategies=[], config={}, makers=makers)
    return Recipe(recipe.input, steps, pairs, output, description=description, source=recipe.source)


def _preferences_column(recipe: IterateRecipe) -> str | None:
    """A pairwise annotator's preference column (``AnnotatedPairs`` reads it instead of rewards)."""
    from hfpref.steps.annotate import AnnotateSelected

    return AnnotateSelected(recipe.annotate_config()).preferences_column()


def build_round(
    recipe: IterateRecipe,
    r: int,
    models: tuple[ModelRef, ModelRef],
    folder: Path,
    messages: bool,
    run_options: dict[str, Any],
) -> int:
    """Sample, score, select, annotate and write round ``r``'s release; returns its number of pairs.

    ``models``: (π_r, its reference); ``run_options``: ``Recipe.run``'s keyword arguments (cache, batch
    size, engine ...)."""
    from hfpref.release.writer import write_release

    policy, reference = models
    plan = round_recipe(recipe, r, policy, reference, folder, messages)
    try:
        result = plan.run(**run_options)
    except EqualMarginsError as err:
        raise IterateError(
            f"round {r}: {err}. In the loop, start from a policy that differs from its reference "
            "(`reference: {model: SFT_MODEL}` with a DPO-trained policy, or `warmup: {fraction: 0.1}`), or "
            "set `selection: {on_equal_margins: random}`"
        ) from None
    for step in [*result.steps, *result.selectors.values()]:
        step.unload()  # the next round (or training) has the accelerator's memory
    extra: dict[str, Any] = {}
    labels = None
    if recipe.human_labels:
        from hfpref.pipeline.iterate.human import human_result

        result, labels = human_result(recipe, r, result)
    else:
        extra["models"] = _models(result, result.steps[-1])
    record = iteration_record(recipe, r, models, result, labels)
    extra["iteration"] = record
    # rendered by the card template, so a later re-render (hfpref push sets the version) keeps it
    extra["extra_sections"] = [iteration_card_section(record)]
    write_release(result, release_dir(folder, r), extra=extra)
    return record["annotation"]["pairs_kept"]


def _models(result: RecipeResult, annotate: Any) -> list[dict[str, Any]]:
    """The release's model references, the annotator's model among them (it sits inside ``AnnotateSelected``,
    where the writer does not look)."""
    from hfpref.release.manifest import model_references

    described = [s.describe() for s in [*result.steps, *result.selectors.values()]]
    return model_references(described) + model_references([annotate.annotator.describe()])


__all__ = [
    "build_round",
    "checkpoint_dir",
    "release_dir",
    "round_recipe",
    "round_step_specs",
    "round_steps",
    "round_version",
]
