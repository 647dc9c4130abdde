"""PairwiseJudge: both orders per pair, ties and order disagreements, as the loop's annotator.

A scripted in-process backend (``JudgeConfig.backend = "tests.test_pairwise_judge:ScriptedBackend"``) answers
by the request's prompt text, so the order and tie logic is checked against hand-written expectations.
The served-model test is in ``tests/test_judge_backends.py``.
"""

from __future__ import annotations

import re

import datasets
import pytest

from hfpref.pipeline.recipe import STEP_REGISTRY, step_class
from hfpref.steps.annotate import AnnotatedPairs, AnnotateSelected
from hfpref.steps.judges.backends import Completion, JudgeBackend
from hfpref.steps.judges.pairwise import PairwiseJudge, combine, pairwise_summary, parse_winner

BACKEND = "tests.test_pairwise_judge:ScriptedBackend"
_A = re.compile(r"<response_a>\n(.*?)\n</response_a>", re.DOTALL)
_B = re.compile(r"<response_b>\n(.*?)\n</response_b>", re.DOTALL)
_PROMPT = re.compile(r"<request>\n(.*?)\n</request>", re.DOTALL)


class ScriptedBackend(JudgeBackend):
    """Answers by the request: 'longer' prefers the longer response, 'biased' always says A, 'even' says
    tie, 'junk' answers prose, 'fails' fails the request; every request is logged in ``asked``."""

    asked: list[tuple[str, str, str]] = []

    def generate(self, conversations):
        for i, messages in enumerate(conversations):
            text = messages[-1]["content"]
            prompt, a, b = _PROMPT.search(text).group(1), _A.search(text).group(1), _B.search(text).group(1)
            ScriptedBackend.asked.append((prompt, a, b))
            if prompt == "fails":
                yield i, Completion(None, error="scripted failure")
            elif prompt == "biased":
                yield i, Completion('{"winner": "A"}')
            elif prompt == "even":
                yield i, Completion("Tie.")
            elif prompt == "junk":
                yield i, Completion("Both have merits; hard to say.")
            else:
                yield i, Completion('```json\n{"winner": "%s"}\n```' % ("A" if len(a) > len(b) else "B"))


JUDGE = {"model": "scripted", "backend": BACKEND, "cache_dir": None, "on_request_error": "missing"}


@pytest.fixture(autouse=True)
def _fresh_log():
    ScriptedBackend.asked = []


def test_parse_winner():
    assert parse_winner('{"winner": "A"}') == "A"
    assert parse_winner('Reasoning first. {"better": "b"}') == "B"
    assert parse_winner('{"winner": "neither"}') == parse_winner("Tie.") == parse_winner("**tie**") == "tie"
    assert parse_winner("B") == "B"
    for unreadable in ("A or B", '{"winner": "C"}', '{"score": 3}', "", None, "Both are fine"):
        assert parse_winner(unreadable) is None


def test_combine_orders():
    # (answer with the pair's first response as A, answer with it as B)
    assert combine("A", "B") == ("first", 1.0)
    assert combine("B", "A") == ("second", 0.0)
    assert combine("tie", "tie") == ("tie", 0.5)
    assert combine("A", "A") == ("order_disagreement", 0.5)  # position bias: always the first slot
    assert combine("A", "tie") == ("order_disagreement", 0.5)
    assert combine(None, "A") == ("parse_failure", None)


def _rows() -> list[dict]:
    responses = ["short", "a much longer answer", "mid answer"]
    pairs = [[0, 1], [0, 2], [1, 2]]
    return [
        {"prompt": name, "responses": responses, "pair_indices": pairs, "selected_for_annotation": flags}
        for name, flags in [
            ("longer", [True, False, True]),
            ("biased", [True, True, True]),
            ("even", [False, True, False]),
            ("junk", [True, False, False]),
            ("fails", [False, False, True]),
            ("skipped", [False, False, False]),
        ]
    ]


def test_both_orders_only_selected_pairs():
    out = PairwiseJudge(judge=JUDGE)(datasets.Dataset.from_list(_rows())[:])
    # two requests per selected pair, in both orders: 2 + 3 + 1 + 1 + 1 selected pairs
    assert len(ScriptedBackend.asked) == 2 * 8
    assert ("longer", "short", "a much longer answer") in ScriptedBackend.asked
    assert ("longer", "a much longer answer", "short") in ScriptedBackend.asked
    assert not any(prompt == "skipped" for prompt, _, _ in ScriptedBackend.asked)
    # longer: pair (0, 1) -> 1 is longer (second), pair (1, 2) -> 1 is longer (first)
    assert out["pairwise_preferences"][0] == [0.0, None, 1.0]
    assert out["pairwise_verdicts"][0] == ["second", None, "first"]
    assert out["pairwise_verdicts"][1] == ["order_disagreement"] * 3
    assert out["pairwise_preferences"][1] == [0.5] * 3
    assert out["pairwise_verdicts"][2] == [None, "tie", None]
    assert out["pairwise_verdicts"][3] == ["parse_failure", None, None]
    assert out["pairwise_verdicts"][4] == [None, None, "request_failure"]
    assert out["pairwise_preferences"][5] == [None] * 3
    assert out["pairwise_ties"] == [0, 3, 1, 0, 0, 0]
    assert out["pairwise_order_disagreements"] == [0, 3, 0, 0, 0, 0]
    assert out["pairwise_parse_failures"] == [0, 0, 0, 2, 0, 0]
    assert out["pairwise_request_failures"] == [0, 0, 0, 0, 2, 0]
    assert out["pairwise_judge_raw"][4][2] == [None, None]
    summary = pairwise_summary(out)
    assert summary["judged_pairs"] == 8 and summary["order_disagreement"] == 3 and summary["tie"] == 1


def test_without_pair_columns_every_pair_is_judged():
    out = PairwiseJudge(judge=JUDGE)({"prompt": ["longer"], "responses": [["xx", "x", "xxx"]]})
    assert out["pairwise_preferences"] == [[1.0, 0.0, 0.0]]  # pairs (0,1), (0,2), (1,2) by length
    assert len(ScriptedBackend.asked) == 6


def test_as_the_loops_annotator():
    assert step_class("PairwiseJudge") is PairwiseJudge and "PairwiseJudge" in STEP_REGISTRY
    rows = datasets.Dataset.from_list(
        [
            {**row, "implicit_rewards": [0.1, -0.2, 0.3], "selection_strategy": "smallest_margin"}
            for row in _rows()
        ]
    ).map(lambda row: {"selection_level": "corpus"})
    annotate = AnnotateSelected(annotator="PairwiseJudge", annotator_config={"judge": JUDGE})
    assert annotate.pairwise and annotate.preferences_column() == "pairwise_preferences"
    candidates = annotate.apply(rows)
    assert candidates["response_annotated"][2] == [True, False, True]  # row 'even': pair (0, 2)
    pairs = AnnotatedPairs(preferences_column=annotate.preferences_column()).apply(candidates)
    assert len(pairs) == 8  # one row per selected pair
    by_reason = {}
    for row in pairs:
        by_reason.setdefault(row["drop_reason"], []).append(row)
    assert {k: len(v) for k, v in by_reason.items()} == {None: 2, "judge_tie": 4, "judge_missing": 2}
    for row in by_reason[None]:  # the longer response is chosen, whichever position it held
        assert row["chosen"] == "a much longer answer"
        assert (row["reward_chosen"], row["reward_rejected"]) == (1.0, 0.0)
        assert row["implicit_margin"] == pytest.approx(
            [0.1, -0.2, 0.3][row["chosen_index"]] - [0.1, -0.2, 0.3][row["rejected_index"]]
        )
    assert "pairwise_verdicts" not in pairs.column_names and "pairwise_ties" in pairs.column_names
