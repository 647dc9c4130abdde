"""What a round's release records about the loop: the manifest's ``iteration`` record and the card section
rendered from it (models, budget, selection, annotation, training)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hfpref.pipeline.iterate.budget import schedule_weights
from hfpref.steps.margins import selection_summary

if TYPE_CHECKING:
    from hfpref.pipeline.iterate.spec import IterateRecipe, ModelRef


def iteration_record(
    recipe: IterateRecipe, r: int, models: tuple[ModelRef, ModelRef], result: Any, labels: Any = None
) -> dict[str, Any]:
    """What the manifest records about the round: models (π_r, its reference), budget, selection, annotation,
    training.

    ``result``: the round's ``RecipeResult``, whose last step is the model annotator's ``AnnotateSelected``;
    or, when people labelled the pairs, ``labels`` is what ``hfpref.human.labelstudio.label_round`` found."""
    policy, reference = models
    name = recipe.selection_config(r).name
    kept, dropped, candidates = result.pairs[name], result.dropped[name], result.candidates
    if labels is not None:
        annotation = _human_annotation(labels.pull, kept, dropped)
    else:
        annotation = _model_annotation(result.steps[-1], candidates, kept, dropped)
    budgets = recipe.round_budgets()
    return {
        "round": r,
        "rounds": recipe.rounds,
        "policy": policy.label(),
        "reference": reference.label(),
        "reference_rule": (
            "the policy the sampling policy was DPO-trained from; in the first round the recipe's reference "
            "(default: the initial policy itself)"
        ),
        "warmup": r == 0,
        "margins": dataclasses.asdict(recipe.margin_config()),
        "budget": {
            **recipe.budget.to_dict(),
            "weights": schedule_weights(recipe.budget.schedule, recipe.rounds),
            "warmup": recipe.warmup,
            "per_round": dict(zip(map(str, recipe.round_numbers()), budgets, strict=True)),
            "this_round": budgets[r - recipe.first_round],
        },
        "selection": {**dataclasses.asdict(recipe.selection_config(r)), **selection_summary(candidates)},
        "annotation": annotation,
        "training": recipe.training_overrides(),
        "next_policy": f"round-{r}/policy",
    }


def _human_annotation(pull: Any, kept: Any, dropped: Mapping[str, int]) -> dict[str, Any]:
    return {
        "annotator": "label-studio",
        "project": pull.project,
        "url": pull.url,
        "rule": pull.rule,
        "min_annotations": pull.min_annotations,
        "pairs_pushed": pull.counts["pairs"],
        "annotations": pull.counts["annotations"],
        "annotators": pull.counts["annotators"],
        "outcomes": pull.counts["outcomes"],
        "agreement": pull.agreement,
        "pairs_kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
    }


def _model_annotation(
    annotate: Any, candidates: Any, kept: Any, dropped: Mapping[str, int]
) -> dict[str, Any]:
    from hfpref.core.columns import RESPONSE_ANNOTATED

    annotated = candidates[RESPONSE_ANNOTATED]
    return {
        "annotator": annotate.config.annotator,
        "responses": sum(len(row) for row in annotated),
        "responses_annotated": sum(sum(row) for row in annotated),
        "pairs_kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        **({"pairwise": _pairwise_counts(annotate, candidates)} if annotate.pairwise else {}),
    }


def _pairwise_counts(annotate: Any, candidates: Any) -> dict[str, int]:
    """A pairwise annotator's verdicts (ties and order disagreements) and failures over the round."""
    from hfpref.steps.judges.pairwise import pairwise_summary

    prefix = annotate.annotator.config.column_prefix
    counts = pairwise_summary(candidates, prefix)
    for name in ("parse_failures", "request_failures"):
        counts[name] = sum(candidates[f"{prefix}pairwise_{name}"])
    return counts


# ---- the card section ---------------------------------------------------------------------------------


def iteration_card_section(record: Mapping[str, Any]) -> str:
    """A markdown section for the round's card, from the manifest's ``iteration`` record."""
    selection, annotation = record["selection"], record["annotation"]
    margins = record["margins"]
    equal = selection.get("margins_all_equal") and selection["strategy"] != "random"
    lines = [
        *_title(record),
        f"- Policy that sampled the responses: `{record['policy']}`; its DPO reference: `{record['reference']}`"
        + (" (the same model)" if record["policy"] == record["reference"] else "")
        + ".",
        *(
            [
                f"- **All eligible margins were equal**, so `{selection['strategy']}` selected at random by the "
                "seed (`selection.on_equal_margins: random`)."
            ]
            if equal
            else []
        ),
        f"- Implicit reward r̂(y) = β·(log π(y|x) − log π_ref(y|x)), β = {margins['beta']}"
        + (", per-token (length-normalised)" if margins["length_normalize"] else ", summed over tokens")
        + "; a pair's margin is r̂(y_i) − r̂(y_j).",
        *_selection_lines(record),
        *_annotation_lines(annotation),
        f"- Unselected pairs stay in the `candidates` config (`selected_for_annotation` is false); the trained "
        f"policy is in `{record['next_policy']}` next to this release.",
        "",
    ]
    return "\n".join(lines)


def _title(record: Mapping[str, Any]) -> list[str]:
    """The section's heading (and, for the warm-up, what the warm-up round is)."""
    if not record.get("warmup"):
        return [
            f"## Iterative round {record['round']} of {record['rounds']} (annotation by implicit margins)",
            "",
        ]
    share = 100 * record["budget"]["warmup"]
    return [
        f"## Warm-up round (round 0 before {record['rounds']} rounds of annotation by implicit margins)",
        "",
        f"- Warm-up: {share:.4g}% of the total budget annotated at random, to train a policy "
        "that differs from its reference before pairs are selected by margin.",
    ]


def _selection_lines(record: Mapping[str, Any]) -> list[str]:
    selection, budget = record["selection"], record["budget"]
    this = budget["this_round"]
    share = f"{100 * this['fraction']:.4g}% of the pairs" if "fraction" in this else f"{this['count']} pairs"
    total = (
        f"{100 * budget['fraction']:.4g}% of all pairs"
        if budget.get("fraction")
        else f"{budget['pairs']} pairs"
    )
    schedule = budget["schedule"] if isinstance(budget["schedule"], str) else f"weights {budget['schedule']}"
    excluded = ", ".join(f"{k}: {v}" for k, v in selection["excluded"].items()) or "none"

    def stat(name: str) -> str:
        s = selection.get(name)
        return (
            "n/a"
            if not s
            else f"mean {s['mean']:.4g}, median {s['median']:.4g}, range {s['min']:.4g}–{s['max']:.4g}"
        )

    return [
        f"- Selection: `{selection['strategy']}` at {selection['level']} level, seed {selection['seed']}; "
        f"this round's budget: {share} (total {total} over {record['rounds']} rounds, schedule {schedule}).",
        f"- Pairs: {selection['pairs']} in all, {selection['eligible']} eligible (excluded: {excluded}), "
        f"{selection['selected']} selected in {selection['rows_with_selection']} of {selection['rows']} prompts.",
        f"- |margin| of the selected pairs: {stat('abs_margin_selected')}; of the eligible unselected pairs: "
        f"{stat('abs_margin_unselected')}.",
    ]


def _annotation_lines(annotation: Mapping[str, Any]) -> list[str]:
    dropped = ", ".join(f"{k}: {v}" for k, v in annotation["dropped"].items()) or "none"
    if annotation["annotator"] == "label-studio":
        lines = [
            f"- Annotation by people in Label Studio project `{annotation['project']}` (rule "
            f"{annotation['rule']}, at least {annotation['min_annotations']} annotation(s) a pair): "
            f"{annotation['pairs_pushed']} pairs, {annotation['annotations']} annotations by "
            f"{annotation['annotators']} annotator(s); {annotation['pairs_kept']} pairs kept, dropped: {dropped}.",
            "- People made this round's pairs, so the recipe as run above (which lists their config as a "
            "strategy) does not rerun with `hfpref curate`; rerun the loop's recipe with `hfpref iterate`, "
            "which pulls the same labels from the project.",
        ]
    else:
        lines = [
            f"- Annotation by `{annotation['annotator']}`: {annotation['responses_annotated']} of "
            f"{annotation['responses']} responses scored; {annotation['pairs_kept']} pairs kept, dropped: {dropped}."
        ]
    pw = annotation.get("pairwise")
    if pw:
        lines.append(
            f"- Pairwise judge, both orders per pair: {pw['judged_pairs']} pairs judged; "
            f"{pw['tie']} ties and {pw['order_disagreement']} order disagreements (both counted as ties); "
            f"{pw['parse_failure']} unreadable and {pw['request_failure']} failed."
        )
    return lines
