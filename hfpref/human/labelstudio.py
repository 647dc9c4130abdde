"""Pairwise human preference labels through a Label Studio server, and back as TRL preference rows.

The round trip:

1. ``pair_tasks_from_release`` / ``pair_tasks_from_rows`` / ``selected_pair_tasks`` turn a release's pairs
   (or the pairs an iterate round selected for annotation) into ``PairTask``\\ s. A pair's two responses
   are put in a canonical order (``response_1`` < ``response_2`` as JSON), so the same unordered pair
   always has the same ``pair_id`` (sha256 of prompt and both responses) whatever machine label it had.
2. ``push_pairs`` creates (or reuses) a project with the pairwise interface ``LABEL_CONFIG`` (prompt,
   responses A and B side by side, A / B / tie / skip, optional comment) and imports only the pairs whose
   ``pair_id`` the project does not hold yet: a second push is a no-op. Which response is shown as A is
   drawn per pair from ``seed`` and the ``pair_id`` (position bias is real, so it is randomised) and is
   recorded in the task itself (``shown_first``), so the server holds everything a pull needs.
3. People annotate in Label Studio's web UI.
4. ``pull_labels`` exports the project and ``collect_labels`` maps every vote back through the recorded
   order (a vote "A" is for the response that was shown as A), reduces several annotators' votes per pair
   by a declared rule (``majority`` or ``unanimous``), computes their agreement, counts ties and skips with
   their reasons (the comment), and reports pairs nobody finished as pending, never guessing them.
5. ``write_labels_release`` writes the result as a release folder (``load_release`` / ``train_dpo`` read
   it): config ``human`` (TRL rows, ``label_source = human:<annotator ids>``), ``pairs`` (every pushed
   pair once, with its outcome) and ``annotations`` (every vote), a manifest and a card with the counts.

Why plain HTTP with ``requests``: ``label-studio-sdk`` 2.x (and the server) pin numpy < 2.3 and other
packages below what hfpref uses, and the five REST calls needed here are small.

The API key comes from ``LABEL_STUDIO_API_KEY`` only (never a recipe, card or manifest). Both Label
Studio token kinds work: a legacy token (sent as ``Token <key>``) and a personal access token (a JWT
refresh token, exchanged at ``/api/token/refresh`` for a short-lived access token).

Annotator ids are Label Studio user ids (``user-<id>``), not e-mail addresses, so a published card or
dataset carries no personal data.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.errors import UserError

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DEFAULT_URL = "http://localhost:8080"
RULES = ("majority", "unanimous")
CHOICES = ("A", "B", "tie", "skip")
MANIFEST_FORMAT = "hfpref-human-labels/1"
HUMAN_CONFIG = "human"  # TRL preference rows made from the people's labels
PAIRS_CONFIG = "pairs"  # every pushed pair once, with its outcome
ANNOTATIONS_CONFIG = "annotations"  # every vote
CARD_TEMPLATE = "human_labels_card.md.j2"

# new columns of the pulled rows
LABEL_SOURCE = "label_source"  # "human:user-2,user-5": who voted for the label
PAIR_ID = "pair_id"
ANNOTATORS = "annotators"  # everyone who annotated the pair (skips included)
CHOSEN_SHOWN_FIRST = "chosen_shown_first"  # the order shown: was chosen the response on the left (A)?
TIME_SPENT_S = "time_spent_s"  # mean seconds an annotator spent on the pair (Label Studio's lead_time)
OUTCOME = "outcome"

# the labelling interface; $a / $b are the two responses in the order shown
LABEL_CONFIG = """<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt_text"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 50%;">
      <Header value="A"/>
      <Text name="response_a" value="$a"/>
    </View>
    <View style="flex: 50%;">
      <Header value="B"/>
      <Text name="response_b" value="$b"/>
    </View>
  </View>
  <Choices name="preference" toName="prompt" choice="single" required="true" showInLine="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="tie"/>
    <Choice value="skip"/>
  </Choices>
  <TextArea name="comment" toName="prompt" placeholder="optional comment (why tie / skip)" maxSubmissions="1"/>
</View>"""


class LabelStudioError(UserError):
    """Label Studio cannot be reached, refuses the key, or holds something hfpref did not expect."""


# ---- pairs as tasks ----------------------------------------------------------------------------------


def _as_text(value: Any) -> str:
    """What an annotator reads: a string as is, a list of chat messages as 'role: content' lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(m, Mapping) for m in value):
        return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    return json.dumps(value, ensure_ascii=False)


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def make_pair_id(prompt: Any, response_1: Any, response_2: Any) -> str:
    """Stable id of an unordered pair: sha256 over prompt and the two responses in canonical order."""
    first, second = sorted((response_1, response_2), key=_canonical)
    payload = _canonical([prompt, first, second]).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


def shown_first(seed: int, pair_id: str) -> int:
    """Which response (1 or 2) is shown as A: a fair coin seeded by ``seed`` and the pair id, so the
    order is random across pairs but the same on every push."""
    return 1 if random.Random(f"{seed}:{pair_id}").random() < 0.5 else 2


@dataclasses.dataclass(frozen=True)
class PairTask:
    """One pair to annotate; ``response_1`` < ``response_2`` canonically; ``first`` is shown as A."""

    pair_id: str
    prompt: Any
    response_1: Any
    response_2: Any
    first: int
    source: dict[str, Any]

    @classmethod
    def make(cls, prompt: Any, x: Any, y: Any, *, seed: int, source: Mapping[str, Any]) -> PairTask:
        """A pair of responses x, y (any order; ``source['indices']``, if given, follows x, y)."""
        source = dict(source)
        if _canonical(y) < _canonical(x):
            x, y = y, x
            if "indices" in source:
                source["indices"] = list(reversed(source["indices"]))
        pair_id = make_pair_id(prompt, x, y)
        return cls(pair_id, prompt, x, y, shown_first(seed, pair_id), source)

    def data(self) -> dict[str, Any]:
        """The Label Studio task data: what the interface shows and what a pull needs to map labels back."""
        a, b = (self.response_1, self.response_2) if self.first == 1 else (self.response_2, self.response_1)
        return {
            "prompt_text": _as_text(self.prompt),
            "a": _as_text(a),
            "b": _as_text(b),
            "pair_id": self.pair_id,
            "shown_first": self.first,
            "prompt": self.prompt,
            "response_1": self.response_1,
            "response_2": self.response_2,
            "source": self.source,
        }


def pair_tasks_from_rows(rows: Iterable[Mapping[str, Any]], *, seed: int, source: str) -> list[PairTask]:
    """Tasks from pairs rows (``prompt``, ``chosen``, ``rejected``); the machine's label is not shown.

    Input columns: ``prompt``, ``chosen``, ``rejected``. Rows with a missing (None) response are skipped.
    """
    tasks = []
    for i, row in enumerate(rows):
        if row.get(C.CHOSEN) is None or row.get(C.REJECTED) is None:
            continue
        tasks.append(
            PairTask.make(
                row[C.PROMPT], row[C.CHOSEN], row[C.REJECTED], seed=seed, source={"from": source, "row": i}
            )
        )
    return _unique(tasks)


def selected_pair_tasks(candidates: Any, *, seed: int, source: str) -> list[PairTask]:
    """Tasks from the pairs an iterate round selected for annotation (``hfpref.steps.margins``).

    Input columns: ``prompt``, ``responses``, ``pair_indices``, ``selected_for_annotation``. A pair with a
    missing (None) response is not a candidate and is not pushed.
    """
    from hfpref.core.columns import PAIR_INDICES, SELECTED_FOR_ANNOTATION

    names = candidates.column_names if hasattr(candidates, "column_names") else None
    missing = [
        c for c in (C.PROMPT, C.RESPONSES, PAIR_INDICES, SELECTED_FOR_ANNOTATION) if names and c not in names
    ]
    if missing:
        raise LabelStudioError(
            f"{source}: columns {missing} are missing (present: {names}); push a release's pairs config or "
            "the candidates of an iterate round, which mark the pairs selected for annotation"
        )
    tasks = []
    for row_index, row in enumerate(candidates):
        responses = row[C.RESPONSES]
        for (i, j), selected in zip(row[PAIR_INDICES], row[SELECTED_FOR_ANNOTATION], strict=True):
            if not selected or responses[i] is None or responses[j] is None:
                continue
            tasks.append(
                PairTask.make(
                    row[C.PROMPT],
                    responses[i],
                    responses[j],
                    seed=seed,
                    source={"from": source, "row": row_index, "indices": [i, j]},
                )
            )
    return _unique(tasks)


def _unique(tasks: list[PairTask]) -> list[PairTask]:
    """One task per pair id (two rows may hold the same pair): the first one wins."""
    seen: dict[str, PairTask] = {}
    for task in tasks:
        seen.setdefault(task.pair_id, task)
    return list(seen.values())


def pair_tasks_from_release(
    folder: str | Path, config: str | None = None, *, seed: int = 0
) -> list[PairTask]:
    """Tasks from a release folder: a pairs config, or (the default when it has them) the candidates
    with pairs selected for annotation, as an iterate round writes them."""
    from hfpref.core.columns import CANDIDATES_CONFIG, SELECTED_FOR_ANNOTATION
    from hfpref.release.writer import load_release, read_manifest

    manifest = read_manifest(folder)
    configs = manifest.get("configs", {})
    if config is None:
        candidates = configs.get(CANDIDATES_CONFIG, {})
        config = (
            CANDIDATES_CONFIG
            if SELECTED_FOR_ANNOTATION in candidates.get("columns", [])
            else manifest.get("default_config")
        )
    if config not in configs:
        raise LabelStudioError(f"{folder} has no config {config!r}; its configs are {sorted(configs)}")
    rows = load_release(folder, name=config)
    source = f"{Path(folder).name}/{config}"
    if configs[config].get("kind") == "candidates":
        return selected_pair_tasks(rows, seed=seed, source=source)
    return pair_tasks_from_rows(rows, seed=seed, source=source)


# ---- the client --------------------------------------------------------------------------------------


def api_key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise LabelStudioError(
            f"{API_KEY_ENV} is not set: copy your access token from Label Studio (Account & Settings) and "
            f"`export {API_KEY_ENV}=...` (the key is read from the environment only, never from a recipe)"
        )
    return key


class LabelStudioClient:
    """The few REST calls hfpref needs (projects, import, export, users), with errors a user can act on."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        import requests

        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self._key = api_key if api_key is not None else api_key_from_env()
        self.timeout = timeout
        self.session = requests.Session()
        self._auth: str | None = None

    def _authorization(self) -> str:
        if self._auth is None:
            if self._key.count(".") == 2:  # a personal access token (JWT refresh token)
                access = self._call("POST", "/api/token/refresh/", json={"refresh": self._key}, auth=False)
                self._auth = f"Bearer {access['access']}"
            else:
                self._auth = f"Token {self._key}"
        return self._auth

    def _call(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        import requests

        headers = {"Authorization": self._authorization()} if auth else {}
        where = f"{method} {self.url}{path}"
        try:
            response = self.session.request(
                method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.ConnectionError as err:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({type(err).__name__}): is the server running? "
                f"start it with `label-studio start --port PORT` or pass the right --url / {URL_ENV}"
            ) from None
        except requests.Timeout:
            raise LabelStudioError(
                f"Label Studio at {self.url} did not answer {where} within {self.timeout:.0f} s; retry later"
            ) from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the key in {API_KEY_ENV} ({response.status_code} on "
                f"{where}); copy a current access token from Account & Settings (a legacy token needs "
                "legacy tokens enabled for the organization)"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio answered {response.status_code} to {where}: {response.text[:300]!r}"
            )
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(
                f"{where} did not return JSON (is {self.url} a Label Studio server?)"
            ) from None

    def projects(self) -> list[dict[str, Any]]:
        found, page = [], 1
        while True:
            answer = self._call("GET", "/api/projects", params={"page": page, "page_size": 100})
            results = answer.get("results", []) if isinstance(answer, dict) else answer
            found += results
            if not isinstance(answer, dict) or not answer.get("next") or not results:
                return found
            page += 1

    def find_project(self, title: str) -> dict[str, Any] | None:
        matches = [p for p in self.projects() if p.get("title") == title]
        if len(matches) > 1:
            ids = [p["id"] for p in matches]
            raise LabelStudioError(
                f"{len(matches)} Label Studio projects are titled {title!r} (ids {ids}); rename all but one"
            )
        return matches[0] if matches else None

    def create_project(self, title: str, *, annotators_per_pair: int = 1) -> dict[str, Any]:
        return self._call(
            "POST",
            "/api/projects",
            json={
                "title": title,
                "description": "Pairwise preferences pushed by hfpref: pick the better response (A or B), "
                "tie, or skip; a comment says why.",
                "label_config": LABEL_CONFIG,
                "maximum_annotations": annotators_per_pair,
                "show_skip_button": True,
            },
        )

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (finished or not)."""
        return self._call(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )

    def import_tasks(self, project_id: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", f"/api/projects/{project_id}/import", json=[{"data": d} for d in data])


def project_url(client: LabelStudioClient, project_id: int) -> str:
    return f"{client.url}/projects/{project_id}/data"


def _require_project(client: LabelStudioClient, title: str) -> dict[str, Any]:
    project = client.find_project(title)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {client.url} has no project titled {title!r}; push pairs to it first "
            "(`hfpref annotate push SOURCE --project ...`) or check --project"
        )
    return project


# ---- push --------------------------------------------------------------------------------------------


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


# ---- pull --------------------------------------------------------------------------------------------


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
    seen: set[str] = set()
    rows, pairs, annotations, pending = [], [], [], []
    votes_by_pair: dict[str, list[Vote]] = {}
    outcomes: Counter = Counter()
    tie_reasons: Counter = Counter()
    skip_reasons: Counter = Counter()
    annotators: set[str] = set()
    for task in tasks:
        data = task.get("data", {})
        if "pair_id" not in data or "shown_first" not in data:
            continue  # a task not pushed by hfpref (someone imported it by hand)
        pair_id = data["pair_id"]
        if pair_id in seen:
            raise LabelStudioError(
                f"pair {pair_id} is in the project twice (tasks were imported outside hfpref); delete one"
            )
        seen.add(pair_id)
        votes = [parse_vote(task, a) for a in task.get("annotations") or []]
        votes_by_pair[pair_id] = votes
        annotators.update(v.annotator for v in votes)
        for v in votes:
            annotations.append(
                {
                    PAIR_ID: pair_id,
                    "annotator": v.annotator,
                    "shown": v.shown,
                    "prefers": v.prefers,
                    "response_1_shown_first": int(data["shown_first"]) == 1,
                    "comment": v.comment,
                    "lead_time_s": v.lead_time,
                }
            )
        outcome = "pending" if len(votes) < min_annotations else reduce_votes(votes, rule)
        outcomes[outcome] += 1
        for v in votes:
            if v.prefers == "tie":
                tie_reasons[v.comment or "no reason given"] += 1
            elif v.prefers == "skip":
                skip_reasons[
                    v.comment or ("skip button" if v.shown == "cancelled" else "no reason given")
                ] += 1
        count = Counter(v.prefers for v in votes)
        pairs.append(
            {
                PAIR_ID: pair_id,
                C.PROMPT: data["prompt"],
                "response_1": data["response_1"],
                "response_2": data["response_2"],
                "response_1_shown_first": int(data["shown_first"]) == 1,
                OUTCOME: outcome,
                "votes_response_1": count["response_1"],
                "votes_response_2": count["response_2"],
                "votes_tie": count["tie"],
                "votes_skip": count["skip"],
            }
        )
        if outcome == "pending":
            pending.append(pair_id)
            continue
        if outcome not in ("response_1", "response_2"):
            continue
        win = int(outcome[-1])
        source = data.get("source") or {}
        indices = source.get("indices")
        times = [v.lead_time for v in votes if v.lead_time is not None]
        rows.append(
            {
                C.PROMPT: data["prompt"],
                C.CHOSEN: data[f"response_{win}"],
                C.REJECTED: data[f"response_{3 - win}"],
                LABEL_SOURCE: "human:"
                + ",".join(sorted({v.annotator for v in votes if v.prefers == outcome})),
                PAIR_ID: pair_id,
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
        )
    counts = {
        "pairs": len(pairs),
        "labelled": len(rows),
        "pending": len(pending),
        "annotations": len(annotations),
        "annotators": len(annotators),
        "outcomes": dict(sorted(outcomes.items())),
        "tie_votes": sum(tie_reasons.values()),
        "skip_votes": sum(skip_reasons.values()),
        "tie_reasons": dict(tie_reasons.most_common()),
        "skip_reasons": dict(skip_reasons.most_common()),
        "chosen_shown_first": sum(r[CHOSEN_SHOWN_FIRST] for r in rows),
    }
    return PullResult(
        project,
        project_id,
        url,
        rule,
        min_annotations,
        rows,
        pairs,
        annotations,
        counts,
        agreement(votes_by_pair),
        pending,
    )


def pull_labels(
    client: LabelStudioClient, project: str, *, rule: str = "majority", min_annotations: int = 1
) -> PullResult:
    """Export project ``project`` and turn its annotations into preference rows (``collect_labels``)."""
    found = _require_project(client, project)
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


def labels_dataset(result: PullResult):
    """The TRL preference rows of a pull as a ``datasets.Dataset`` (what the iterate loop trains on)."""
    import datasets

    if not result.rows:
        return datasets.Dataset.from_dict({C.PROMPT: [], C.CHOSEN: [], C.REJECTED: [], LABEL_SOURCE: []})
    return datasets.Dataset.from_list(result.rows)


# ---- one round of the iterate loop -------------------------------------------------------------------


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


# ---- the release folder ------------------------------------------------------------------------------


def build_manifest(
    result: PullResult, *, name: str, version: str, created_at: str | None = None
) -> dict[str, Any]:
    """The machine-readable record of a human-labels release (no API key, no e-mail addresses)."""
    from hfpref.release.writer import DATA_GLOB, package_versions

    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created_at": created_at or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "label_source": "human",
        "annotation_tool": {
            "name": "label-studio",
            "project": result.project,
            "project_id": result.project_id,
            "url": result.url,
        },
        "rule": result.rule,
        "min_annotations": result.min_annotations,
        "counts": result.counts,
        "agreement": result.agreement,
        "pending_pair_ids": result.pending,
        "packages": package_versions(("hfpref", "datasets", "pyarrow")),
        "default_config": HUMAN_CONFIG,
        "configs": {
            HUMAN_CONFIG: {
                "kind": "pairs",
                "rows": len(result.rows),
                "data_files": DATA_GLOB.format(config=HUMAN_CONFIG),
            },
            PAIRS_CONFIG: {
                "kind": "pushed_pairs",
                "rows": len(result.pairs),
                "data_files": DATA_GLOB.format(config=PAIRS_CONFIG),
            },
            ANNOTATIONS_CONFIG: {
                "kind": "annotations",
                "rows": len(result.annotations),
                "data_files": DATA_GLOB.format(config=ANNOTATIONS_CONFIG),
            },
        },
    }


def render_card(manifest: Mapping[str, Any]) -> str:
    """The dataset card of a human-labels release, from ``cards/human_labels_card.md.j2``."""
    from importlib import resources

    import jinja2
    import yaml

    header = {
        "configs": [
            {
                "config_name": config,
                "data_files": [{"split": "train", "path": entry["data_files"]}],
                **({"default": True} if config == manifest["default_config"] else {}),
            }
            for config, entry in manifest["configs"].items()
        ],
        "tags": ["hfpref", "preference", "dpo", "human-annotated"],
    }
    text = (resources.files("hfpref.cards") / CARD_TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    return env.from_string(text).render(
        m=manifest, header=yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip()
    )


def _table(rows: list[dict[str, Any]], empty_columns: list[str]):
    """Rows as a Dataset; with no rows, the named (string) columns, so the Parquet file still loads."""
    import datasets

    if rows:
        return datasets.Dataset.from_list(rows)
    return datasets.Dataset.from_dict(
        {c: [] for c in empty_columns},
        features=datasets.Features({c: datasets.Value("string") for c in empty_columns}),
    )


def write_labels_release(
    result: PullResult,
    folder: str | Path,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    overwrite: bool = False,
    created_at: str | None = None,
) -> Path:
    """Write a pull as a release folder, atomically: built in a temporary folder beside ``folder`` and
    moved into place only when complete, so a failure leaves no partial output."""
    from hfpref.release.writer import CARD_FILE, DATA_FILE, MANIFEST_FILE, ReleaseError, _write_parquet

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MANIFEST_FILE).exists():
            raise ReleaseError(
                f"{folder} exists, is not empty and holds no {MANIFEST_FILE}: not writing into it"
            )
        if not overwrite:
            raise ReleaseError(f"{folder} already holds a release; pass --overwrite to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(result, name=name or folder.name, version=version, created_at=created_at)
    build = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tables = {
            HUMAN_CONFIG: labels_dataset(result),
            PAIRS_CONFIG: _table(result.pairs, [PAIR_ID, C.PROMPT, OUTCOME]),
            ANNOTATIONS_CONFIG: _table(result.annotations, [PAIR_ID, "annotator", "shown", "prefers"]),
        }
        for config, table in tables.items():
            _write_parquet(table, build / DATA_FILE.format(config=config))
        (build / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (build / CARD_FILE).write_text(render_card(manifest), encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            build.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            build.rename(folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return folder


__all__ = [
    "API_KEY_ENV",
    "LABEL_CONFIG",
    "RULES",
    "LabelStudioClient",
    "LabelStudioError",
    "PairTask",
    "PullResult",
    "PushResult",
    "RoundLabels",
    "Vote",
    "agreement",
    "annotation_status",
    "collect_labels",
    "label_round",
    "labels_dataset",
    "make_pair_id",
    "pair_tasks_from_release",
    "pair_tasks_from_rows",
    "pull_labels",
    "push_pairs",
    "reduce_votes",
    "selected_pair_tasks",
    "shown_first",
    "write_labels_release",
]
