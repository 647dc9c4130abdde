"""Responses as small integer codes for rapidfuzz: whitespace words split in Arrow, relabelled per prompt.

``PairMetrics`` needs, per prompt, each response as a sequence of symbols such that two responses share a
symbol exactly where they share a word (or token id). Levenshtein distances only depend on which symbols
are equal, so any one-to-one relabelling within a prompt gives the same distances. This module makes those
sequences for a whole batch at once, in C (Arrow kernels and numpy) instead of per word in Python:

* ``split_words``: ``str.split()`` of every text, as codes into one batch-wide dictionary of words, via
  ``pyarrow.compute.utf8_split_whitespace`` and ``dictionary_encode``. Arrow's whitespace set equals
  Python's ``str.isspace`` (every code point is checked by a test); texts Arrow cannot take (lone
  surrogates, which have no UTF-8 form) are split in Python instead.
* ``flat_tokens``: token sequences given as Python lists (token ids, or words) in the same flat form.
* ``dense_ranks``: the codes relabelled 0, 1, 2, ... by falling frequency within each prompt (the order
  ``pair_metrics.dense_symbols`` gives one prompt): rapidfuzz looks symbols below 256 up in a flat table
  and others in a hash map, so frequent words get the small codes.
* ``as_strings``: each response's relabelled codes as a Python ``str`` (code k is the character k), which
  rapidfuzz reads natively: no per-element conversion of Python ints, and a prompt whose codes are all
  below 256 becomes 1-byte strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# codes at or above 0xD800 skip the surrogate block (0xD800-0xDFFF), which str can hold but UTF-32
# decoding refuses; past the last code point a prompt's symbols stay Python lists
_SURROGATES = 0xD800
_SURROGATE_SPAN = 0x800
_MAX_CODE_POINT = 0x10FFFF
# count (group, code) pairs in a flat table up to this many cells (32 MB of int64), or 4 per word
_MAX_TABLE = 1 << 22


@dataclass(frozen=True)
class FlatTokens:
    """A batch's token sequences, flattened: sequence i is ``codes[offsets[i]:offsets[i + 1]]``.

    Two sequences share a code exactly where they share a token. ``codes`` are int64 and >= 0.
    """

    codes: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


def split_words(texts: Sequence[str]) -> FlatTokens:
    """``text.split()`` of every text as codes of one shared word dictionary."""
    try:
        array = pa.array(texts, type=pa.large_string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        # a lone surrogate (e.g. from surrogateescape decoding) has no UTF-8 form: Python splits those texts
        return flat_tokens([text.split() for text in texts])
    pieces = pc.utf8_split_whitespace(array)
    # Arrow splits at each run of whitespace like Python, but leading and trailing runs leave empty
    # pieces ("  a " -> ["", "a", ""]) where str.split() gives none: drop every empty piece
    kept = pc.greater(pc.binary_length(pieces.values), 0)
    words = pieces.values.filter(kept)
    kept_before = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept.to_numpy(zero_copy_only=False), out=kept_before[1:])
    offsets = kept_before[pieces.offsets.to_numpy()]
    codes = pc.dictionary_encode(words).indices.to_numpy(zero_copy_only=False)
    return FlatTokens(codes.astype(np.int64), offsets)


def flat_tokens(sequences: Sequence[Sequence[Any]]) -> FlatTokens:
    """Token sequences (lists of token ids, or of words) in the flat form ``dense_ranks`` takes."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = list(itertools.chain.from_iterable(sequences))
    if set(map(type, tokens)) <= {int}:  # token ids (exactly int: numpy would also parse digit strings)
        ids = np.array(tokens, dtype=np.int64) if tokens else np.zeros(0, dtype=np.int64)
        codes = np.unique(ids, return_inverse=True)[1]
    else:  # words (or any hashable tokens): one code per distinct token
        index: dict[Any, int] = {}
        codes = np.fromiter(
            (index.setdefault(t, len(index)) for t in tokens), dtype=np.int64, count=len(tokens)
        )
    return FlatTokens(codes.astype(np.int64).reshape(-1), offsets)


def dense_ranks(tokens: FlatTokens, group_sizes: Sequence[int]) -> np.ndarray:
    """Every code relabelled by its rank of frequency within its group (0 = the group's most frequent).

    Sequences are grouped in order, ``group_sizes[g]`` sequences to group g (one group = one prompt's
    responses). Returns the relabelled codes, aligned with ``tokens.codes``.
    """
    codes = tokens.codes
    if not len(codes):
        return codes.copy()
    groups = len(group_sizes)
    group_of_sequence = np.repeat(np.arange(groups, dtype=np.int64), np.asarray(group_sizes, dtype=np.int64))
    group = np.repeat(group_of_sequence, np.diff(tokens.offsets))
    # one key per (group, code): the same word in two prompts is two symbols, ranked in each
    span = int(codes.max()) + 1
    key = group * span + codes
    if groups * span <= _MAX_TABLE or groups * span <= 4 * len(codes):
        # a table of counts over every (group, code): one pass, no hashing or sorting of the words
        count = np.bincount(key, minlength=groups * span)
        distinct = np.flatnonzero(count)
        count = count[distinct]
        inverse = None
    else:  # a vocabulary too large for that table: sort the keys
        distinct, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
    distinct_group = distinct // span
    order = np.lexsort((-count, distinct_group))  # by group, then falling count
    first_of_group = np.searchsorted(distinct_group[order], np.arange(groups))
    rank = np.empty(len(distinct), dtype=np.int64)
    rank[order] = np.arange(len(distinct)) - first_of_group[distinct_group[order]]
    if inverse is not None:
        return rank[inverse]
    table = np.empty(groups * span, dtype=np.int64)
    table[distinct] = rank
    return table[key]


def as_strings(ranks: np.ndarray, offsets: np.ndarray) -> list[str] | None:
    """Each sequence ``ranks[offsets[i]:offsets[i + 1]]`` as a str of those code points, or None when a
    rank is past the last code point (more distinct symbols in a group than Unicode has characters)."""
    top = int(ranks.max()) if len(ranks) else 0
    if top >= _SURROGATES:
        ranks = ranks + (ranks >= _SURROGATES) * _SURROGATE_SPAN
        top += _SURROGATE_SPAN
    if top > _MAX_CODE_POINT:
        return None
    # one decode for the batch; each slice is stored as compactly as its largest character allows
    text = ranks.astype("<u4").tobytes().decode("utf-32-le")
    bounds = offsets.tolist()
    return [text[start:stop] for start, stop in itertools.pairwise(bounds)]


def rapidfuzz_symbols(tokens: FlatTokens, group_sizes: Sequence[int]) -> list[str] | list[list[int]]:
    """Each sequence relabelled densely within its group (what ``pair_metrics.dense_symbols`` does to one
    group, for the whole batch in one pass), as strs rapidfuzz reads natively, or as lists of ints for a
    batch with more distinct symbols in a group than Unicode has characters."""
    ranks = dense_ranks(tokens, group_sizes)
    strings = as_strings(ranks, tokens.offsets)
    if strings is not None:
        return strings
    return [ranks[start:stop].tolist() for start, stop in itertools.pairwise(tokens.offsets.tolist())]
