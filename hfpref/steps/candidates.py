"""Candidates rows as the model-scoring steps read them: a prompt and its N responses, some possibly missing.

``candidates_rows`` checks each row of a batch (``check_candidates_row``: the prompt a string or chat
messages, the responses strings) and keeps only the real responses (a None response is missing: not
scored); ``CandidatesRow.realign`` puts per-response results back at their positions, None for the missing
ones, so every output list is as long as the row's ``responses``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from hfpref.core import columns
from hfpref.core.step import Batch, RowError, row_label

Prompt = str | list[dict[str, Any]]  # a plain-text prompt, or chat messages {"role", "content"}


def check_candidates_row(prompt: Any, responses: Any, label: str) -> None:
    """Raise ``RowError`` unless ``prompt`` is a string or chat messages and ``responses`` a list of strings."""
    messages_ok = (
        isinstance(prompt, list)
        and len(prompt) > 0
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
    )
    if not (isinstance(prompt, str) or messages_ok):
        raise RowError(
            f"{label}: column 'prompt' must be a string or a non-empty list of {{'role', 'content'}} "
            f"messages, got {prompt!r}"
        )
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RowError(f"{label}: column 'responses' must be a list of strings, got {responses!r}")


@dataclasses.dataclass(frozen=True)
class CandidatesRow:
    """One checked row: its label for errors, the prompt, and its real responses with their positions."""

    label: str
    prompt: Prompt
    responses: list[str]  # the real (not None) responses, in order
    present: list[int]  # the position of each real response among all of the row's responses
    size: int  # how many responses the row has, missing ones included

    def realign(self, values: Sequence[Any]) -> list[Any]:
        """Values of the real responses put back at their positions, None for the missing ones."""
        out: list[Any] = [None] * self.size
        for k, value in zip(self.present, values, strict=True):
            out[k] = value
        return out


def candidates_rows(batch: Batch, indices: list[int] | None) -> Iterator[CandidatesRow]:
    """The batch's rows in order, each checked as it is reached, with its missing (None) responses set aside."""
    for i, (prompt, responses) in enumerate(
        zip(batch[columns.PROMPT], batch[columns.RESPONSES], strict=True)
    ):
        label = row_label(batch, i, indices)
        present, real = _real_responses(responses)
        check_candidates_row(prompt, real, label)
        yield CandidatesRow(label, prompt, real, present, len(responses))


def _real_responses(responses: Any) -> tuple[list[int], Any]:
    """Positions and texts of a row's real responses; a non-list is returned as is, for the check to report."""
    if not isinstance(responses, list):
        return [], responses
    present = [k for k, text in enumerate(responses) if text is not None]
    return present, [responses[k] for k in present]
