"""word_codes: Arrow's word split against str.split() over every code point, the per-prompt relabelling
against dense_symbols of each prompt, and the str form."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from hfpref.steps import word_codes
from hfpref.steps.pair_metrics import dense_symbols
from hfpref.steps.word_codes import (
    FlatTokens,
    as_strings,
    dense_ranks,
    flat_tokens,
    rapidfuzz_symbols,
    split_words,
)

# every character str.isspace() calls whitespace, and a few that look like it but are not
WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
NOT_WHITESPACE = ["\u200b", "\ufeff", "\u180e", "\x00", "\u2060"]


def assert_splits_like_python(texts: list[str]) -> None:
    words = [text.split() for text in texts]
    flat = split_words(texts)
    assert np.diff(flat.offsets).tolist() == [len(w) for w in words]
    if flat.values.type == "large_string":
        assert flat.values.to_pylist() == [word for w in words for word in w]
    else:  # stand-ins (lone surrogates): equal exactly where the words are
        stand_in = dict(zip(itertools.chain.from_iterable(words), flat.values.to_pylist(), strict=True))
        assert len(set(stand_in.values())) == len(stand_in)


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


def test_the_mapped_set_is_python_whitespace_beyond_ascii():
    mapped = {c for c in WHITESPACE if re.fullmatch(word_codes._NON_ASCII_SPACE, c)}
    assert mapped == set(WHITESPACE) - set(" \t\n\v\f\r")


def test_repeated_splits_of_texts_ending_in_wide_spaces_agree():
    # pyarrow's utf8_split_whitespace split these differently from one call to the next
    rng = random.Random(0)
    pool = [*WHITESPACE, "a", "日本", "b\u200b"]
    for _ in range(300):
        texts = ["".join(rng.choices(pool, k=rng.randint(0, 10))) for _ in range(rng.randint(1, 5))]
        assert_splits_like_python(texts)


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


def test_flat_tokens_of_ids_words_and_other_tokens():
    ids = flat_tokens([[500, 7, 500], [], [7, 2**40]])
    assert ids.offsets.tolist() == [0, 3, 3, 5] and ids.values.to_pylist() == [500, 7, 500, 7, 2**40]
    words = flat_tokens([["b", "a"], ["a"]])
    assert words.values.to_pylist() == ["b", "a", "a"] and len(words) == 2
    # past int64, lone surrogates, mixed kinds: int stand-ins, equal where the tokens are
    for tokens in ([[2**70, 1], [1, 2**70]], [["\ud800", "a"], ["a", "\ud800"]], [[1, "1"], ["1", 1.0]]):
        assert flat_tokens(tokens).values.to_pylist() == [0, 1, 1, 0]
    assert len(flat_tokens([])) == 0 and len(flat_tokens([[], []]).values) == 0


def dense_symbols_of_groups(groups: list[list[list]]) -> list[int]:
    """The reference: each group relabelled on its own by ``pair_metrics.dense_symbols``."""
    return [code for group in groups for seq in dense_symbols(group) for code in seq]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.lists(st.integers(0, 40) | st.sampled_from(["a", "b"]), max_size=15), max_size=5),
        max_size=6,
    ),
    st.booleans(),
)
def test_dense_ranks_equal_dense_symbols_of_each_group(groups, as_words):
    if as_words:  # the same shapes as words, split from texts
        groups = [[[str(t) for t in seq] for seq in group] for group in groups]
        flat = split_words([" ".join(seq) for group in groups for seq in group])
    else:
        flat = flat_tokens([seq for group in groups for seq in group])
    ranks = dense_ranks(flat, [len(group) for group in groups])
    assert ranks.dtype == np.int64 and ranks.tolist() == dense_symbols_of_groups(groups)


def test_rapidfuzz_symbols_as_strings_or_lists(monkeypatch):
    flat = flat_tokens([["x", "y", "x"], ["y"], ["z"]])
    assert rapidfuzz_symbols(flat, [2, 1]) == ["\x00\x01\x00", "\x01", "\x00"]
    monkeypatch.setattr(word_codes, "_MAX_CODE_POINT", 0)
    assert rapidfuzz_symbols(flat, [2, 1]) == [[0, 1, 0], [1], [0]]


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
    assert len(FlatTokens(pa.array([], type=pa.int64()), np.array([0, 0, 0]))) == 2
