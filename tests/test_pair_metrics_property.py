"""PairMetrics on messy rows against a straightforward reference (hypothesis).

The reference computes every cell on its own: e_Δ = Levenshtein.distance of the two responses'
``str.split()`` word lists, p_Δ = |ref_logps[i] − ref_logps[j]|, r_Δ = rewards[i] − rewards[j],
DCRM = (σ(r_Δ) − 0.5) / (e_Δ + p_Δ + ε) (DESIGN.md; σ(x) − 0.5 written as tanh(x/2)/2, the same value
without cancellation), None / NaN where a response is missing, NaN where a reward or log-prob is.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from hfpref.steps import word_codes
from hfpref.steps.pair_metrics import PairMetrics

SPACES = [" ", "  ", "\t", "\n", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\r\n "]


def reference_row(responses, rewards, logps, eps=1.0):
    n = len(responses)
    words = [None if r is None else r.split() for r in responses]
    reward = [math.nan if v is None else float(v) for v in rewards]
    logp = None if logps is None else [math.nan if v is None else float(v) for v in logps]
    edit, margin, diff, value = [], [], [], []
    for i in range(n):
        edit.append([]), margin.append([]), diff.append([]), value.append([])
        for j in range(n):
            missing = words[i] is None or words[j] is None
            e = None if missing else Levenshtein.distance(words[i], words[j])
            m = math.nan if missing else reward[i] - reward[j]
            p = None if logp is None else (math.nan if missing else abs(logp[i] - logp[j]))
            d = math.nan if missing else 0.5 * math.tanh(0.5 * m) / (e + (p or 0.0) + eps)
            edit[i].append(e), margin[i].append(m), diff[i].append(p), value[i].append(d)
    return edit, margin, None if logp is None else diff, value


def same_floats(got, expected):
    assert len(got) == len(expected)
    for row_got, row_expected in zip(got, expected, strict=True):
        assert row_got == pytest.approx(row_expected, rel=1e-12, abs=1e-300, nan_ok=True)


def word_text(vocabulary):
    return st.tuples(
        st.sampled_from(["", *SPACES]),
        st.lists(st.tuples(vocabulary, st.sampled_from(SPACES)), max_size=30),
    ).map(lambda parts: parts[0] + "".join(word + space for word, space in parts[1]))


few_words = st.sampled_from(["the", "a", "cat", "sat", "é", "日本", "the\u200bcat", "x1"])
many_words = st.integers(0, 3000).map(lambda k: f"w{k}")  # hundreds of distinct words: past 256
response = st.one_of(
    st.none(), st.just(""), word_text(few_words), word_text(many_words), st.text(max_size=20)
)
reward = st.one_of(st.none(), st.just(math.nan), st.floats(-20, 20), st.integers(-3, 3))


@st.composite
def rows(draw):
    n = draw(st.integers(1, 10))
    responses = draw(st.lists(response, min_size=n, max_size=n))
    rewards = draw(st.one_of(st.none(), st.lists(reward, min_size=n, max_size=n)))
    logps = draw(st.one_of(st.none(), st.lists(reward, min_size=n, max_size=n)))
    return responses, rewards, logps


def check(out, batch):
    for i, responses in enumerate(batch["responses"]):
        rewards = batch["rewards"][i] or [None] * len(responses)
        logps = batch["ref_logps"][i] if "ref_logps" in batch else None
        edit, margin, diff, value = reference_row(responses, rewards, logps)
        assert out["edit_distance_matrix"][i] == edit
        same_floats(out["reward_margin_matrix"][i], margin)
        same_floats(out["dcrm_matrix"][i], value)
        if diff is None:
            assert out["logp_diff_matrix"][i] is None
        else:
            same_floats(out["logp_diff_matrix"][i], diff)
    assert out["edit_distance_unit"] == ["word"] * len(batch["responses"])


@settings(max_examples=150, deadline=None)
@given(st.lists(rows(), min_size=1, max_size=5), st.booleans())
def test_pair_metrics_equal_the_reference_on_messy_rows(batch_rows, with_logps):
    batch = {"responses": [r[0] for r in batch_rows], "rewards": [r[1] for r in batch_rows]}
    if with_logps:
        batch["ref_logps"] = [r[2] for r in batch_rows]
    step = PairMetrics()
    out = step.process(batch, None, None)
    check(out, batch)
    # word lists given by hand (the path of token ids reused from elsewhere) give the same output
    listed = step.metrics_from_tokens(batch, step.tokenize(step.response_texts(batch)))
    assert repr(listed) == repr(out)


def test_prompts_past_the_str_range_use_lists(monkeypatch):
    monkeypatch.setattr(word_codes, "_MAX_CODE_POINT", 5)  # as if Unicode had 6 characters
    responses = [" ".join(f"w{k}" for k in range(12)), "w3 w1 w11 w0", None, "w1  w1"]
    batch = {"responses": [responses, ["a b"]], "rewards": [[1.0, 0.0, 1.0, None], [0.5]]}
    check(PairMetrics().process(batch, None, None), batch)
