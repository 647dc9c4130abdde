"""Feature-difference analysis: f_Δ, f_Δ^rel, f_Δ^des and order agreement by hand, end to end with canned replies."""

from __future__ import annotations

import functools
import json
import re
from typing import ClassVar

import datasets
import pytest

from hfpref.steps.judges.backends import Completion, JudgeBackend
from hfpref.steps.judges.features import (
    IRRELEVANT_FEATURES,
    RELEVANT_FEATURES,
    FeatureDifferenceJudge,
    analyze_feature_differences,
    classify,
    feature_summary,
    pair_fractions,
)
from hfpref.steps.judges.parsing import FeatureVerdict
from tests.helpers import judge_spec, pair_batch

FAKE = f"{__name__}:CannedFeatureJudge"


class CannedFeatureJudge(JudgeBackend):
    """Replies by the (response A, response B) shown; records what it was shown."""

    replies: ClassVar[dict[tuple[str, str], str]] = {}
    shown: ClassVar[list[str]] = []

    def generate(self, conversations):
        for i, messages in enumerate(conversations):
            content = messages[-1]["content"]
            a = re.search(r"<response_a>\n(.*)\n</response_a>", content, re.DOTALL).group(1)
            b = re.search(r"<response_b>\n(.*)\n</response_b>", content, re.DOTALL).group(1)
            type(self).shown.append(content)
            yield i, Completion(self.replies[(a, b)])


def _reply(*items: tuple[str, str]) -> str:
    return json.dumps(
        {"differences": [{"feature": f, "justification": "hand-written", "better": b} for f, b in items]}
    )


GOOD, BAD = "The answer is 4: two plus two.", "Hmm, 5? lol"
LONG, SHORT = "Paris. Paris is the capital and largest city of France, on the Seine.", "Paris."
REPLIES = {
    # pair 0, order 0 (A = chosen): correctness A, verbosity B, tone neither
    (GOOD, BAD): _reply(("correctness", "A"), ("verbosity", "B"), ("tone", "neither")),
    # pair 0, order 1 (A = rejected): correctness B (= chosen), tone neither, humor A (= rejected)
    (BAD, GOOD): "```json\n"
    + _reply(("Correctness", "B"), ("Tone", "not applicable"), ("humor", "A"))
    + "\n```",
    # pair 1: the judge always prefers whatever is shown first (position bias), and proposes a feature
    (LONG, SHORT): _reply(("helpfulness", "A"), ("use of emoji", "neither")),
    (SHORT, LONG): _reply(("helpfulness", "A"), ("passion", "A")),
    # pair 2: order 0 unreadable, order 1 fine
    ("x", "y"): "The responses differ mainly in tone.",
    ("y", "x"): _reply(("honesty", "B"), ("creativity", "A"), ("harmlessness", "neither")),
}
ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": GOOD, "rejected": BAD},
    {"prompt": "Capital of France?", "chosen": LONG, "rejected": SHORT},
    {"prompt": "Say something.", "chosen": "x", "rejected": "y"},
]


@pytest.fixture(autouse=True)
def canned():
    CannedFeatureJudge.replies = dict(REPLIES)
    CannedFeatureJudge.shown = []
    yield CannedFeatureJudge


_judge = functools.partial(judge_spec, FAKE)  # _judge(tmp_path, **overrides): the canned judge's config


def test_feature_lists_are_the_papers():
    assert len(RELEVANT_FEATURES) == 11
    assert len(IRRELEVANT_FEATURES) == 22 and IRRELEVANT_FEATURES[-1] == "other"  # 21 + the catch-all
    assert not set(RELEVANT_FEATURES) & set(IRRELEVANT_FEATURES)


# ---- pure computations, by hand --------------------------------------------------------------------

RELEVANT = frozenset(RELEVANT_FEATURES)
LISTED = RELEVANT | frozenset(IRRELEVANT_FEATURES)


def test_classify_maps_positions_back_to_columns():
    verdicts = [
        FeatureVerdict("correctness", "A"),
        FeatureVerdict("verbosity", "B"),
        FeatureVerdict("emoji", None),
    ]
    order0 = classify(verdicts, 0, "chosen", "rejected", RELEVANT, LISTED)
    assert [(d["better"], d["relevant"], d["desired"], d["listed"]) for d in order0] == [
        ("chosen", True, True, True),
        ("rejected", True, False, True),
        (None, False, False, False),
    ]
    order1 = classify(verdicts, 1, "chosen", "rejected", RELEVANT, LISTED)
    assert [(d["better"], d["desired"]) for d in order1] == [
        ("rejected", False),
        ("chosen", True),
        (None, False),
    ]
    assert [d["verdict"] for d in order1] == ["A", "B", None]


def test_pair_fractions_by_hand():
    differences = classify(
        [FeatureVerdict("correctness", "A"), FeatureVerdict("verbosity", "B"), FeatureVerdict("tone", None)],
        0, "chosen", "rejected", RELEVANT, LISTED,
    ) + classify(
        [FeatureVerdict("correctness", "B"), FeatureVerdict("tone", None), FeatureVerdict("humor", "A")],
        1, "chosen", "rejected", RELEVANT, LISTED,
    )  # fmt: skip
    fractions = pair_fractions(differences)
    # 6 differences; relevant: correctness, verbosity, correctness; desired: correctness (chosen) twice
    assert fractions["f_delta"] == 6
    assert fractions["f_rel"] == pytest.approx(3 / 6)
    assert fractions["f_des"] == pytest.approx(2 / 6)
    # named in both orders: correctness (chosen, chosen), tone (None, None): both agree
    assert (fractions["common_features"], fractions["agreeing_features"], fractions["agreement"]) == (
        2,
        2,
        1.0,
    )


def test_pair_fractions_of_nothing_is_none():
    assert pair_fractions([]) == {
        "f_delta": 0, "f_rel": None, "f_des": None, "agreement": None, "common_features": 0, "agreeing_features": 0
    }  # fmt: skip


# ---- the step, end to end with canned replies ----------------------------------------------------------


def test_step_by_hand(tmp_path):
    out = FeatureDifferenceJudge(judge=_judge(tmp_path))(pair_batch(ROWS))
    # pair 0: as in test_pair_fractions_by_hand
    assert out["f_delta"][0] == 6
    assert out["f_rel"][0] == pytest.approx(0.5)
    assert out["f_des"][0] == pytest.approx(1 / 3)
    assert out["feature_order_agreement"][0] == 1.0
    # pair 1: order 0 helpfulness -> chosen (desired), emoji (unlisted); order 1 helpfulness -> rejected,
    # passion -> rejected. 4 differences, 2 relevant, 1 desired; helpfulness in both orders, disagreeing
    assert out["f_delta"][1] == 4
    assert out["f_rel"][1] == pytest.approx(2 / 4)
    assert out["f_des"][1] == pytest.approx(1 / 4)
    assert out["feature_order_agreement"][1] == 0.0
    emoji = next(d for d in out["feature_differences"][1] if d["feature"] == "use of emoji")
    assert emoji == {
        "order": 0, "feature": "use of emoji", "listed": False, "relevant": False, "verdict": None,
        "better": None, "desired": False, "justification": "hand-written",
    }  # fmt: skip
    # pair 2: order 0 unreadable (counted, raw kept), order 1: honesty B (= chosen), creativity, harmlessness
    assert out["feature_parse_failures"] == [0, 0, 1]
    assert out["feature_judge_raw"][2] == [REPLIES[("x", "y")], REPLIES[("y", "x")]]
    assert out["f_delta"][2] == 3
    assert out["f_rel"][2] == pytest.approx(2 / 3)
    assert out["f_des"][2] == pytest.approx(1 / 3)
    assert out["feature_order_agreement"][2] is None
    assert out["feature_request_failures"] == [0, 0, 0]


def test_judge_sees_both_orders_and_an_alphabetical_unlabelled_list(tmp_path, canned):
    FeatureDifferenceJudge(judge=_judge(tmp_path))(pair_batch(ROWS[:1]))
    assert len(canned.shown) == 2
    first, second = canned.shown
    assert f"<response_a>\n{GOOD}\n</response_a>" in first and f"<response_b>\n{BAD}\n</response_b>" in first
    assert (
        f"<response_a>\n{BAD}\n</response_a>" in second and f"<response_b>\n{GOOD}\n</response_b>" in second
    )
    listed = re.search(r"appears here:\n(.*)\n", first).group(1).split(", ")
    assert listed == sorted(set(RELEVANT_FEATURES) | set(IRRELEVANT_FEATURES) - {"other"})
    assert len(listed) == 32
    assert "code complexity and code readability only when the request is a programming task" in first
    assert "relevant" not in first.lower()  # which features count as relevant is never revealed


def test_one_order_only(tmp_path, canned):
    out = FeatureDifferenceJudge(judge=_judge(tmp_path), both_orders=False)(pair_batch(ROWS[:1]))
    assert len(canned.shown) == 1
    assert out["f_delta"] == [3]
    assert out["f_rel"][0] == pytest.approx(2 / 3)
    assert out["f_des"][0] == pytest.approx(1 / 3)
    assert len(out["feature_judge_raw"][0]) == 1


def test_dataset_summary_by_hand(tmp_path):
    judged, summary = analyze_feature_differences(
        datasets.Dataset.from_list(ROWS), judge=_judge(tmp_path), batch_size=2
    )
    assert judged["f_delta"] == [6, 4, 3]
    assert summary["pairs"] == 3 and summary["pairs_judged"] == 3
    assert summary["f_rel"] == pytest.approx((1 / 2 + 2 / 4 + 2 / 3) / 3)
    assert summary["f_des"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 3) / 3)
    assert summary["identified_differences"] == 13
    assert summary["f_rel_pooled"] == pytest.approx((3 + 2 + 2) / 13)
    assert summary["f_des_pooled"] == pytest.approx((2 + 1 + 1) / 13)
    # in both orders: pair 0 correctness + tone (agree), pair 1 helpfulness (disagrees)
    assert summary["order_agreement"] == pytest.approx(2 / 3)
    assert summary["features_in_both_orders"] == 3
    # directional verdicts: pair 0: A, B, B, A; pair 1: A, A, A; pair 2: B, A -> 6 of 9 name the first shown
    assert summary["first_shown_better"] == pytest.approx(6 / 9)
    assert summary["differences"]["correctness"] == {"chosen": 2}
    assert summary["differences"]["helpfulness"] == {"chosen": 1, "rejected": 1}
    assert summary["differences"]["tone"] == {"neither": 2}
    assert summary["unlisted_features"] == {"use of emoji": 1}
    assert summary["judge"]["parse_failures"] == 1 and summary["judge"]["requests"] == 6


def test_trained_versus_reference_columns(tmp_path):
    outputs = datasets.Dataset.from_dict(
        {"prompt": ["What is 2 + 2?"], "trained": [BAD], "reference": [GOOD], "ignored": [1]}
    )
    judged, summary = analyze_feature_differences(
        outputs, "trained", "reference", judge=_judge(tmp_path), column_prefix="learned_"
    )
    # order 0 shows trained (BAD) as A: correctness B -> reference, tone, humor A -> trained;
    # order 1 shows reference (GOOD) as A: correctness A -> reference, verbosity B -> trained, tone.
    # relevant: correctness twice and verbosity (3 of 6); desired (trained better): verbosity only (1 of 6)
    assert judged["learned_f_rel"] == [pytest.approx(0.5)]
    assert judged["learned_f_des"] == [pytest.approx(1 / 6)]
    better = [(d["feature"], d["better"]) for d in judged["learned_feature_differences"][0]]
    assert ("correctness", "reference") in better and ("verbosity", "trained") in better
    assert summary["f_des"] == pytest.approx(1 / 6)


def test_all_unreadable_batch_keeps_types(tmp_path, canned):
    canned.replies = {("x", "y"): "no", ("y", "x"): "still no"}
    rows = datasets.Dataset.from_list([ROWS[2], ROWS[2]])
    judged = FeatureDifferenceJudge(judge=_judge(tmp_path)).apply(rows, batch_size=1)
    assert judged["f_rel"] == [None, None]
    assert judged["feature_parse_failures"] == [2, 2]
    assert judged.features["f_des"] == datasets.Value("float64")
    assert feature_summary(judged)["f_rel"] is None


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="both relevant and irrelevant"):
        FeatureDifferenceJudge(judge=_judge(tmp_path), irrelevant_features=["Helpfulness", "tone"])
    with pytest.raises(ValueError, match="neither feature list"):
        FeatureDifferenceJudge(judge=_judge(tmp_path), coding_only_features=["latency"])
    with pytest.raises(ValueError, match="both 'chosen'"):
        FeatureDifferenceJudge(judge=_judge(tmp_path), second_column="chosen")
