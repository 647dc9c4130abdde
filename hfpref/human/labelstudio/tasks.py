"""Pairs as Label Studio tasks: from a release's pairs, from pairs rows, or from an iterate round's selection.

A pair's two responses are put in a canonical order (``response_1`` < ``response_2`` as JSON), so the
same unordered pair always has the same ``pair_id`` (sha256 of prompt and both responses) whatever machine
label it had. Which response is shown as A is drawn per pair from a seed and the ``pair_id`` (position bias
is real, so it is randomised) and recorded in the task (``shown_first``), so the server holds everything a
pull needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.columns import CANDIDATES_CONFIG
from hfpref.human.labelstudio.client import LabelStudioError


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
    from hfpref.core.columns import SELECTED_FOR_ANNOTATION
    from hfpref.release.folder import read_manifest
    from hfpref.release.load import load_release

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
