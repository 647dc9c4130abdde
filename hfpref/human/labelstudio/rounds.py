"""The round trip with a server: push pairs (idempotent), pull their labels, and one iterate round of both.

``push_pairs`` creates (or reuses) a project with the pairwise interface and imports only the pairs whose
``pair_id`` the project does not hold yet, so a second push is a no-op; ``pull_labels`` exports the project
and turns its annotations into preference rows (``labels.collect_labels``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hfpref.human.labelstudio.client import LabelStudioClient, LabelStudioError, project_url, require_project
from hfpref.human.labelstudio.labels import PullResult, collect_labels
from hfpref.human.labelstudio.tasks import PairTask, selected_pair_tasks


@dataclasses.dataclass
class PushResult:
    project_id: int
    url: str
    created_project: bool
    pushed: int  # new pairs imported now
    already_there: int  # pairs the project held before this push


def push_pairs(
    client: LabelStudioClient, project: str, tasks: Sequence[PairTask], *, annotators_per_pair: int = 1
) -> PushResult:
    """Create or reuse project ``project`` and import the tasks whose pair id it does not hold yet."""
    if len(project.strip()) < 3:
        raise LabelStudioError(f"--project {project!r}: Label Studio needs a title of at least 3 characters")
    existing = client.find_project(project)
    created = existing is None
    if created:
        existing = client.create_project(project, annotators_per_pair=annotators_per_pair)
    elif '<Choice value="tie"/>' not in existing.get("label_config", ""):
        raise LabelStudioError(
            f"Label Studio project {project!r} (id {existing['id']}) was not made by hfpref (its interface has "
            "no A / B / tie / skip choices); push to a new --project name"
        )
    project_id = existing["id"]
    held = {t["data"].get("pair_id") for t in client.export(project_id)}
    new = [t.data() for t in tasks if t.pair_id not in held]
    if new:
        client.import_tasks(project_id, new)
    return PushResult(project_id, project_url(client, project_id), created, len(new), len(tasks) - len(new))


def pull_labels(
    client: LabelStudioClient, project: str, *, rule: str = "majority", min_annotations: int = 1
) -> PullResult:
    """Export project ``project`` and turn its annotations into preference rows (``collect_labels``)."""
    found = require_project(client, project)
    tasks = client.export(found["id"])
    return collect_labels(
        tasks,
        rule=rule,
        min_annotations=min_annotations,
        project=project,
        project_id=found["id"],
        url=project_url(client, found["id"]),
    )


def annotation_status(client: LabelStudioClient, project: str, *, min_annotations: int = 1) -> dict[str, Any]:
    """How many pushed pairs are finished and which are pending (what ``hfpref iterate`` waits for)."""
    result = pull_labels(client, project, min_annotations=min_annotations)
    return {"project": project, "url": result.url, **result.counts, "pending_pair_ids": result.pending}


@dataclasses.dataclass
class RoundLabels:
    """What ``label_round`` found: the push (new pairs, if any) and the labels so far."""

    push: PushResult
    pull: PullResult

    @property
    def pending(self) -> int:
        return len(self.pull.pending)

    def pending_message(self, round_number: int) -> str:
        done = self.pull.counts["pairs"] - self.pending
        return (
            f"round {round_number}: {self.pending} of {self.pull.counts['pairs']} pairs are still pending in "
            f"Label Studio project {self.pull.project!r} ({self.push.url}); {done} finished. Annotate them "
            "there, then rerun the same command: the loop resumes from the pulled labels"
        )


def label_round(
    candidates: Any,
    *,
    project: str,
    url: str | None = None,
    seed: int = 0,
    rule: str = "majority",
    min_annotations: int = 1,
    annotators_per_pair: int = 1,
    source: str = "iterate",
) -> RoundLabels:
    """Push a round's selected pairs (idempotent: a rerun pushes nothing new) and pull their labels.

    Input columns of ``candidates``: ``prompt``, ``responses``, ``pair_indices``,
    ``selected_for_annotation``. The loop stops while ``pending`` > 0 and trains on
    ``labels_dataset(result.pull)`` once it is 0 (rows carry ``chosen_index`` / ``rejected_index``).
    """
    client = LabelStudioClient(url)
    tasks = selected_pair_tasks(candidates, seed=seed, source=source)
    pushed = push_pairs(client, project, tasks, annotators_per_pair=annotators_per_pair)
    pulled = pull_labels(client, project, rule=rule, min_annotations=min_annotations)
    return RoundLabels(pushed, pulled)
