"""IFEvalVerifier: agreement with IFEval's published accuracies and with lm-eval's own grading on the real
responses, hand-computed verdicts, determinism across processes, offline NLTK, errors, numpy batches."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

import hfpref
from hfpref.core.step import MissingColumnError, RowError, to_python
from hfpref.pipeline import default_data
from hfpref.steps.ifeval import IFEvalConfig, IFEvalVerifier, prompt_text

DATA = Path(hfpref.__file__).parent / "data" / "ifeval"
# Paper, Table 2: prompt-strict, instruction-strict, prompt-loose, instruction-loose (percent)
PUBLISHED = {"gpt-4": (76.89, 83.57, 79.30, 85.37), "text-bison": (43.07, 55.76, 46.95, 59.11)}
# `letter` is "#" / "!": IFEval's letter_frequency check then draws a random letter (unseeded in the paper)
RANDOM_LETTER_KEYS = (1122, 1129)
MISSING_GPT4_KEY = 2785  # revised in 2024; the published GPT-4 response answered the old revision


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


PROMPTS = {row["key"]: row for row in _read_jsonl(DATA / "prompts.jsonl")}


def _candidates(generator: str) -> list[dict]:
    """One candidates row per response, joined to the current prompts on `key`."""
    rows = []
    for answer in default_data.response_records(generator):
        prompt = PROMPTS[answer["key"]]
        rows.append(
            {
                "key": answer["key"],
                "prompt": prompt["prompt"],
                "responses": [answer["response"]],
                "instruction_id_list": prompt["instruction_id_list"],
                "kwargs": prompt["kwargs"],
            }
        )
    return rows


@pytest.fixture(scope="module")
def graded() -> dict[str, tuple[list[dict], dict[str, list]]]:
    """Each generator's rows and the verifier's output, run once through `Dataset.map`.

    `Dataset.from_list` turns the kwargs dicts into Arrow structs with every key (missing ones None),
    exactly as `load_dataset("google/IFEval")` does, so this also exercises the None-dropping.
    """
    out = {}
    for generator in PUBLISHED:
        rows = _candidates(generator)
        mapped = datasets.Dataset.from_list(rows).map(IFEvalVerifier(), batched=True)
        columns = ["ifeval_strict", "ifeval_loose", "ifeval_invented_args"]
        out[generator] = (rows, mapped.select_columns(columns).to_dict())
    return out


def _single(verdicts: list[list[list[bool]]]) -> list[list[bool]]:
    """Per row, the verdicts of its only response."""
    assert all(len(v) == 1 for v in verdicts)
    return [v[0] for v in verdicts]


def _accuracies(verdicts: list[list[bool]]) -> tuple[float, float]:
    prompt_level = 100 * sum(all(v) for v in verdicts) / len(verdicts)
    instruction_level = 100 * sum(map(sum, verdicts)) / sum(map(len, verdicts))
    return prompt_level, instruction_level


def _published_counts(percent: float, total: int) -> int:
    count = round(percent * total / 100)
    assert round(100 * count / total, 2) == percent, f"{percent}% is not a count out of {total}"
    return count


def _explanations(
    rows: list[dict], verdicts: list[list[bool]], prompts_passed: int, instructions_met: int
) -> set[tuple[tuple[bool, ...], int]]:
    """Every way the verdicts our run cannot reproduce could have gone in the paper's run so that its
    counts come out exactly: (letter-check verdicts of RANDOM_LETTER_KEYS, constraints of key 2785 met)."""
    fixed = [v for row, v in zip(rows, verdicts, strict=True) if row["key"] not in RANDOM_LETTER_KEYS]
    drawn = [
        (v, row["instruction_id_list"].index("keywords:letter_frequency"))
        for row, v in zip(rows, verdicts, strict=True)
        if row["key"] in RANDOM_LETTER_KEYS
    ]
    missing_total = len(PROMPTS[MISSING_GPT4_KEY]["instruction_id_list"])
    found = set()
    for letters in itertools.product((False, True), repeat=len(drawn)):
        regraded = fixed + [v[:i] + [ok] + v[i + 1 :] for (v, i), ok in zip(drawn, letters, strict=True)]
        for missing_met in range(missing_total + 1):
            prompts = sum(all(v) for v in regraded) + (missing_met == missing_total)
            instructions = sum(map(sum, regraded)) + missing_met
            if (prompts, instructions) == (prompts_passed, instructions_met):
                found.add((letters, missing_met))
    return found


# ---- 1. agreement with IFEval's own evaluation on the real data ---------------------------------------


def test_gpt4_reproduces_the_published_accuracies(graded):
    rows, out = graded["gpt-4"]
    strict, loose = _single(out["ifeval_strict"]), _single(out["ifeval_loose"])
    ours = (*_accuracies(strict), *_accuracies(loose))
    # GPT-4 answered today's prompts (all 540 `prompt_seen` equal them), so every verdict is IFEval's own
    # except three keys: 2785 has no response here (the paper's answered its old revision) and 1122/1129's
    # letter check drew a random letter in the paper's run. The figures agree to within one prompt's
    # weight (100/541 = 0.18 points); the exact account follows.
    assert all(PROMPTS[r["key"]]["prompt"] == r["prompt"] for r in rows)
    assert ours == pytest.approx(PUBLISHED["gpt-4"], abs=0.19)

    # Exactly: the paper graded 541 prompts with 834 instructions (today's file: the same counts).
    n_prompts, n_instructions = len(PROMPTS), sum(len(p["instruction_id_list"]) for p in PROMPTS.values())
    counts = [
        _published_counts(pct, n)
        for pct, n in zip(PUBLISHED["gpt-4"], (n_prompts, n_instructions) * 2, strict=True)
    ]
    strict_ways = _explanations(rows, strict, counts[0], counts[1])
    loose_ways = _explanations(rows, loose, counts[2], counts[3])
    # Key 2785's checks are the same in both modes and loose grading only adds chances, so it met at
    # least as many constraints loosely as strictly; the letter checks were drawn afresh for each mode
    # (the paper's run built every check once for strict and once for loose grading).
    consistent = {(s, lo) for s in strict_ways for lo in loose_ways if lo[1] >= s[1]}
    # With all our other verdicts, the published counts (416/541, 697/834 strict; 429/541, 712/834 loose)
    # come out exactly only if key 2785's old response met 1 of its 2 constraints in both modes and, of
    # the two random-letter checks, one passed under strict grading and neither under loose grading.
    assert consistent == {
        (((True, False), 1), ((False, False), 1)),
        (((False, True), 1), ((False, False), 1)),
    }


def test_text_bison_is_close_to_the_published_accuracies(graded):
    rows, out = graded["text-bison"]
    ours = (*_accuracies(_single(out["ifeval_strict"])), *_accuracies(_single(out["ifeval_loose"])))
    seen = {a["key"]: a["prompt_seen"] for a in default_data.response_records("text-bison")}
    revised = [key for key in seen if seen[key] != PROMPTS[key]["prompt"]]
    # text-bison answered the 2023-11 prompts and 385 of its 541 were revised since, many with changed
    # constraint arguments (1069: at least 229 -> 500 words; 1730: two -> five sections; 163: letter l at
    # least 9 -> 15 times; 1000 became another task). Our data holds only the old prompt text, not the
    # old constraint lists, so the paper's per-prompt verdicts cannot be reproduced, only approached: we
    # grade text-bison's answers against today's constraints (every verdict equal to lm-eval's own
    # grading, test below). The aggregates move both ways: 44.73 / 54.56 / 48.06 / 58.15, i.e. +1.66 /
    # -1.20 / +1.11 / -0.96 points (+9 prompts and -10 instructions strict); a 2-point tolerance covers
    # that and still fails on a systematic error (grading loose as strict would put prompt-loose 2.2
    # and instruction-loose 4.6 points off).
    assert len(revised) == 385
    assert ours == pytest.approx(PUBLISHED["text-bison"], abs=2.0)


def test_verdicts_equal_lm_evals_own_grading(graded):
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval.utils import process_results

    compared = 0
    saved, DetectorFactory.seed = DetectorFactory.seed, 0  # lm-eval's language checks vary unseeded
    try:
        for rows, out in graded.values():
            for row, strict, loose in zip(rows, out["ifeval_strict"], out["ifeval_loose"], strict=True):
                if row["key"] in RANDOM_LETTER_KEYS:
                    continue  # lm-eval draws a different random letter on every call
                expected = process_results(PROMPTS[row["key"]], row["responses"])
                assert strict[0] == expected["inst_level_strict_acc"], row["key"]
                assert loose[0] == expected["inst_level_loose_acc"], row["key"]
                compared += len(strict[0])
    finally:
        DetectorFactory.seed = saved
    # every instruction of both files but the 2 + 2 of keys 1122 and 1129 in each
    assert compared == 832 + 834 - 2 * 4


def test_only_the_non_letter_prompts_have_invented_arguments(graded):
    # NOTES.md: keys 1122 and 1129 give "#" / "!" as letter_frequency's letter; every other argument of
    # IFEval's 541 prompts is given and valid, so nothing else may be flagged
    for rows, out in graded.values():
        flagged = {
            row["key"]: args for row, args in zip(rows, out["ifeval_invented_args"], strict=True) if args
        }
        assert flagged == {key: ["keywords:letter_frequency.letter"] for key in RANDOM_LETTER_KEYS}


def test_loose_is_never_stricter_than_strict(graded):
    for _, out in graded.values():
        for strict, loose in zip(out["ifeval_strict"], out["ifeval_loose"], strict=True):
            assert all(
                loose_ok or not strict_ok
                for s, lo in zip(strict, loose, strict=True)
                for strict_ok, loose_ok in zip(s, lo, strict=True)
            )


# ---- 2. hand-built cases ------------------------------------------------------------------------------

END = "Is there anything else I can help with?"
MULTI_IDS = [
    "punctuation:no_comma",
    "detectable_format:title",
    "startend:end_checker",
    "length_constraints:number_words",
]
# Arrow-style: every dict carries every key, None where not given
MULTI_KWARGS = [
    {"end_phrase": None, "relation": None, "num_words": None},
    {"end_phrase": None, "relation": None, "num_words": None},
    {"end_phrase": END, "relation": None, "num_words": None},
    {"end_phrase": None, "relation": "less than", "num_words": 5},
]


def test_no_comma_passes_without_and_fails_with_a_comma():
    out = IFEvalVerifier()(
        {
            "prompt": ["Greet the world without commas."],
            "responses": [["Hello world.", "Hello, world."]],
            "instruction_id_list": [["punctuation:no_comma"]],
            "kwargs": [[{}]],
        }
    )
    assert out["ifeval_strict"] == [[[True], [False]]]
    assert out["ifeval_loose"] == [[[True], [False]]]
    assert out["correctness"] == out["rewards"] == [[1.0, 0.0]]


def test_correctness_is_the_strict_fraction_of_constraints_met():
    responses = [
        f"<<Plan>>\nWe go north, then east. {END}",  # comma; title; ends right; 10 words -> 2 of 4
        f"<<Plan>> Go. {END}",  # no comma; title; ends right; 10 words -> 3 of 4
        "Go.",  # no comma only -> 1 of 4
    ]
    batch = {
        "prompt": ["Plan a walk."],
        "responses": [responses],
        "instruction_id_list": [MULTI_IDS],
        "kwargs": [MULTI_KWARGS],
    }
    out = IFEvalVerifier()(batch)
    assert out["ifeval_strict"] == [
        [[False, True, True, False], [True, True, True, False], [True, False, False, True]]
    ]
    assert out["correctness"] == [[0.5, 0.75, 0.5]]
    assert out["rewards"] == out["correctness"]
    assert out["reward_source"] == [f"ifeval:strict (lm-eval {_lm_eval_version()})"]


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


def test_loose_accepts_a_trailing_line_and_markdown_that_strict_rejects():
    responses = [f"Sure.\n{END}\n(signed, the assistant)", f"**{END}**"]
    batch = {
        "prompt": ["Answer."],
        "responses": [responses],
        "instruction_id_list": [["startend:end_checker"]],
        "kwargs": [[{"end_phrase": END}]],
    }
    strict = IFEvalVerifier()(batch)
    loose = IFEvalVerifier(reward="loose")(batch)
    assert strict["ifeval_strict"] == loose["ifeval_strict"] == [[[False], [False]]]
    assert strict["ifeval_loose"] == [[[True], [True]]]
    assert loose["rewards"] == [[1.0, 1.0]] and strict["rewards"] == [[0.0, 0.0]]
    assert loose["reward_source"][0].startswith("ifeval:loose (lm-eval ")


def test_empty_response_fails_everything_even_what_it_trivially_satisfies():
    batch = {
        "prompt": ["Write without the word 'rock' and without commas."],
        "responses": [["", "   \n"]],
        "instruction_id_list": [["keywords:forbidden_words", "punctuation:no_comma"]],
        "kwargs": [[{"forbidden_words": ["rock"]}, {}]],
    }
    out = IFEvalVerifier()(batch)
    assert out["ifeval_strict"] == out["ifeval_loose"] == [[[False, False], [False, False]]]
    assert out["correctness"] == [[0.0, 0.0]]


def test_reward_none_writes_only_verdicts_and_bad_mode_is_rejected():
    step = IFEvalVerifier(reward=None)
    assert step.output_columns() == ["ifeval_strict", "ifeval_loose", "correctness", "ifeval_invented_args"]
    out = step(
        {
            "prompt": ["p"],
            "responses": [["ok"]],
            "instruction_id_list": [["punctuation:no_comma"]],
            "kwargs": [[{}]],
        }
    )
    assert set(out) == {"ifeval_strict", "ifeval_loose", "correctness", "ifeval_invented_args"}
    with pytest.raises(ValueError, match="'best'"):
        IFEvalConfig(reward="best")
    with pytest.raises(ValueError, match="strict_args"):
        IFEvalConfig(strict_args="yes")


def test_conversational_prompt_uses_the_last_user_message():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "follow-up question"},
    ]
    assert prompt_text(messages, "row 0") == "follow-up question"
    batch = {
        "prompt": [messages],
        "responses": [["Hello world.", "Hello, world."]],
        "instruction_id_list": [["punctuation:no_comma"]],
        "kwargs": [[{}]],
    }
    assert IFEvalVerifier()(batch)["ifeval_strict"] == [[[True], [False]]]
    with pytest.raises(RowError, match="no user message"):
        IFEvalVerifier()({**batch, "prompt": [messages[:1]]})


def test_falsy_arguments_reach_the_check_but_none_means_not_given():
    # frequency=0 is kept ("at least 0" holds for any non-empty text); lm-eval's `if v` would drop it and
    # draw a random frequency instead. relation="" is kept and rejected by the check.
    base = {
        "prompt": ["p"],
        "responses": [["no such word here"]],
        "instruction_id_list": [["keywords:frequency"]],
    }
    zero = {"keyword": "zebra", "frequency": 0, "relation": "at least"}
    assert IFEvalVerifier()({**base, "kwargs": [[zero]]})["ifeval_strict"] == [[[True]]]
    with pytest.raises(RowError, match=r"'relation': ''.*'keywords:frequency'.*must be in"):
        IFEvalVerifier()({**base, "kwargs": [[{**zero, "frequency": 1, "relation": ""}]]})


def test_fingerprint_names_the_checker_version(monkeypatch):
    step = IFEvalVerifier()
    assert f"lm-eval=={_lm_eval_version()}" in step.resolved_revision()
    before = step.fingerprint()
    monkeypatch.setattr("hfpref.steps.ifeval.checker_versions", lambda: "lm-eval==9.9.9")
    assert step.fingerprint() != before
    assert IFEvalVerifier(reward="loose").fingerprint() != IFEvalVerifier().fingerprint()


# ---- 3. determinism and offline NLTK, in fresh processes ----------------------------------------------

# Every `letter` below is not a letter, so each check draws its letter; against this text a drawn letter
# passes "at least 2" exactly when it is in a..m, so unseeded runs would disagree on about half of them.
_NON_LETTERS = "#!?1234567890@$%&+=~^"
_LANGUAGE_CASES = [("see you mañana", "es"), ("bien", "de"), ("si si", "it"), ("Obrigado gracias", "pt")]
_SUBPROCESS = """
import json, sys
import nltk

def refuse(*args, **kwargs):
    raise AssertionError("nltk.download was called")

nltk.download = refuse
from hfpref.steps.ifeval import IFEvalVerifier

out = IFEvalVerifier()(json.loads(sys.stdin.read()))
print(json.dumps({"strict": out["ifeval_strict"], "loose": out["ifeval_loose"],
                  "punkt": str(nltk.data.find("tokenizers/punkt_tab/english/"))}))
"""


def _determinism_batch() -> dict[str, list]:
    rows = [r for r in _candidates("gpt-4") + _candidates("text-bison") if r["key"] in RANDOM_LETTER_KEYS]
    rows.append(
        {
            "key": -1,
            "prompt": "letters",
            "responses": ["abcdefghijklm abcdefghijklmnopqrstuvwxyz"],
            "instruction_id_list": ["keywords:letter_frequency"] * len(_NON_LETTERS),
            "kwargs": [{"letter": c, "let_frequency": 2, "let_relation": "at least"} for c in _NON_LETTERS],
        }
    )
    for text, language in _LANGUAGE_CASES:
        rows.append(
            {
                "key": -2,
                "prompt": "language",
                "responses": [text],
                "instruction_id_list": ["language:response_language"],
                "kwargs": [{"language": language}],
            }
        )
    # a sentence count, so the Punkt tables are actually loaded
    rows.append(
        {
            "key": -3,
            "prompt": "sentences",
            "responses": ["One. Two. Dr. Smith came."],
            "instruction_id_list": ["length_constraints:number_sentences"],
            "kwargs": [{"num_sentences": 3, "relation": "less than"}],
        }
    )
    return {column: [row[column] for row in rows] for column in rows[0]}


def test_verdicts_are_identical_across_processes_offline_and_leave_global_random_alone(tmp_path):
    batch = _determinism_batch()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    env["HOME"] = str(home)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _SUBPROCESS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**env, "PYTHONHASHSEED": str(seed)},
        )
        for seed in (1, 2)
    ]
    payload = json.dumps(batch)
    results = []
    for run in runs:
        stdout, stderr = run.communicate(payload, timeout=120)
        assert run.returncode == 0, stderr
        assert "[nltk_data]" not in stderr, stderr  # NLTK's download messages
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    random.seed(1234)
    state = random.getstate()
    out = IFEvalVerifier()(batch)
    assert random.getstate() == state, "the verifier must not change the caller's random state"

    in_process = {"strict": out["ifeval_strict"], "loose": out["ifeval_loose"]}
    for result in results:
        assert Path(result.pop("punkt")).is_relative_to(Path(hfpref.__file__).parent / "nltk_data")
        assert result == in_process
    assert out["ifeval_strict"][-1] == [[False]]  # 3 sentences ("Dr." does not end one): not fewer than 3
    letters = out["ifeval_strict"][len(RANDOM_LETTER_KEYS) * 2][0]
    assert 0 < sum(letters) < len(letters), "drawn letters should differ between checks"


# ---- 4. errors -------------------------------------------------------------------------------------------


def _one_row(**overrides) -> dict[str, list]:
    row = {
        "key": 4242,
        "prompt": "p",
        "responses": ["Some text."],
        "instruction_id_list": ["detectable_format:number_highlighted_sections"],
        "kwargs": [{"num_highlights": 2}],
    }
    row.update(overrides)
    return {column: [None, value] for column, value in row.items()}  # bad row is the second


def _run_second_row(batch):
    batch = {k: v[1:] for k, v in batch.items()}
    return IFEvalVerifier()(batch, indices=[17])


def test_unknown_instruction_id_names_row_and_id():
    batch = _one_row(instruction_id_list=["punctuation:no_semicolon"], kwargs=[{}])
    with pytest.raises(RowError, match=r"row 17 key=4242.*'punctuation:no_semicolon'"):
        _run_second_row(batch)


@pytest.mark.parametrize(
    "kwargs, value",
    [
        ([{"num_highlights": "three"}], "'three'"),
        ([{"num_highlights": 2, "colour": "red"}], "'colour'"),
    ],
)
def test_kwargs_the_check_rejects_name_row_id_and_value(kwargs, value):
    with pytest.raises(RowError, match=rf"row 17 key=4242.*{value}.*number_highlighted_sections"):
        _run_second_row(_one_row(kwargs=kwargs))


def test_kwargs_length_mismatch_and_non_string_response_are_row_errors():
    with pytest.raises(
        RowError, match=r"row 17 key=4242: column 'kwargs' must hold one dict per instruction"
    ):
        _run_second_row(_one_row(kwargs=[{"num_highlights": 2}, {}]))
    # (a None response is missing, not an error: see tests/test_messy_rows.py)
    with pytest.raises(RowError, match=r"row 17 key=4242: column 'responses'\[1\] is 7, not a string"):
        _run_second_row(_one_row(responses=["fine", 7]))
    with pytest.raises(RowError, match="non-empty list"):
        _run_second_row(_one_row(instruction_id_list=[], kwargs=[]))


def test_missing_column_is_named():
    batch = {k: v for k, v in _one_row().items() if k != "kwargs"}
    with pytest.raises(MissingColumnError, match="'kwargs'"):
        IFEvalVerifier()(batch)


# ---- 5. numpy batches (Ray Data) ---------------------------------------------------------------------


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        array[i] = value
    return array


def test_numpy_batches_give_the_same_output_as_lists():
    batch = {
        "prompt": ["Plan a walk.", "Greet."],
        "responses": [[f"<<Plan>> Go. {END}", ""], ["Hello, world."]],
        "instruction_id_list": [MULTI_IDS, ["punctuation:no_comma"]],
        "kwargs": [MULTI_KWARGS, [{"end_phrase": None, "relation": None, "num_words": None}]],
    }
    as_lists = IFEvalVerifier()(batch)
    ray_batch = {
        "prompt": np.array(batch["prompt"]),
        "responses": _object_array([np.array(r, dtype=object) for r in batch["responses"]]),
        "instruction_id_list": _object_array(
            [np.array(ids, dtype=object) for ids in batch["instruction_id_list"]]
        ),
        "kwargs": _object_array(
            [
                _object_array(
                    [
                        {
                            k: (None if v is None else np.int64(v) if isinstance(v, int) else v)
                            for k, v in kw.items()
                        }
                        for kw in row
                    ]
                )
                for row in batch["kwargs"]
            ]
        ),
    }
    as_numpy = IFEvalVerifier()(ray_batch)
    assert all(isinstance(column, np.ndarray) for column in as_numpy.values())
    # Ray keeps only what map_batches returns: the input columns come back unchanged with the outputs
    assert set(as_numpy) == set(ray_batch) | set(as_lists)
    assert {k: to_python(as_numpy[k]) for k in as_lists} == as_lists
    assert as_numpy["prompt"] is ray_batch["prompt"]
