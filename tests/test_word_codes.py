"""word_codes: Arrow's word split against str.split() over every code point, the per-prompt relabelling,
and the str form (independent expectations: Python's own split, first-occurrence codes, counts)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hfpref.steps import word_codes
from hfpref.steps.word_codes import FlatTokens, as_strings, dense_ranks, flat_tokens, split_words

# every character str.isspace() calls whitespace, and a few that look like it but are not
WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
NOT_WHITESPACE = ["\u200b", "\ufeff", "\u180e", "\x00", "\u2060"]


def first_occurrence_codes(sequences: list[list[str]]) -> list[int]:
    """The reference: every word of every sequence, coded 0, 1, 2, ... in order of first appearance."""
    index: dict[str, int] = {}
    return [index.setdefault(word, len(index)) for word in itertools.chain.from_iterable(sequences)]


def assert_splits_like_python(texts: list[str]) -> None:
    words = [text.split() for text in texts]
    flat = split_words(texts)
    assert np.diff(flat.offsets).tolist() == [len(w) for w in words]
    # Arrow's dictionary codes words in order of first appearance: equal codes exactly where words are equal
    assert flat.codes.tolist() == first_occurrence_codes(words)


def test_split_equals_str_split_for_every_code_point():
    assert set(WHITESPACE) >= {"\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000"}  # Python's set, checked
    # each character leading, doubled between two words and trailing: two words where it is whitespace,
    # one where it is not (the messy-text test below checks the words themselves)
    chars = [chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF]  # surrogates: below
    texts = [f"{c}a{c}{c}b{c}" for c in chars]
    counts = np.diff(split_words(texts).offsets)
    expected = np.array([len(text.split()) for text in texts])
    differ = np.flatnonzero(counts != expected)
    assert not len(differ), [hex(ord(chars[k])) for k in differ[:10]]
    assert_splits_like_python(WHITESPACE + [f" {c}a{c}{c}b{c} " for c in WHITESPACE])


def test_lone_surrogates_fall_back_to_python():
    texts = ["a \ud800 b", "a\udcffb a", "", "  ", "a"]
    assert_splits_like_python(texts)


messy_text = st.lists(
    st.one_of(
        st.sampled_from(["a", "b", "ab", "A", "é", "日本", "a\u200bb", "x"]),
        st.sampled_from(WHITESPACE + NOT_WHITESPACE),
        st.text(max_size=4),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=100, deadline=None)
@given(st.lists(messy_text, max_size=8))
def test_split_equals_str_split_on_messy_texts(texts):
    assert_splits_like_python(texts)


def test_flat_tokens_of_ids_and_of_words():
    ids = flat_tokens([[500, 7, 500], [], [7, 2**40]])
    assert ids.offsets.tolist() == [0, 3, 3, 5]
    assert ids.codes.tolist() == [1, 0, 1, 0, 2]  # numpy's sorted distinct ids
    words = flat_tokens([["b", "a"], ["a"]])
    assert words.codes.tolist() == [0, 1, 1] and len(words) == 2
    assert len(flat_tokens([])) == 0 and len(flat_tokens([[], []]).codes) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.lists(st.integers(0, 40), max_size=15), max_size=5), min_size=1, max_size=6))
def test_dense_ranks_relabel_each_group_by_falling_frequency(groups):
    sequences = [seq for group in groups for seq in group]
    flat = flat_tokens(sequences)
    ranks = dense_ranks(flat, [len(group) for group in groups])
    start = 0
    for group in groups:
        tokens = [t for seq in group for t in seq]
        got = ranks[start : start + len(tokens)].tolist()
        start += len(tokens)
        # one-to-one within the group, onto 0..k-1
        pairs = set(zip(tokens, got, strict=True))
        assert len(pairs) == len(set(tokens)) == len(set(got))
        assert set(got) == set(range(len(set(tokens))))
        # rank r+1 is never more frequent than rank r
        counts = Counter(got)
        assert all(counts[r] >= counts[r + 1] for r in range(len(counts) - 1))
    assert start == len(ranks)


def test_dense_ranks_past_the_count_table_sort_instead(monkeypatch):
    flat = flat_tokens([[5, 5, 9], [9, 5], [1, 2, 1], [2]])
    small = dense_ranks(flat, [2, 2]).tolist()
    monkeypatch.setattr(word_codes, "_MAX_TABLE", 0)
    assert dense_ranks(flat, [2, 2]).tolist() == small == [0, 0, 1, 1, 0, 0, 1, 0, 1]


def test_as_strings_skip_surrogates_and_give_up_past_unicode(monkeypatch):
    ranks = np.array([0, 255, 0xD7FF, 0xD800, 0xDFFF, 0xE000, 0x10F7FF])
    strings = as_strings(ranks, np.array([0, 2, 2, 7]))
    assert strings[0] == "\x00\xff" and strings[1] == ""
    assert [ord(c) for c in strings[2]] == [
        0xD7FF,
        0xE000,
        0xE7FF,
        0xE800,
        0x10FFFF,
    ]  # one-to-one, no surrogate
    assert as_strings(np.array([0x10F800]), np.array([0, 1])) is None
    assert as_strings(np.zeros(0, dtype=np.int64), np.array([0, 0])) == [""]
    monkeypatch.setattr(word_codes, "_MAX_CODE_POINT", 10)
    assert as_strings(np.array([3, 11]), np.array([0, 2])) is None


def test_flat_tokens_is_a_sequence_count():
    assert len(FlatTokens(np.zeros(0, dtype=np.int64), np.array([0, 0, 0]))) == 2
