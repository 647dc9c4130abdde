"""ScreenResponses on hand-built rows: which responses it flags, that every per-response column stays aligned
after removal, and what it records and counts."""

from __future__ import annotations

import datasets
import pytest

from hfpref.pipeline.recipe import STEP_REGISTRY, step_class
from hfpref.steps.screening import (
    ScreenConfig,
    ScreenResponses,
    distinct_trigram_share,
    is_stale,
    prompt_arguments,
    screening_counts,
)

PROMPT = 'Write a poem with at least 3 placeholders such as [name]. Include the word "sea".'
NORMAL = "The sea is calm tonight; [name] watches it from [place] until [time], and then walks home."
REPEATED = "\n".join(["I am sorry, I cannot help with that."] * 60)  # 2,280 characters, one line repeated


def _rows() -> dict[str, list]:
    return {
        "key": [1, 2],
        "prompt": [PROMPT, PROMPT],
        "responses": [[NORMAL, REPEATED, "A short answer about the sea.", None], ["ok, the sea"]],
        "generators": [["big", "small", "old", "failed"], ["big"]],
        "prompts_seen": [
            [PROMPT, PROMPT, PROMPT.replace("at least 3", "at least one"), PROMPT],
            [" ".join(PROMPT.split())],
        ],
        "rewards": [[1.0, 0.0, 0.5, None], [1.0]],
        "ifeval_strict": [[[True, True], [False, False], [True, False], None], [[True, True]]],
    }


def test_repetition_and_prompt_arguments_measures():
    # 8 words repeated 60 times: 478 trigrams, 8 distinct (one per starting word of the cycle)
    assert distinct_trigram_share(REPEATED) == pytest.approx(8 / (8 * 60 - 2))
    assert distinct_trigram_share(NORMAL) == 1.0  # no trigram repeats
    assert prompt_arguments(PROMPT) == (["3"], ["sea"])
    assert is_stale(PROMPT.replace("3", "three"), PROMPT)  # a number changed, in words or digits
    assert is_stale(PROMPT.replace('"sea"', '"ocean"'), PROMPT)  # a quoted word changed
    assert not is_stale(PROMPT.replace("Write", "Compose"), PROMPT)  # rewording alone is not stale
    assert is_stale(PROMPT.replace("Write", "Compose"), PROMPT, mode="any")
    assert not is_stale(" ".join(PROMPT.split()) + "  ", PROMPT, mode="any")  # whitespace is no change
    assert not is_stale(PROMPT.replace("3", "5"), PROMPT, mode="off")


def test_flags_removes_and_keeps_columns_aligned():
    out = ScreenResponses().apply(datasets.Dataset.from_dict(_rows()), batch_size=1)
    first, second = out[0], out[1]
    # the repeated-lines answer is runaway, the answer to "at least one" placeholder is stale; the normal
    # answer and the failed (None) one stay, in their order, with every per-response column subset alike
    assert first["responses"] == [NORMAL, None]
    assert first["generators"] == ["big", "failed"]
    assert first["rewards"] == [1.0, None]
    assert first["ifeval_strict"] == [[True, True], None]
    assert first["prompts_seen"] == [PROMPT, PROMPT]
    assert first["response_flags"] == [None, None]
    assert first["screened_out"] == [
        {"index": 1, "generator": "small", "reason": "runaway", "chars": len(REPEATED)},
        {
            "index": 2,
            "generator": "old",
            "reason": "stale_prompt",
            "chars": len("A short answer about the sea."),
        },
    ]
    # a prompt seen with other whitespace only is the same prompt
    assert second["responses"] == ["ok, the sea"] and second["screened_out"] == []
    counts = screening_counts(out["screened_out"])
    assert counts == {
        "removed": 2,
        "rows_affected": 1,
        "by_reason": {"runaway": 1, "stale_prompt": 1},
        "by_generator": {"old": {"stale_prompt": 1}, "small": {"runaway": 1}},
    }


def test_flag_only_and_thresholds_are_config_fields():
    rows = _rows()
    flagged = ScreenResponses(remove=False).apply(datasets.Dataset.from_dict(rows))
    assert flagged[0]["response_flags"] == [None, "runaway", "stale_prompt", None]
    assert flagged[0]["responses"] == rows["responses"][0] and flagged[0]["screened_out"] == []
    # a looser repetition threshold keeps the repeated answer; a length cap below it flags the normal one
    lenient = ScreenResponses(min_distinct_trigrams=0.01, stale_prompt="off", remove=False)
    assert lenient.apply(datasets.Dataset.from_dict(rows))[0]["response_flags"] == [None, None, None, None]
    capped = ScreenResponses(max_chars=len(NORMAL) - 1, stale_prompt="off", remove=False)
    assert capped.apply(datasets.Dataset.from_dict(rows))[0]["response_flags"][0] == "runaway"
    with pytest.raises(ValueError, match="stale_prompt must be one of"):
        ScreenConfig(stale_prompt="sometimes")


def test_without_prompts_seen_only_runaways_are_screened():
    rows = {k: v for k, v in _rows().items() if k != "prompts_seen"}
    out = ScreenResponses(remove=False).apply(datasets.Dataset.from_dict(rows))
    assert out[0]["response_flags"] == [None, "runaway", None, None]


def test_misaligned_column_is_a_row_error_and_step_is_registered():
    from hfpref.core.step import RowError

    rows = _rows()
    rows["rewards"][0] = [1.0, 0.0]
    with pytest.raises(RowError, match=r"key=1 column 'rewards' has 2 entries for 4 responses"):
        ScreenResponses().apply(datasets.Dataset.from_dict(rows))
    assert step_class("ScreenResponses") is ScreenResponses and "ScreenResponses" in STEP_REGISTRY


def test_stale_token_ids_are_dropped_not_refused():
    # response_token_ids is the sampler's cache: a step that appended a response without its ids leaves it
    # one short; screening drops that row's ids (PairMetrics tokenizes it) and keeps aligned ones subset
    rows = _rows()
    rows["response_token_ids"] = [[[1, 2], [3], [4, 5, 6]], [[7, 8]]]  # row 1 lacks the 4th response's ids
    out = ScreenResponses().apply(datasets.Dataset.from_dict(rows), batch_size=1)
    assert out[0]["response_token_ids"] is None
    assert out[1]["response_token_ids"] == [[7, 8]]
    assert out[0]["responses"] == [NORMAL, None]
