"""People as the loop's annotator: a round's selected pairs go to Label Studio, and their labels are its pairs.

``annotation: {kind: label-studio, project: TITLE, url: URL, seed: 0, rule: majority, min_annotations: 1,
annotators_per_pair: 1}`` sends each round's selected pairs to people instead of a model
(``hfpref.human.labelstudio.label_round``): they are pushed to the Label Studio project ``TITLE round r``
(default title: the output name), and while any is pending the round's state is saved as
``awaiting_labels`` and the loop stops with ``LabelsPendingError`` (the CLI answers in one line, exit 2),
saying how many pairs are pending and where. Annotate them, then rerun the same command: the round's steps
are cache hits, the same pairs push nothing new, the labels are pulled, and once none is pending the pulled
rows (``label_source = human:<annotator ids>``) are the round's pairs (ties, skips and disagreements are its
drop reasons, ``human_<outcome>``) and training carries on. The API key is read only from
``LABEL_STUDIO_API_KEY``; a recipe with ``api_key`` is refused (a recipe is published with every release).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Any

from hfpref.core import columns as C
from hfpref.pipeline.iterate.errors import LabelsPendingError
from hfpref.pipeline.result import RecipeResult

if TYPE_CHECKING:
    from hfpref.pipeline.iterate.spec import IterateRecipe


@dataclasses.dataclass
class LabelStudioLabels:
    """What made a round's pairs when people label them, described like a step for ``pair_selection``."""

    settings: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"step": "LabelStudio", "version": "1", "config": dict(self.settings), "revision": None}

    def unload(self) -> None:
        """Nothing loaded: people, not a model, made the pairs."""


def human_result(recipe: IterateRecipe, r: int, result: RecipeResult) -> tuple[RecipeResult, Any]:
    """The round's result with people's pairs (and what ``label_round`` found), once none is pending;
    ``LabelsPendingError`` before that."""
    from hfpref.human.labelstudio import label_round

    settings = recipe.label_studio_settings(r)
    candidates = result.candidates
    labels = label_round(candidates, **settings, source=f"{recipe.output.name}/round-{r}")
    if labels.pending:
        raise LabelsPendingError(
            labels.pending_message(r), round_number=r, project=settings["project"], pending=labels.pending
        )
    name = recipe.selection_config(r).name
    kept, dropped = human_pairs(labels.pull, candidates, name)
    made = dataclasses.replace(
        result, pairs={name: kept}, dropped={name: dropped}, selectors={name: LabelStudioLabels(settings)}
    )
    return made, labels


def human_pairs(pull, candidates, strategy: str):
    """The round's TRL preference rows from a Label Studio pull, and the drop reasons of the other pairs.

    Input: ``pull.rows`` (``hfpref.human.labelstudio.collect_labels``: prompt, chosen, rejected, label_source,
    pair_id, annotators, votes, ``source_row``, ``chosen_index``, ``rejected_index``) and the round's
    candidates (``responses``, ``generators``, ``implicit_rewards`` when present). Output columns: the pulled
    columns, with ``chosen`` / ``rejected`` as one assistant message for a conversational prompt (as
    ``AnnotatedPairs`` writes them, so TRL sees one format), ``chosen_generator`` / ``rejected_generator``,
    ``implicit_reward_chosen`` / ``implicit_reward_rejected`` / ``implicit_margin`` (the margin TRL logs),
    and ``pair_strategy``. Drop reasons: ``human_<outcome>`` for ties, skips, no majority, disagreements.
    """
    import datasets

    rows = [_pair_row(pulled, candidates, strategy) for pulled in pull.rows]
    empty = {C.PROMPT: [], C.CHOSEN: [], C.REJECTED: [], C.PAIR_STRATEGY: []}
    kept = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(empty)
    dropped = Counter(
        {
            f"human_{outcome}": n
            for outcome, n in pull.counts["outcomes"].items()
            if outcome not in ("response_1", "response_2", "pending")
        }
    )
    return kept, dropped


def _pair_row(pulled: dict[str, Any], candidates: Any, strategy: str) -> dict[str, Any]:
    """One pulled label as a preference row, with its generators and implicit rewards from the candidates."""
    from hfpref.core.columns import IMPLICIT_REWARDS

    names = candidates.column_names
    row = dict(pulled)
    conversational = isinstance(row[C.PROMPT], list)
    for column in (C.CHOSEN, C.REJECTED):
        if conversational and isinstance(row[column], str):
            row[column] = [{"role": "assistant", "content": row[column]}]
    source, i, j = row.get("source_row"), row.get(C.CHOSEN_INDEX), row.get(C.REJECTED_INDEX)
    known = source is not None and i is not None and j is not None
    generators = candidates[source][C.GENERATORS] if known and C.GENERATORS in names else None
    row[C.CHOSEN_GENERATOR] = generators[i] if generators else None
    row[C.REJECTED_GENERATOR] = generators[j] if generators else None
    implicit = candidates[source][IMPLICIT_REWARDS] if known and IMPLICIT_REWARDS in names else None
    chosen_r, rejected_r = (implicit[i], implicit[j]) if implicit else (None, None)
    row["implicit_reward_chosen"], row["implicit_reward_rejected"] = chosen_r, rejected_r
    row["implicit_margin"] = (
        chosen_r - rejected_r if chosen_r is not None and rejected_r is not None else None
    )
    row[C.PAIR_STRATEGY] = strategy
    return row
