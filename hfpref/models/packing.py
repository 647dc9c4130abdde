"""Planning forward passes within a token budget: which sequences run together, and how they are laid out.

* ``SequenceQuery`` (a token sequence and the positions whose hidden states are wanted) and ``HiddenRows``
  (what one forward pass returns) are the runner's inputs and outputs;
* tree packing: ``split_group`` cuts a group of sequences sharing a prefix into ``Segment``s within the
  budget (prefix counted once), ``pack_segments`` bins segments first-fit-decreasing into passes;
* padded batches: ``plan_padded_batches`` groups length-sorted sequences so rows × padded width fits the budget
  (the runner's padded mode, custom reward heads and ``generate`` calls all batch this way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class SequenceQuery:
    """One token sequence and the (ascending) positions whose final hidden states are wanted."""

    tokens: Sequence[int]
    positions: Sequence[int]


@dataclasses.dataclass
class HiddenRows:
    """Hidden states of one forward pass: rows of ``keys[i]`` are where ``owner == i``, in position order."""

    keys: list[tuple[int, int]]  # (group, member) of each sequence in the pass
    hidden: torch.Tensor  # [rows, hidden_size], in the model's dtype
    owner: torch.Tensor  # [rows] long, index into keys


@dataclasses.dataclass
class Segment:
    """Sequences of one group packed around their shared prefix."""

    members: list[tuple[int, int]]
    queries: list[SequenceQuery]
    prefix: int

    @property
    def cost(self) -> int:
        return self.prefix + sum(len(q.tokens) - self.prefix for q in self.queries)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def split_group(group: int, queries: Sequence[SequenceQuery], token_budget: int) -> list[Segment]:
    """Segments of one group, each within the budget with its prefix counted once.

    A sequence longer than the budget gets a segment of its own (run over budget: it cannot be split).
    """
    order = sorted(range(len(queries)), key=lambda i: -len(queries[i].tokens))
    segments: list[Segment] = []
    for i in order:
        query = queries[i]
        current = segments[-1] if segments else None
        if current is not None:
            prefix = min(current.prefix, common_prefix(current.queries[0].tokens, query.tokens))
            total = sum(len(q.tokens) for q in current.queries) + len(query.tokens)
            if total - len(current.queries) * prefix <= token_budget:
                current.members.append((group, i))
                current.queries.append(query)
                current.prefix = prefix
                continue
        segments.append(Segment([(group, i)], [query], len(query.tokens)))
    return segments


def pack_segments(segments: list[Segment], token_budget: int) -> list[list[Segment]]:
    """First-fit decreasing bin packing of segments into forward passes of at most ``token_budget`` tokens."""
    bins: list[list[Segment]] = []
    loads: list[int] = []
    for segment in sorted(segments, key=lambda s: -s.cost):
        for b, load in enumerate(loads):
            if load + segment.cost <= token_budget:
                bins[b].append(segment)
                loads[b] += segment.cost
                break
        else:
            bins.append([segment])
            loads.append(segment.cost)
    return bins


def plan_padded_batches(
    lengths: Sequence[int],
    token_budget: int,
    *,
    row_cost: Callable[[int], int] = lambda width: width,
    longest_first: bool = True,
) -> list[list[int]]:
    """Indices of length-sorted sequences in batches whose padded cost, rows × ``row_cost(widest length)``,
    fits ``token_budget``; a sequence over budget alone still gets a batch. Equal lengths keep index order.

    The default cost is the right-padded size (the runner's padded mode, custom reward heads); a
    ``generate`` call also counts the tokens it will add (``row_cost``), and sampling takes its prompts
    shortest first (``longest_first=False``).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i] if longest_first else lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and (len(current) + 1) * row_cost(max(width, lengths[i])) > token_budget:
            batches.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, lengths[i])
    if current:
        batches.append(current)
    return batches
