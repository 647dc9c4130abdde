"""QualityJudge end to end with an in-process judge returning canned replies; sample deltas by hand."""

from __future__ import annotations

import functools
import pickle
import re
from typing import ClassVar

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.judges.backends import Completion, JudgeBackend, JudgeRequestError
from hfpref.steps.judges.parsing import parse_failure_summary
from hfpref.steps.judges.quality import QualityJudge, filter_by_sample_delta
from tests.helpers import judge_spec, pair_batch

FAKE = f"{__name__}:CannedQualityJudge"


class CannedQualityJudge(JudgeBackend):
    """Replies by the judged response's text; records every response it was asked about."""

    replies: ClassVar[dict[str, str]] = {}
    failing: ClassVar[set[str]] = set()
    asked: ClassVar[list[str]] = []
    prompts: ClassVar[list[str]] = []

    def generate(self, conversations):
        for i, messages in enumerate(conversations):
            content = messages[-1]["content"]
            response = re.search(r"<response>\n(.*)\n</response>", content, re.DOTALL).group(1)
            type(self).asked.append(response)
            type(self).prompts.append(content)
            if response in self.failing:
                yield i, Completion(None, error="APIStatusError: 503 Service Unavailable")
            else:
                yield i, Completion(self.replies[response])


def _reply(correctness, soundness, clarity, completeness) -> str:
    return (
        f'{{"rationale": "hand-written", "correctness": {correctness}, "logical_soundness": {soundness}, '
        f'"clarity": {clarity}, "completeness": {completeness}}}'
    )


REPLIES = {
    "2 + 2 = 4, because two pairs make four.": _reply(9, 8, 7, 8),  # overall 8
    "2 + 2 = 5.": _reply(3, 4, 5, 4),  # overall 4
    "Paris is the capital of France.": "Scores:\n```json\n" + _reply(10, 9, 9, 8) + "\n```",  # overall 9
    "Lyon.": '{"correctness": 2, "logical_soundness": 3, "clarity": 6}',  # completeness missing
    "Water boils at 100 C at sea level.": _reply(8, 8, 8, 8),  # overall 8
    "It boils when hot.": "I'd say it is mediocre.",  # does not parse
}
ROWS = [
    {
        "prompt": "What is 2 + 2? Explain.",
        "chosen": "2 + 2 = 4, because two pairs make four.",
        "rejected": "2 + 2 = 5.",
    },
    {
        "prompt": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "chosen": [{"role": "assistant", "content": "Paris is the capital of France."}],
        "rejected": [{"role": "assistant", "content": "Lyon."}],
    },
    {
        "prompt": "At what temperature does water boil?",
        "chosen": "Water boils at 100 C at sea level.",
        "rejected": "It boils when hot.",
    },
    {  # the same chosen response as row 0: the judge is asked about it once
        "prompt": "What is 2 + 2? Explain.",
        "chosen": "2 + 2 = 4, because two pairs make four.",
        "rejected": "Water boils at 100 C at sea level.",
    },
]


@pytest.fixture(autouse=True)
def canned():
    CannedQualityJudge.replies = dict(REPLIES)
    CannedQualityJudge.failing = set()
    CannedQualityJudge.asked = []
    CannedQualityJudge.prompts = []
    yield CannedQualityJudge


_judge = functools.partial(judge_spec, FAKE)  # _judge(tmp_path, **overrides): the canned judge's config


def _pairs(rows) -> datasets.Dataset:
    # string and conversational rows cannot share an Arrow column: keep the string rows
    return datasets.Dataset.from_list([r for r in rows if isinstance(r["prompt"], str)])


def test_scores_and_deltas_by_hand(tmp_path):
    step = QualityJudge(judge=_judge(tmp_path))
    out = step(pair_batch(ROWS))
    # row 0: chosen (9, 8, 7, 8) vs rejected (3, 4, 5, 4)
    assert out["quality_chosen"][0] == {
        "correctness": 9.0, "logical_soundness": 8.0, "clarity": 7.0, "completeness": 8.0, "overall": 8.0
    }  # fmt: skip
    assert out["quality_rejected"][0]["overall"] == 4.0
    assert out["sample_delta"][0] == 4.0
    assert out["sample_delta_correctness"][0] == 6.0
    assert out["sample_delta_logical_soundness"][0] == 4.0
    assert out["sample_delta_clarity"][0] == 2.0
    assert out["sample_delta_completeness"][0] == 4.0
    assert out["quality_parse_failures"][0] == 0
    # row 1 (conversational): rejected lacks completeness -> no overall, no overall delta; the rest kept
    assert out["quality_chosen"][1]["overall"] == 9.0
    assert out["quality_rejected"][1] == {
        "correctness": 2.0, "logical_soundness": 3.0, "clarity": 6.0, "completeness": None, "overall": None
    }  # fmt: skip
    assert out["sample_delta"][1] is None
    assert out["sample_delta_correctness"][1] == 8.0
    assert out["sample_delta_logical_soundness"][1] == 6.0
    assert out["sample_delta_clarity"][1] == 3.0
    assert out["sample_delta_completeness"][1] is None
    assert out["quality_parse_failures"][1] == 1
    # row 2: rejected reply unreadable -> counted, raw kept, nothing made up
    assert out["quality_rejected"][2] == dict.fromkeys(
        ["correctness", "logical_soundness", "clarity", "completeness", "overall"]
    )
    assert out["sample_delta"][2] is None
    assert out["quality_parse_failures"][2] == 1
    assert out["quality_judge_raw"][2] == [REPLIES[ROWS[2]["chosen"]], "I'd say it is mediocre."]
    # row 3: 8 - 8
    assert out["sample_delta"][3] == 0.0
    assert out["quality_request_failures"] == [0, 0, 0, 0]


def test_each_distinct_request_is_sent_once_and_prompts_are_rendered(tmp_path, canned):
    QualityJudge(judge=_judge(tmp_path))(pair_batch(ROWS))
    # 8 (prompt, response) requests, 7 distinct: row 3 repeats row 0's prompt and chosen response; its
    # rejected response was asked about before, but for another prompt, so that is a new request
    assert len(canned.asked) == 7
    assert canned.asked.count(ROWS[0]["chosen"]) == 1
    assert canned.asked.count(ROWS[3]["rejected"]) == 2
    conversational = next(p for p in canned.prompts if "Paris" in p)
    assert "[system]\nAnswer briefly.\n\n[user]\nWhat is the capital of France?" in conversational
    plain = next(p for p in canned.prompts if "2 + 2 = 5." in p)
    assert "<request>\nWhat is 2 + 2? Explain.\n</request>" in plain
    assert '"logical_soundness": <score>' in plain and "from 1 (very poor) to 10 (excellent)" in plain


def test_on_disk_cache_answers_a_rerun_without_asking(tmp_path, canned):
    first = QualityJudge(judge=_judge(tmp_path))(pair_batch(ROWS))
    canned.asked = []
    again = QualityJudge(judge=_judge(tmp_path, concurrency=2))(pair_batch(ROWS))  # runtime field changed
    assert canned.asked == []
    assert again == first
    other_model = QualityJudge(judge=_judge(tmp_path, model="another-judge"))(pair_batch(ROWS[:1]))
    assert sorted(canned.asked) == sorted([ROWS[0]["chosen"], ROWS[0]["rejected"]])
    assert other_model["sample_delta"] == [4.0]


def test_request_failure_raises_naming_the_row_or_is_counted(tmp_path, canned):
    canned.failing = {"It boils when hot."}
    with pytest.raises(JudgeRequestError, match=r"batch row 2 failed .*503"):
        QualityJudge(judge=_judge(tmp_path))(pair_batch(ROWS))
    out = QualityJudge(judge=_judge(tmp_path, on_request_error="missing"))(pair_batch(ROWS))
    assert out["quality_request_failures"] == [0, 0, 1, 0]
    assert out["quality_parse_failures"][2] == 0
    assert out["quality_judge_raw"][2] == [REPLIES[ROWS[2]["chosen"]], None]
    assert out["sample_delta"][2] is None
    assert out["sample_delta"][0] == 4.0
    # the failed reply was not cached: once the judge answers, a rerun gets it
    canned.failing = set()
    canned.asked = []
    again = QualityJudge(judge=_judge(tmp_path, on_request_error="missing"))(pair_batch(ROWS))
    assert canned.asked == ["It boils when hot."]
    assert again["quality_parse_failures"][2] == 1


def test_apply_on_a_dataset_with_typed_columns_and_summary(tmp_path):
    pairs = _pairs(ROWS)
    step = QualityJudge(judge=_judge(tmp_path))
    # batch_size=1: the first batch (a parsed row) and the unparsed one must still share column types
    judged = step.apply(pairs, batch_size=1)
    assert judged["sample_delta"] == [4.0, None, 0.0]
    assert judged.features["sample_delta"] == datasets.Value("float64")
    assert judged.features["quality_judge_raw"] == datasets.List(datasets.Value("string"))
    assert parse_failure_summary(judged, "quality") == {
        "rows": 3,
        "requests": 6,
        "parse_failures": 1,
        "request_failures": 0,
        "rows_with_failures": 1,
        "parse_failure_rate": 1 / 6,
    }
    all_unreadable = datasets.Dataset.from_list([ROWS[2], ROWS[2]])
    typed = step.apply(all_unreadable, batch_size=1)
    assert typed["sample_delta"] == [None, None]
    assert typed.features["quality_rejected"]["overall"] == datasets.Value("float64")


def test_two_response_columns_and_prefix(tmp_path):
    rows = {
        "prompt": ["What is 2 + 2? Explain."],
        "trained": ["2 + 2 = 5."],
        "reference": ["2 + 2 = 4, because two pairs make four."],
    }
    step = QualityJudge(
        judge=_judge(tmp_path), first_column="trained", second_column="reference", column_prefix="eval_"
    )
    out = step(rows)
    assert set(out) == set(step.output_columns())
    assert out["eval_sample_delta"] == [-4.0]
    assert out["eval_quality_trained"][0]["overall"] == 4.0


def test_custom_dimensions_and_scale(tmp_path, canned):
    canned.replies = {
        "a": '{"Helpfulness": 4, "harmlessness": 5}',
        "b": '{"helpfulness": 2, "harmlessness": 6}',
    }
    step = QualityJudge(
        judge=_judge(tmp_path),
        dimensions={"Helpfulness": "Does it help?", "harmlessness": "Is it safe?"},
        scale_min=1,
        scale_max=5,
    )
    out = step({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]})
    assert out["sample_delta_helpfulness"] == [2.0]
    assert out["quality_rejected"] == [{"helpfulness": 2.0, "harmlessness": None, "overall": None}]  # 6 > 5
    assert out["quality_parse_failures"] == [1]
    assert "from 1 (very poor) to 5 (excellent)" in canned.prompts[0]


def test_numpy_batches_as_ray_data_gives_them(tmp_path):
    step = QualityJudge(judge=_judge(tmp_path))
    rows = [ROWS[0], ROWS[2]]
    out = step({key: np.array([r[key] for r in rows]) for key in ("prompt", "chosen", "rejected")})
    assert isinstance(out["sample_delta"], np.ndarray)
    assert list(out["sample_delta"]) == [4.0, None]


def test_bad_inputs_name_column_and_row(tmp_path):
    step = QualityJudge(judge=_judge(tmp_path))
    with pytest.raises(MissingColumnError, match="'rejected'"):
        step({"prompt": ["q"], "chosen": ["a"]})
    with pytest.raises(RowError, match=r"batch row 1 column 'chosen' .* got 42"):
        step({"prompt": ["q", "q"], "chosen": ["a", 42], "rejected": ["b", "b"]})
    with pytest.raises(ValueError, match="model"):
        QualityJudge(judge={"backend": FAKE})
    with pytest.raises(ValueError, match="distinct"):
        QualityJudge(judge=_judge(tmp_path), dimensions={"Clarity": "x", "clarity": "y"})


def test_fingerprint_pickling_and_runtime_fields(tmp_path):
    step = QualityJudge(judge=_judge(tmp_path))
    step({"prompt": ["q"], "chosen": ["2 + 2 = 5."], "rejected": ["It boils when hot."]})
    clone = pickle.loads(pickle.dumps(step))
    assert clone._loaded == {} and clone.fingerprint() == step.fingerprint()
    runtime = QualityJudge(
        judge=_judge(tmp_path / "elsewhere", concurrency=32, base_url="http://h:1/v1", timeout=5)
    )
    assert runtime.fingerprint() == step.fingerprint()
    for changed in (
        QualityJudge(judge=_judge(tmp_path, model="other")),
        QualityJudge(judge=_judge(tmp_path, max_new_tokens=64)),
        QualityJudge(judge=_judge(tmp_path), scale_max=5),
        QualityJudge(judge=_judge(tmp_path), dimensions={"clarity": "x", "correctness": "y"}),
        QualityJudge(judge=_judge(tmp_path), dimensions={"correctness": "y", "clarity": "x"}),
    ):
        assert changed.fingerprint() != step.fingerprint()
    template = tmp_path / "mine.j2"
    template.write_text(
        "Rate {{ response }} for {{ prompt }} on {{ dimensions }} ({{ scale_min }}-{{ scale_max }})"
    )
    custom = QualityJudge(judge=_judge(tmp_path), template=str(template))
    assert custom.fingerprint() != step.fingerprint()
    assert custom.judge_prompt("q", "r").startswith("Rate r for q on {")


# ---- filter ---------------------------------------------------------------------------------------

DELTAS = [3.0, None, -1.0, 5.0, 3.0, 0.0, 5.0]


def _delta_pairs():
    return datasets.Dataset.from_dict({"id": list(range(len(DELTAS))), "sample_delta": DELTAS})


def test_filter_by_threshold():
    kept, report = filter_by_sample_delta(_delta_pairs(), threshold=3.0)
    assert kept["id"] == [0, 3, 4, 6]
    assert report == {"kept": 4, "below_threshold": 2, "missing_delta": 1}


def test_filter_top_fraction_is_deterministic_with_ties():
    # 6 rows have a delta; top half = 3: the two 5.0s, then the first of the two 3.0s (row 0)
    kept, report = filter_by_sample_delta(_delta_pairs(), top_fraction=0.5)
    assert kept["id"] == [0, 3, 6]
    assert report == {"kept": 3, "outside_top_fraction": 3, "missing_delta": 1}
    assert filter_by_sample_delta(_delta_pairs(), top_fraction=0.5)[0]["id"] == kept["id"]
    assert filter_by_sample_delta(_delta_pairs(), top_fraction=0.0)[0]["id"] == []
    assert filter_by_sample_delta(_delta_pairs(), top_fraction=1.0)[0]["id"] == [0, 2, 3, 4, 5, 6]


def test_filter_needs_one_criterion_and_the_column():
    with pytest.raises(ValueError, match="exactly one"):
        filter_by_sample_delta(_delta_pairs())
    with pytest.raises(ValueError, match="exactly one"):
        filter_by_sample_delta(_delta_pairs(), threshold=1.0, top_fraction=0.5)
    with pytest.raises(KeyError, match="sample_delta_clarity"):
        filter_by_sample_delta(_delta_pairs(), threshold=1.0, column="sample_delta_clarity")
