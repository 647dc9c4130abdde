"""Responses as small integer codes for rapidfuzz: whitespace words split in Arrow, relabelled per prompt.

``PairMetrics`` needs, per prompt, each response as a sequence of symbols such that two responses share a
symbol exactly where they share a word (or token id). Levenshtein distances only depend on which symbols
are equal, so any one-to-one relabelling within a prompt gives the same distances. This module makes those
sequences for a whole batch at once, in C (Arrow kernels and numpy) instead of per word in Python:

* ``split_words``: ``str.split()`` of every text as one flat Arrow array of words, via
  ``pyarrow.compute.ascii_split_whitespace`` after mapping Python's other whitespace characters to " "
  (a test checks every code point); texts Arrow cannot take (lone surrogates, which have no UTF-8 form)
  are split in Python instead.
* ``flat_tokens``: token sequences given as Python lists (token ids, or words) in the same flat form.
* ``dense_ranks``: the tokens relabelled 0, 1, 2, ... by falling frequency within each prompt, exactly as
  ``pair_metrics.dense_symbols`` relabels one prompt (Arrow's ``dictionary_encode`` per prompt, then numpy
  for every prompt at once): rapidfuzz looks symbols below 256 up in a flat table and others in a hash
  map, so frequent words get the small codes.
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
# what str.split() splits at beyond Arrow's ASCII whitespace (" \t\n\v\f\r"): mapped to " " first.
# (Arrow's utf8_split_whitespace knows these too, but sometimes misses a multi-byte one at a text's end:
# pyarrow 26 gave different splits of the same array from one call to the next.)
_NON_ASCII_SPACE = "[\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


@dataclass(frozen=True)
class FlatTokens:
    """A batch's token sequences, flattened: sequence i is ``values[offsets[i]:offsets[i + 1]]``.

    ``values`` is an Arrow array of the tokens themselves (words as strings, token ids as int64), or of
    int64 stand-ins, equal exactly where the tokens are, for tokens Arrow cannot hold.
    """

    values: pa.Array
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


def split_words(texts: Sequence[str]) -> FlatTokens:
    """``text.split()`` of every text, split in Arrow."""
    try:
        array = pa.array(texts, type=pa.large_string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        # a lone surrogate (e.g. from surrogateescape decoding) has no UTF-8 form: Python splits those texts
        return flat_tokens([text.split() for text in texts])
    if pc.any(pc.match_substring_regex(array, _NON_ASCII_SPACE)).as_py():
        array = pc.replace_substring_regex(array, _NON_ASCII_SPACE, " ")
    pieces = pc.ascii_split_whitespace(array)
    # Arrow splits at each run of whitespace like Python, but leading and trailing runs leave empty
    # pieces ("  a " -> ["", "a", ""]) where str.split() gives none: drop every empty piece
    kept = pc.greater(pc.binary_length(pieces.values), 0)
    kept_before = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept.to_numpy(zero_copy_only=False), out=kept_before[1:])
    return FlatTokens(pieces.values.filter(kept), kept_before[pieces.offsets.to_numpy()])


def flat_tokens(sequences: Sequence[Sequence[Any]]) -> FlatTokens:
    """Token sequences (lists of token ids, or of words) in the flat form ``dense_ranks`` takes."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = list(itertools.chain.from_iterable(sequences))
    kinds = set(map(type, tokens))
    try:
        if kinds <= {int}:  # exactly int: Arrow would also take floats equal to an id
            return FlatTokens(pa.array(tokens, type=pa.int64()), offsets)
        if kinds == {str}:
            return FlatTokens(pa.array(tokens, type=pa.large_string()), offsets)
    except (OverflowError, UnicodeEncodeError, pa.ArrowInvalid):
        pass  # ids past int64, lone surrogates: stand-ins below
    index: dict[Any, int] = {}  # any hashable tokens: one int per distinct token
    stand_ins = np.fromiter(
        (index.setdefault(t, len(index)) for t in tokens), dtype=np.int64, count=len(tokens)
    )
    return FlatTokens(pa.array(stand_ins), offsets)


def dense_ranks(tokens: FlatTokens, group_sizes: Sequence[int]) -> np.ndarray:
    """Every token relabelled by its rank of frequency within its group (0 = the group's most frequent,
    ties in order of first appearance: ``pair_metrics.dense_symbols`` of each group), as int64 aligned
    with ``tokens.values``.

    Sequences are grouped in order, ``group_sizes[g]`` sequences to group g (one group = one prompt's
    responses).
    """
    bounds = np.zeros(len(group_sizes) + 1, dtype=np.int64)
    np.cumsum(group_sizes, out=bounds[1:])
    token_bounds = tokens.offsets[bounds].tolist()
    # each group's tokens coded in order of first appearance, by Arrow's hash table (one call per group:
    # a batch-wide (group, token) key would need a sort or a table as large as groups x vocabulary)
    local, distinct = [], []
    for start, stop in itertools.pairwise(token_bounds):
        encoded = pc.dictionary_encode(tokens.values.slice(start, stop - start))
        local.append(encoded.indices.to_numpy(zero_copy_only=False))
        distinct.append(len(encoded.dictionary))
    if not local or not token_bounds[-1]:
        return np.zeros(token_bounds[-1] if token_bounds else 0, dtype=np.int64)
    # then every group at once: (group, local code) numbered consecutively, counted, ranked within groups
    first_key = np.zeros(len(distinct) + 1, dtype=np.int64)
    np.cumsum(distinct, out=first_key[1:])
    key = np.concatenate(local).astype(np.int64) + np.repeat(first_key[:-1], np.diff(token_bounds))
    count = np.bincount(key, minlength=first_key[-1])
    group_of_key = np.repeat(np.arange(len(distinct)), distinct)
    order = np.lexsort((-count, group_of_key))  # stable: ties keep the order of first appearance
    rank = np.empty(first_key[-1], dtype=np.int64)
    rank[order] = np.arange(first_key[-1]) - first_key[group_of_key[order]]
    return rank[key]


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
