"""Votes back as preference rows: map each annotation through the recorded order, reduce several
annotators' votes per pair by a declared rule, measure their agreement, and count ties, skips and pending.

A vote "A" is for the response that was shown as A (``shown_first`` in the task). ``majority`` or
``unanimous`` decides a pair with several votes; pairs nobody finished are reported as pending, never
guessed. Annotator ids are Label Studio user ids (``user-<id>``), not e-mail addresses, so a published
card or dataset carries no personal data.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from hfpref.core import columns as C
from hfpref.human.labelstudio.client import LabelStudioError

RULES = ("majority", "unanimous")
CHOICES = ("A", "B", "tie", "skip")

# new columns of the pulled rows
LABEL_SOURCE = "label_source"  # "human:user-2,user-5": who voted for the label
PAIR_ID = "pair_id"
ANNOTATORS = "annotators"  # everyone who annotated the pair (skips included)
CHOSEN_SHOWN_FIRST = "chosen_shown_first"  # the order shown: was chosen the response on the left (A)?
TIME_SPENT_S = "time_spent_s"  # mean seconds an annotator spent on the pair (Label Studio's lead_time)
OUTCOME = "outcome"


@dataclasses.dataclass(frozen=True)
class Vote:
    """One annotation, mapped back through the recorded order."""

    pair_id: str
    annotator: str
    shown: str  # what was clicked: "A", "B", "tie", "skip", or "cancelled" (Label Studio's skip button)
    prefers: str  # "response_1", "response_2", "tie" or "skip"
    comment: str | None
    lead_time: float | None


def _annotator(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id")
    return f"user-{who}"


def parse_vote(task: Mapping[str, Any], annotation: Mapping[str, Any]) -> Vote:
    """The vote of one exported annotation: "A" is for the response recorded as shown first."""
    data = task["data"]
    choice, comment = None, None
    for item in annotation.get("result") or []:
        value = item.get("value", {})
        if item.get("from_name") == "preference" and value.get("choices"):
            choice = value["choices"][0]
        elif item.get("from_name") == "comment" and value.get("text"):
            comment = " ".join(value["text"]).strip() or None
    if annotation.get("was_cancelled"):
        shown = "cancelled"
    elif choice in CHOICES:
        shown = choice
    else:
        raise LabelStudioError(
            f"task {task.get('id')} (pair {data.get('pair_id')}), annotation {annotation.get('id')}: choice "
            f"{choice!r} is none of {CHOICES}; was the project's labelling interface edited?"
        )
    first = int(data["shown_first"])
    if shown == "A":
        prefers = f"response_{first}"
    elif shown == "B":
        prefers = f"response_{3 - first}"
    else:
        prefers = "tie" if shown == "tie" else "skip"
    lead = annotation.get("lead_time")
    return Vote(data["pair_id"], _annotator(annotation), shown, prefers, comment, lead)


def reduce_votes(votes: Sequence[Vote], rule: str) -> str:
    """The pair's outcome from its votes: "response_1", "response_2", "tie", "skipped",
    "no_majority" (majority rule: no label has more than half of the non-skip votes) or
    "disagreement" (unanimous rule: the non-skip votes differ)."""
    if rule not in RULES:
        raise LabelStudioError(f"rule {rule!r} is not one of {RULES}")
    counted = Counter(v.prefers for v in votes if v.prefers != "skip")
    if not counted:
        return "skipped"
    total = sum(counted.values())
    label, top = counted.most_common(1)[0]
    if rule == "unanimous":
        return label if top == total else "disagreement"
    return label if 2 * top > total else "no_majority"


def agreement(votes_by_pair: Mapping[str, Sequence[Vote]]) -> dict[str, Any]:
    """Pairwise agreement of annotators: over every pair with two or more non-skip votes, the share of
    annotator pairs whose votes (response_1 / response_2 / tie) are equal."""
    compared = agreeing = pairs = 0
    for votes in votes_by_pair.values():
        labels = [v.prefers for v in votes if v.prefers != "skip"]
        if len(labels) < 2:
            continue
        pairs += 1
        for x, y in combinations(labels, 2):
            compared += 1
            agreeing += x == y
    return {
        "pairs_with_several_votes": pairs,
        "annotator_pairs": compared,
        "agreeing_annotator_pairs": agreeing,
        "rate": agreeing / compared if compared else None,
    }


@dataclasses.dataclass
class PullResult:
    """What a pull found; ``rows`` are TRL preference rows, ``pairs`` one row per pushed pair."""

    project: str
    project_id: int | None
    url: str | None
    rule: str
    min_annotations: int
    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    counts: dict[str, Any]
    agreement: dict[str, Any]
    pending: list[str]


@dataclasses.dataclass
class _Tally:
    """What ``collect_labels`` accumulates over the tasks of an export."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pairs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    annotations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pending: list[str] = dataclasses.field(default_factory=list)
    votes_by_pair: dict[str, list[Vote]] = dataclasses.field(default_factory=dict)
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    tie_reasons: Counter = dataclasses.field(default_factory=Counter)
    skip_reasons: Counter = dataclasses.field(default_factory=Counter)
    annotators: set[str] = dataclasses.field(default_factory=set)

    def counts(self) -> dict[str, Any]:
        return {
            "pairs": len(self.pairs),
            "labelled": len(self.rows),
            "pending": len(self.pending),
            "annotations": len(self.annotations),
            "annotators": len(self.annotators),
            "outcomes": dict(sorted(self.outcomes.items())),
            "tie_votes": sum(self.tie_reasons.values()),
            "skip_votes": sum(self.skip_reasons.values()),
            "tie_reasons": dict(self.tie_reasons.most_common()),
            "skip_reasons": dict(self.skip_reasons.most_common()),
            "chosen_shown_first": sum(r[CHOSEN_SHOWN_FIRST] for r in self.rows),
        }


def collect_labels(
    tasks: Sequence[Mapping[str, Any]],
    *,
    rule: str = "majority",
    min_annotations: int = 1,
    project: str = "",
    project_id: int | None = None,
    url: str | None = None,
) -> PullResult:
    """Preference rows from a Label Studio export (every task, with its annotations).

    A pair with fewer than ``min_annotations`` finished annotations (skips count: a skip is finished) is
    pending: reported, never labelled. Output columns of ``rows``: ``prompt``, ``chosen``, ``rejected``,
    ``label_source``, ``pair_id``, ``annotators``, ``chosen_shown_first``, ``time_spent_s``,
    ``votes_chosen``, ``votes_rejected``, ``votes_tie``, ``votes_skip``, ``source_row``,
    ``chosen_index`` / ``rejected_index`` (positions in the candidates' ``responses``, or None).
    """
    if rule not in RULES:
        raise LabelStudioError(f"rule {rule!r} is not one of {RULES}")
    if min_annotations < 1:
        raise LabelStudioError(f"min_annotations must be at least 1, got {min_annotations}")
    tally = _Tally()
    for task in tasks:
        data = task.get("data", {})
        if "pair_id" not in data or "shown_first" not in data:
            continue  # a task not pushed by hfpref (someone imported it by hand)
        pair_id = data["pair_id"]
        if pair_id in tally.votes_by_pair:
            raise LabelStudioError(
                f"pair {pair_id} is in the project twice (tasks were imported outside hfpref); delete one"
            )
        votes = [parse_vote(task, a) for a in task.get("annotations") or []]
        outcome = "pending" if len(votes) < min_annotations else reduce_votes(votes, rule)
        _tally_pair(tally, data, votes, outcome)
    return PullResult(
        project,
        project_id,
        url,
        rule,
        min_annotations,
        tally.rows,
        tally.pairs,
        tally.annotations,
        tally.counts(),
        agreement(tally.votes_by_pair),
        tally.pending,
    )


def _tally_pair(tally: _Tally, data: Mapping[str, Any], votes: list[Vote], outcome: str) -> None:
    """Add one pushed pair: its votes, its row in ``pairs``, and its preference row when it has a winner."""
    pair_id = data["pair_id"]
    response_1_first = int(data["shown_first"]) == 1
    tally.votes_by_pair[pair_id] = votes
    tally.annotators.update(v.annotator for v in votes)
    tally.outcomes[outcome] += 1
    for v in votes:
        tally.annotations.append(
            {
                PAIR_ID: pair_id,
                "annotator": v.annotator,
                "shown": v.shown,
                "prefers": v.prefers,
                "response_1_shown_first": response_1_first,
                "comment": v.comment,
                "lead_time_s": v.lead_time,
            }
        )
        if v.prefers == "tie":
            tally.tie_reasons[v.comment or "no reason given"] += 1
        elif v.prefers == "skip":
            tally.skip_reasons[
                v.comment or ("skip button" if v.shown == "cancelled" else "no reason given")
            ] += 1
    count = Counter(v.prefers for v in votes)
    tally.pairs.append(
        {
            PAIR_ID: pair_id,
            C.PROMPT: data["prompt"],
            "response_1": data["response_1"],
            "response_2": data["response_2"],
            "response_1_shown_first": response_1_first,
            OUTCOME: outcome,
            "votes_response_1": count["response_1"],
            "votes_response_2": count["response_2"],
            "votes_tie": count["tie"],
            "votes_skip": count["skip"],
        }
    )
    if outcome == "pending":
        tally.pending.append(pair_id)
    elif outcome in ("response_1", "response_2"):
        tally.rows.append(_preference_row(data, votes, outcome, count))


def _preference_row(
    data: Mapping[str, Any], votes: list[Vote], outcome: str, count: Counter
) -> dict[str, Any]:
    """The TRL preference row of a pair the votes decided (``outcome``: "response_1" or "response_2")."""
    win = int(outcome[-1])
    source = data.get("source") or {}
    indices = source.get("indices")
    times = [v.lead_time for v in votes if v.lead_time is not None]
    return {
        C.PROMPT: data["prompt"],
        C.CHOSEN: data[f"response_{win}"],
        C.REJECTED: data[f"response_{3 - win}"],
        LABEL_SOURCE: "human:" + ",".join(sorted({v.annotator for v in votes if v.prefers == outcome})),
        PAIR_ID: data["pair_id"],
        ANNOTATORS: sorted({v.annotator for v in votes}),
        CHOSEN_SHOWN_FIRST: int(data["shown_first"]) == win,
        TIME_SPENT_S: statistics.fmean(times) if times else None,
        "votes_chosen": count[outcome],
        "votes_rejected": count[f"response_{3 - win}"],
        "votes_tie": count["tie"],
        "votes_skip": count["skip"],
        "source_row": source.get("row"),
        C.CHOSEN_INDEX: indices[win - 1] if indices else None,
        C.REJECTED_INDEX: indices[2 - win] if indices else None,
    }


def labels_dataset(result: PullResult):
    """The TRL preference rows of a pull as a ``datasets.Dataset`` (what the iterate loop trains on)."""
    import datasets

    if not result.rows:
        return datasets.Dataset.from_dict({C.PROMPT: [], C.CHOSEN: [], C.REJECTED: [], LABEL_SOURCE: []})
    return datasets.Dataset.from_list(result.rows)
