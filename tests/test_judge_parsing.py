"""Judge-reply parsing on hand-written replies, well- and ill-formed: values read, or None, never a guess."""

from __future__ import annotations

import pytest

from hfpref.steps.judges.parsing import (
    FeatureVerdict,
    find_json,
    normalize_feature,
    normalize_key,
    parse_direction,
    parse_failure_summary,
    parse_feature_differences,
    parse_quality,
    parse_score,
)

DIMS = ["correctness", "logical_soundness", "clarity", "completeness"]


# ---- find_json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  \n{"a": 1}\n', {"a": 1}),
        (
            'Sure! Here is my verdict:\n```json\n{"a": 1, "b": [2, 3]}\n```\nHope it helps.',
            {"a": 1, "b": [2, 3]},
        ),
        ('```\n[{"feature": "tone"}]\n```', [{"feature": "tone"}]),
        ('My scores: {"a": {"score": 4}} and that is final. {"b": 2}', {"a": {"score": 4}}),
        ('Braces in prose {like this} come first, then {"a": 1}', {"a": 1}),
        ('A stray bracket [1] then [{"feature": "tone"}]', [{"feature": "tone"}]),
    ],
)
def test_find_json_reads_objects_wherever_they_are(text, expected):
    assert find_json(text) == expected


@pytest.mark.parametrize(
    "text", [None, "", "no json here", "{'single': 'quotes'}", '{"a": 1', "42", '"just a string"']
)
def test_find_json_gives_none_when_there_is_no_object(text):
    assert find_json(text) is None


# ---- scores -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7.0),
        (1, 1.0),
        (10, 10.0),
        (7.5, 7.5),
        ("8", 8.0),
        (" 9 ", 9.0),
        ("7/10", 7.0),
        ({"score": 6, "reason": "ok"}, 6.0),
        # unreadable or off the scale: None, never clipped or guessed
        (0, None),
        (11, None),
        (-3, None),
        ("7/5", None),
        ("seven", None),
        (True, None),
        (None, None),
        (float("nan"), None),
        ([7], None),
        ({"value": 7}, None),
    ],
)
def test_parse_score(value, expected):
    assert parse_score(value, 1, 10) == expected


def test_normalize_key():
    assert normalize_key("Logical soundness") == "logical_soundness"
    assert normalize_key("  Logical-Soundness!") == "logical_soundness"
    assert normalize_key("clarity") == "clarity"


@pytest.mark.parametrize(
    ("reply", "scores", "overall"),
    [
        pytest.param(
            '{"rationale": "Right answer, one skipped step.", "correctness": 9, "logical_soundness": 6, '
            '"clarity": 8, "completeness": 7}',
            (9.0, 6.0, 8.0, 7.0),
            (9 + 6 + 8 + 7) / 4,
            id="well-formed",
        ),
        pytest.param(
            "Here you go:\n```json\n"
            '{"scores": {"Correctness": {"score": 3}, "Logical soundness": "4/10", "CLARITY": 5, "completeness": 6}}'
            "\n```",
            (3.0, 4.0, 5.0, 6.0),
            4.5,
            id="nested-scores-loose-keys",
        ),
        pytest.param(  # 12 off scale, "good" unreadable, completeness missing: the readable one kept
            '{"correctness": 8, "logical_soundness": 12, "clarity": "good"}',
            (8.0, None, None, None),
            None,
            id="partial-no-overall",
        ),
    ],
)
def test_parse_quality_reads_each_dimension(reply, scores, overall):
    verdict = parse_quality(reply, DIMS, 1, 10)
    assert verdict.scores == dict(zip(DIMS, scores, strict=True))
    assert verdict.complete == (overall is not None)
    if overall is None:
        assert verdict.overall is None
    else:
        assert verdict.overall == pytest.approx(overall)


@pytest.mark.parametrize("reply", [None, "", "I would rate it highly.", "[1, 2, 3]", "�\x1f��  3�v�ĺt"])
def test_parse_quality_unreadable_reply_is_all_missing(reply):
    verdict = parse_quality(reply, DIMS, 1, 10)
    assert verdict.scores == dict.fromkeys(DIMS)
    assert verdict.overall is None and not verdict.complete


# ---- feature differences --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("A", (True, "A")),
        ("b", (True, "B")),
        ("Response A", (True, "A")),
        ("response b is better", (True, "B")),
        ("y1", (True, "A")),
        ("y2", (True, "B")),
        ('"A".', (True, "A")),
        ("neither", (True, None)),
        ("Not applicable", (True, None)),
        ("N/A", (True, None)),
        (None, (True, None)),
        ("both", (False, None)),
        ("A and B", (False, None)),
        ("C", (False, None)),
    ],
)
def test_parse_direction(value, expected):
    assert parse_direction(value) == expected


def test_normalize_feature():
    assert normalize_feature("Instruction-Following") == "instruction following"
    assert normalize_feature("  word_usage   diversity. ") == "word usage diversity"
    assert normalize_feature('"Tone"') == "tone"


BARE_LIST_REPLY = (
    '[{"feature": "tone", "better": "neither"}, {"feature": "Tone", "better": "A"}, '
    '{"feature": "honesty", "better": "B"}, {"feature": "creativity", "better": "A"}, '
    '{"feature": "humor", "better": "neither"}]'
)


@pytest.mark.parametrize(
    ("reply", "k", "expected"),
    [
        pytest.param(
            '{"differences": ['
            '{"feature": "Correctness", "justification": "A gets 4, B gets 5.", "better": "A"},'
            '{"feature": "verbosity", "justification": "B rambles.", "better": "A"},'
            '{"feature": "tone", "justification": "B is chattier.", "better": "neither"}]}',
            3,
            [
                FeatureVerdict("correctness", "A", "A gets 4, B gets 5."),
                FeatureVerdict("verbosity", "A", "B rambles."),
                FeatureVerdict("tone", None, "B is chattier."),
            ],
            id="our-format",
        ),
        pytest.param(
            'Answer:\n{"helpfulness": {"justification": "y2 answers the question.", "better response": "y2"}, '
            '"humor": {"justification": "y1 jokes.", "better response": "Not applicable"}}',
            3,
            [
                FeatureVerdict("helpfulness", "B", "y2 answers the question."),
                FeatureVerdict("humor", None, "y1 jokes."),
            ],
            id="keyed-by-feature-like-the-paper",
        ),
        pytest.param(
            BARE_LIST_REPLY,
            3,
            [FeatureVerdict("tone", None), FeatureVerdict("honesty", "B"), FeatureVerdict("creativity", "A")],
            id="bare-list-dedupes-keeps-first-k",
        ),
        pytest.param(BARE_LIST_REPLY, 1, [FeatureVerdict("tone", None)], id="bare-list-first-1"),
        pytest.param(
            '{"differences": [{"feature": "use of emoji", "better": "neither"}]}',
            3,
            [FeatureVerdict("use of emoji", None)],
            id="keeps-proposed-features",
        ),
    ],
)
def test_parse_feature_differences(reply, k, expected):
    assert parse_feature_differences(reply, k) == expected


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "Response A is more helpful.",
        '{"differences": []}',
        '{"differences": [{"name": "tone"}]}',  # no "feature"
        '{"differences": [{"feature": "tone", "better": "both"}]}',  # unreadable direction
        '{"differences": [{"feature": 3, "better": "A"}]}',
        '{"differences": [{"feature": "   ", "better": "A"}]}',
        '{"differences": ["tone", "humor"]}',
        '{"tone": "A", "humor": "B"}',  # keyed form needs an object per feature
    ],
)
def test_parse_feature_differences_ill_formed_is_none(reply):
    assert parse_feature_differences(reply, 3) is None


# ---- dataset-level accounting --------------------------------------------------------------------


def test_parse_failure_summary_counts_by_hand():
    judged = {
        "quality_judge_raw": [["{}", "x"], ['{"a": 1}', None], ["ok", "ok"]],
        "quality_parse_failures": [2, 0, 0],
        "quality_request_failures": [0, 1, 0],
    }
    assert parse_failure_summary(judged, "quality") == {
        "rows": 3,
        "requests": 6,
        "parse_failures": 2,
        "request_failures": 1,
        "rows_with_failures": 2,
        "parse_failure_rate": 2 / 6,
    }


def test_parse_failure_summary_names_a_missing_column():
    with pytest.raises(KeyError, match="feature_parse_failures"):
        parse_failure_summary({"feature_judge_raw": [[]]}, "feature")
