"""Messy candidates rows (issue 13, items 5-7): missing prompts, missing (None) responses, invented IFEval
arguments, and property-based checks of every pair maker over random messy rows.

Expectations come from the rules in DESIGN.md and the issue: a missing prompt is never published (dropped
with ``missing_prompt``); a None response is not a candidate (never paired, per-response outputs stay
aligned and hold None / NaN for it, counted); an argument lm-eval's checks draw at random is flagged.
"""

from __future__ import annotations

import math
import random

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hfpref.core.step import RowError
from hfpref.release.summary import candidates_summary
from hfpref.steps.annotate import AnnotatedPairs
from hfpref.steps.contrast import ContrastPairs
from hfpref.steps.ifeval import IFEvalVerifier
from hfpref.steps.margins import AnnotationSelector, ImplicitMargins, selection_summary
from hfpref.steps.pair_metrics import PairMetrics
from hfpref.steps.selection import STRATEGIES, PairSelector, prompt_is_missing

MISSING_PROMPTS = [
    None,
    "",
    "  \n",
    [],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": " "}],
]


def rows(*dicts: dict) -> dict[str, list]:
    """A batch from row dicts (all with the same keys)."""
    return {name: [d[name] for d in dicts] for name in dicts[0]}


def with_metrics(batch: dict[str, list]) -> dict[str, list]:
    return {**batch, **PairMetrics()(batch)}


def selector(strategy: str) -> PairSelector:
    return PairSelector(strategy=strategy, generator_ranking=["A", "B", "C"])


# ---- 5. missing prompts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", MISSING_PROMPTS)
def test_prompt_is_missing(prompt):
    assert prompt_is_missing(prompt)


@pytest.mark.parametrize("prompt", ["q", " q ", [{"role": "user", "content": "q"}]])
def test_prompt_is_present(prompt):
    assert not prompt_is_missing(prompt)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_selection_strategy_drops_a_missing_prompt(strategy):
    good = {
        "prompt": "q",
        "responses": ["a", "b c"],
        "rewards": [1.0, 0.0],
        "generators": ["A", "B"],
        "ref_logps": [-1.0, -2.0],
    }
    batch = with_metrics(rows(*({**good, "prompt": p} for p in MISSING_PROMPTS), good))
    out = selector(strategy)(batch)
    assert out["drop_reason"] == ["missing_prompt"] * len(MISSING_PROMPTS) + [None]
    assert out["chosen"][: len(MISSING_PROMPTS)] == [None] * len(MISSING_PROMPTS)
    assert out["chosen_index"][-1] == 0 and out["rejected_index"][-1] == 1


@pytest.mark.parametrize("mode", ["high", "low", "all"])
def test_contrast_pairs_drop_a_missing_prompt(mode):
    good = {"prompt": "q", "responses": ["a", "b", "c"], "correctness": [1.0, 0.2, 0.0]}
    batch = rows(*({**good, "prompt": p} for p in MISSING_PROMPTS), good)
    out = ContrastPairs(mode=mode, max_pairs_per_prompt=None)(batch)
    n = len(MISSING_PROMPTS)
    assert out["drop_reason"][:n] == ["missing_prompt"] * n
    assert out["chosen"][:n] == [None] * n
    assert all(reason is None for reason in out["drop_reason"][n:]) and len(out["drop_reason"]) > n


def _annotated_batch(prompts: list, responses: list, rewards: list) -> dict[str, list]:
    """Candidates through ImplicitMargins and instance-level AnnotationSelector (every pair selected)."""
    n = len(responses)
    batch = rows(
        *(
            {
                "prompt": p,
                "responses": responses,
                "rewards": rewards,
                "policy_logps": [None if r is None else -1.0 - k for k, r in enumerate(responses)],
                "ref_logps": [None if r is None else -2.0 * k for k, r in enumerate(responses)],
            }
            for p in prompts
        )
    )
    batch.update(ImplicitMargins()(batch))
    batch.update(AnnotationSelector(strategy="smallest_margin", level="instance", fraction=1.0)(batch))
    assert all(len(flags) == n * (n - 1) // 2 for flags in batch["selected_for_annotation"])
    return batch


def test_annotated_pairs_drop_a_missing_prompt():
    batch = _annotated_batch([None, "", "q"], ["a", "b"], [1.0, 0.0])
    # the selector never spends budget on a missing prompt ...
    assert batch["pair_excluded_reason"] == [["missing_prompt"], ["missing_prompt"], [None]]
    assert batch["selected_for_annotation"] == [[False], [False], [True]]
    # ... and pairs flagged by another selector are still dropped, not published
    batch["selected_for_annotation"] = [[True]] * 3
    out = AnnotatedPairs()(batch)
    assert out["drop_reason"] == ["missing_prompt", "missing_prompt", None]
    assert out["chosen"] == [None, None, "a"]


# ---- 6. missing responses ----------------------------------------------------------------------------------


def test_pair_metrics_write_nan_for_a_missing_response_and_leave_the_rest():
    full = with_metrics(rows({"responses": [None, "a b", "a c d"], "rewards": [5.0, 1.0, 0.0],
                              "ref_logps": [None, -1.0, -3.0]}))  # fmt: skip
    alone = with_metrics(
        rows({"responses": ["a b", "a c d"], "rewards": [1.0, 0.0], "ref_logps": [-1.0, -3.0]})
    )
    for column in ("edit_distance_matrix", "logp_diff_matrix", "reward_margin_matrix", "dcrm_matrix"):
        matrix = np.array(full[column][0], dtype=np.float64)  # None cells -> NaN
        assert np.isnan(matrix[0, :]).all() and np.isnan(matrix[:, 0]).all(), column
        np.testing.assert_array_equal(matrix[1:, 1:], np.array(alone[column][0], dtype=np.float64))
    # the integer edit-distance matrix holds None (Arrow null) for it, the float ones NaN
    assert full["edit_distance_matrix"][0][0] == [None, None, None]
    assert all(math.isnan(v) for v in full["dcrm_matrix"][0][0])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_selection_never_chooses_a_missing_response(strategy):
    # the missing response has the best reward and, as "", would be a fine max-margin chosen
    batch = with_metrics(
        rows(
            {
                "prompt": "q",
                "responses": [None, "x y", "x z w", "v"],
                "rewards": [9.0, 2.0, 1.0, 0.0],
                "generators": ["A", "A", "B", "C"],
                "ref_logps": [-1.0, -1.0, -2.0, -3.0],
            }
        )
    )
    out = selector(strategy)(batch)
    assert out["drop_reason"] == [None]
    assert 0 not in (out["chosen_index"][0], out["rejected_index"][0])


def test_fewer_than_two_real_responses_and_empty_strings_stay_responses():
    def reason(responses, rewards):
        return PairSelector(strategy="max_margin")(rows({"prompt": "q", "responses": responses,
                                                          "rewards": rewards}))["drop_reason"][0]  # fmt: skip

    assert reason([None, "a"], [1.0, 0.0]) == "fewer_than_two_responses"
    assert reason([None, None], [1.0, 0.0]) == "fewer_than_two_responses"
    assert reason([None, None, None], None) == "fewer_than_two_responses"
    # "" is a real (if useless) response: the row has two responses, the pair is refused as empty
    assert reason(["", "a"], [1.0, 0.0]) == "empty_response"
    assert reason([None, "", "a"], [1.0, 1.0, 0.0]) == "empty_response"
    # a missing response and an empty one are not "identical"
    assert reason([None, "a", "a"], [1.0, 1.0, 0.0]) == "identical_responses"


def test_non_finite_rewards_rule():
    def pick(rewards, strategy="max_margin"):
        out = PairSelector(strategy=strategy)(rows({"prompt": "q", "responses": ["a", "b", "c"][: len(rewards)],
                                                    "rewards": rewards}))  # fmt: skip
        return out["drop_reason"][0] or (out["chosen_index"][0], out["rejected_index"][0])

    # a NaN or ±inf reward makes that response no candidate; the others still pair
    assert pick([math.inf, 1.0, 0.0]) == (1, 2)
    assert pick([1.0, -math.inf, 0.0]) == (0, 2)
    assert pick([math.nan, math.inf]) == "nan_reward"
    # two huge finite rewards: r_Δ overflows, that pair is not eligible (nan_metric when it is the only one)
    assert pick([1e308, -1e308]) == "nan_metric"
    assert pick([1e308, -1e308, 0.0]) == (0, 2)  # r_Δ = 1e308 for (0,2) and (2,1): the first in row order
    assert pick([1e308, -1e308], strategy="random") == "nan_metric"
    # ContrastPairs: the same rule on its scores
    out = ContrastPairs(mode="all", max_pairs_per_prompt=None)(
        rows({"prompt": "q", "responses": ["a", "b", "c"], "correctness": [math.inf, 1.0, 0.0]})
    )
    assert list(zip(out["chosen_index"], out["rejected_index"], strict=True)) == [(1, 2)]


def test_contrast_pairs_never_pair_a_missing_response():
    batch = rows(
        {"prompt": "q", "responses": [None, "b", "c"], "correctness": [1.0, 0.6, 0.0]},
        {"prompt": "q", "responses": [None, "b"], "correctness": [1.0, 0.0]},
    )
    out = ContrastPairs(mode="all", max_pairs_per_prompt=None)(batch)
    assert list(zip(out["chosen_index"], out["rejected_index"], out["drop_reason"], strict=True)) == [
        (1, 2, None),
        (None, None, "fewer_than_two_responses"),
    ]


def test_ifeval_grades_real_responses_and_writes_none_for_missing_ones():
    base = {"key": 7, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    out = IFEvalVerifier()(rows({**base, "responses": ["no comma here", None, "a, b"]}))
    alone = IFEvalVerifier()(rows({**base, "responses": ["no comma here", "a, b"]}))
    assert out["ifeval_strict"] == [[[True], None, [False]]] == [[alone["ifeval_strict"][0][0], None,
                                                                  alone["ifeval_strict"][0][1]]]  # fmt: skip
    assert out["ifeval_loose"] == [[[True], None, [False]]]
    assert out["correctness"] == [[1.0, None, 0.0]] and out["rewards"] == [[1.0, None, 0.0]]
    # a non-string that is not None is still an error naming row, key and position
    with pytest.raises(RowError, match=r"key=7: column 'responses'\[1\] is 3"):
        IFEvalVerifier()(rows({**base, "responses": ["x", 3]}))


def test_implicit_margins_skip_a_missing_response():
    batch = rows({"prompt": "q", "responses": ["a", None, "b"], "policy_logps": [-1.0, None, -3.0],
                  "ref_logps": [-2.0, None, -2.0]})  # fmt: skip
    out = ImplicitMargins(beta=0.5)(batch)
    assert out["implicit_rewards"] == [[0.5, None, -0.5]]
    margins = out["implicit_margins"][0]  # pairs (0,1), (0,2), (1,2)
    assert math.isnan(margins[0]) and margins[1] == pytest.approx(1.0) and math.isnan(margins[2])
    selected = AnnotationSelector(strategy="largest_margin", level="instance", fraction=1.0)({**batch, **out})
    assert selected["pair_excluded_reason"] == [["missing_response", None, "missing_response"]]
    assert selected["selected_for_annotation"] == [[False, True, False]]
    # a None log-prob of a real response is still an error
    with pytest.raises(RowError, match="policy_logps"):
        ImplicitMargins()(rows({"prompt": "q", "responses": ["a", "b"], "policy_logps": [-1.0, None],
                                "ref_logps": [-2.0, -2.0]}))  # fmt: skip


@pytest.mark.parametrize("prompt", MISSING_PROMPTS)
def test_annotation_budget_is_not_spent_on_a_missing_prompt(prompt):
    # margins (0,1), (0,2), (1,2); the missing-prompt row's are the smallest, so smallest-margin selection
    # would pick them first if they were eligible
    batch = rows(
        {"prompt": prompt, "responses": ["a", "b", "c"], "pair_indices": [[0, 1], [0, 2], [1, 2]],
         "implicit_margins": [0.01, 0.02, 0.03]},
        {"prompt": "q", "responses": ["x", "y", "z"], "pair_indices": [[0, 1], [0, 2], [1, 2]],
         "implicit_margins": [0.5, 0.9, 0.7]},
    )  # fmt: skip
    out = AnnotationSelector(strategy="smallest_margin", level="instance", fraction=1.0)(batch)
    assert out["pair_excluded_reason"] == [["missing_prompt"] * 3, [None] * 3]
    assert out["selected_for_annotation"] == [[False] * 3, [True] * 3]


def test_corpus_budget_goes_to_prompts_that_exist():
    dataset = datasets.Dataset.from_dict(
        rows(
            {"prompt": " ", "responses": ["a", "b"], "pair_indices": [[0, 1]], "implicit_margins": [0.01]},
            {"prompt": "q1", "responses": ["x", "y"], "pair_indices": [[0, 1]], "implicit_margins": [0.2]},
            {"prompt": "q2", "responses": ["u", "v"], "pair_indices": [[0, 1]], "implicit_margins": [0.3]},
        )
    )
    out = AnnotationSelector(strategy="smallest_margin", level="corpus", count=2).apply(dataset)
    assert out["selected_for_annotation"] == [[False], [True], [True]]  # the budget of 2: both real prompts
    assert out["pair_excluded_reason"] == [["missing_prompt"], [None], [None]]
    assert selection_summary(out)["excluded"] == {"missing_prompt": 1}


def test_log_probs_and_rewards_skip_missing_responses(tiny_models):
    from hfpref.steps.logprobs import LogProbAnnotator
    from hfpref.steps.rewards import RewardAnnotator

    with_missing = rows({"prompt": "Say hi.", "responses": [None, "hi there", None, "hello"]})
    without = rows({"prompt": "Say hi.", "responses": ["hi there", "hello"]})
    lp = LogProbAnnotator(model=str(tiny_models["policy"]))
    out, ref = lp(with_missing), lp(without)
    assert out["ref_logps"][0][0] is None and out["ref_logps"][0][2] is None
    assert [out["ref_logps"][0][k] for k in (1, 3)] == pytest.approx(ref["ref_logps"][0], abs=1e-5)
    assert out["ref_token_counts"] == [
        [None, *ref["ref_token_counts"][0][:1], None, ref["ref_token_counts"][0][1]]
    ]
    rm = RewardAnnotator(model=str(tiny_models["reward"]))
    out, ref = rm(with_missing), rm(without)
    assert out["rewards"][0][0] is None and out["rewards"][0][2] is None
    assert [out["rewards"][0][k] for k in (1, 3)] == pytest.approx(ref["rewards"][0], abs=1e-5)
    # a row of missing responses only scores nothing and still writes aligned Nones
    assert lp(rows({"prompt": "q", "responses": [None]}))["ref_logps"] == [[None]]
    # through datasets, a first batch of Nones only does not fix a null type the next batch breaks
    dataset = datasets.Dataset.from_dict(
        rows({"prompt": "q", "responses": [None]}, {"prompt": "q", "responses": ["hi"]})
    )
    mapped = lp.apply(dataset, batch_size=1)
    assert mapped["ref_logps"][0] == [None] and mapped["ref_logps"][1] == pytest.approx(lp(rows({"prompt": "q",
        "responses": ["hi"]}))["ref_logps"][0], abs=1e-5)  # fmt: skip
    assert rm.apply(dataset, batch_size=1)["rewards"][0] == [None]


def test_datasets_apply_keeps_types_when_a_batch_holds_only_missing_values():
    dataset = datasets.Dataset.from_list(
        [
            {"key": 1, "prompt": "p", "responses": [None], "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{"letter": None, "let_frequency": None, "let_relation": None}]},
            {"key": 2, "prompt": "p", "responses": ["x y", "a, b"], "instruction_id_list": ["keywords:letter_frequency"],
             "kwargs": [{"letter": "#", "let_frequency": 2, "let_relation": "at least"}]},
        ]
    )  # fmt: skip
    graded = IFEvalVerifier().apply(dataset, batch_size=1)
    assert graded["ifeval_strict"][0] == [None] and graded["correctness"][0] == [None]
    assert graded["ifeval_invented_args"] == [[], ["keywords:letter_frequency.letter"]]
    assert graded["correctness"][1] == IFEvalVerifier()(dataset[1:])["correctness"][0]
    logps = datasets.Dataset.from_dict(
        rows(
            {
                "prompt": "q",
                "responses": [None, None],
                "policy_logps": [None, None],
                "ref_logps": [None, None],
            },
            {"prompt": "q", "responses": ["a", "b"], "policy_logps": [-1.0, -2.0], "ref_logps": [-1.0, -1.0]},
        )
    )
    margins = ImplicitMargins(beta=1.0).apply(logps, batch_size=1)
    assert margins["implicit_rewards"] == [[None, None], [0.0, -1.0]]
    assert math.isnan(margins["implicit_margins"][0][0]) and margins["implicit_margins"][1] == [1.0]


def test_candidates_summary_counts_missing_responses_and_invented_arguments():
    candidates = datasets.Dataset.from_dict(
        {
            "responses": [["a", None], [None, None, "c"], ["x"], []],
            "ifeval_invented_args": [[], ["keywords:letter_frequency.letter"], [], None],
        }
    )
    assert candidates_summary(candidates) == {
        "candidate_rows": 4,
        "responses": 6,
        "responses_per_generator": {"unknown": 6},  # no generators column
        "missing_responses": 3,
        "missing_responses_per_generator": {"unknown": 3},
        "rows_with_missing_responses": 2,
        "ifeval_invented_args": 1,
        "rows_with_ifeval_invented_args": 1,
    }
    # without the IFEval column the argument counts are None (unknown), not 0
    bare = candidates_summary({"responses": [["a"]]})
    assert bare["missing_responses"] == 0 and bare["ifeval_invented_args"] is None


# ---- 7. invented IFEval arguments ----------------------------------------------------------------------------


def _ifeval_row(instruction_ids: list[str], kwargs: list[dict], response: str = "Hello world.") -> dict:
    return rows({"key": 1122, "prompt": "p", "responses": [response], "instruction_id_list": instruction_ids,
                 "kwargs": kwargs})  # fmt: skip


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "invented"),
    [
        (
            "keywords:letter_frequency",
            {"letter": "#", "let_frequency": 2, "let_relation": "at least"},
            ["letter"],
        ),
        ("keywords:letter_frequency", {"letter": "a", "let_frequency": 2}, ["let_relation"]),
        ("length_constraints:number_sentences", {"num_sentences": 3}, ["relation"]),
        ("length_constraints:number_sentences", {"relation": "less than"}, ["num_sentences"]),
        ("length_constraints:number_words", {"num_words": -1, "relation": "at least"}, ["num_words"]),
        ("detectable_format:number_highlighted_sections", {}, ["num_highlights"]),
        ("language:response_language", {}, ["language"]),
        ("startend:end_checker", {}, ["end_phrase"]),
        # given and valid: nothing invented (an upper-case letter is lower-cased, not replaced)
        ("keywords:letter_frequency", {"letter": "A", "let_frequency": 2, "let_relation": "at least"}, []),
        ("punctuation:no_comma", {}, []),
    ],
)
def test_invented_arguments_are_flagged(instruction_id, kwargs, invented):
    out = IFEvalVerifier()(_ifeval_row([instruction_id], [kwargs]))
    assert out["ifeval_invented_args"] == [[f"{instruction_id}.{name}" for name in invented]]


def test_invented_letter_is_graded_as_lm_eval_grades_it_with_the_same_draw():
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    from hfpref.steps.ifeval import check_seed

    iid, kwargs = "keywords:letter_frequency", {"letter": "#", "let_frequency": 3, "let_relation": "at least"}
    responses = ["aaa bbb ccc", "zzz yyy", "the quick brown fox jumps over the lazy dog " * 3]
    out = IFEvalVerifier()(rows({"key": 1, "prompt": "p", "responses": responses, "instruction_id_list": [iid],
                                 "kwargs": [kwargs]}))  # fmt: skip
    saved = random.getstate()
    try:
        random.seed(check_seed(iid, kwargs))  # the draw hfpref makes, reproduced in lm-eval's own check
        check = INSTRUCTION_DICT[iid](iid)
        check.build_description(**kwargs)
    finally:
        random.setstate(saved)
    expected = [[bool(r.strip()) and bool(check.check_following(r))] for r in responses]
    assert out["ifeval_strict"] == [expected]
    assert out["ifeval_invented_args"] == [[f"{iid}.letter"]]


def test_strict_args_refuses_invented_arguments_naming_row_key_instruction_and_argument():
    batch = _ifeval_row(
        ["punctuation:no_comma", "keywords:letter_frequency"],
        [{}, {"letter": "#", "let_frequency": 2, "let_relation": "at least"}],
    )
    with pytest.raises(
        RowError, match=r"row 5 key=1122: .*'keywords:letter_frequency'.*'letter'.*'#'.*strict_args=False"
    ):
        IFEvalVerifier(strict_args=True)(batch, indices=[5])
    # valid arguments pass under strict_args and grade as without it
    ok = _ifeval_row(["punctuation:no_comma"], [{}])
    assert IFEvalVerifier(strict_args=True)(ok)["ifeval_strict"] == IFEvalVerifier()(ok)["ifeval_strict"]


# ---- property-based: every pair maker over random messy rows ---------------------------------------------

# weighted by repetition, so well-formed values are common enough that most examples keep some pairs, while
# None, empty, duplicate and non-finite values still turn up in many
RESPONSE = st.sampled_from(["a", "b", "a b", "c d e", "ab", "b", "x y", "z", None, "", " "])
SPECIAL = [None, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf]
REWARDS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, 3.0, -2.0, 0.25] * 3 + SPECIAL),  # ties included
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)
PROMPTS = st.sampled_from(["q", "another q", [{"role": "user", "content": "q"}]] * 4 + MISSING_PROMPTS)


@st.composite
def candidate_rows(draw) -> list[dict]:
    out = []
    for key in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 6))
        per_response = st.lists(REWARDS, min_size=n, max_size=n)
        out.append(
            {
                "key": key,
                "prompt": draw(PROMPTS),
                "responses": draw(st.lists(RESPONSE, min_size=n, max_size=n)),
                # a whole column None in one row of five
                "rewards": None if draw(st.integers(0, 4)) == 0 else draw(per_response),
                "correctness": None if draw(st.integers(0, 4)) == 0 else draw(per_response),
                "ref_logps": draw(st.one_of(per_response, st.none())),
                "generators": None
                if draw(st.integers(0, 3)) == 0
                else draw(st.lists(st.sampled_from(["A", "B", "C", "D", None]), min_size=n, max_size=n)),
            }
        )
    return out


def _check_pair(row: dict, out: dict, k: int) -> None:
    """A kept pairs row: two different, real, non-empty responses of a row with a prompt."""
    chosen, rejected = out["chosen_index"][k], out["rejected_index"][k]
    assert chosen is not None and rejected is not None and chosen != rejected
    texts = row["responses"]
    assert texts[chosen] is not None and texts[rejected] is not None
    assert texts[chosen].strip() and texts[rejected].strip() and texts[chosen] != texts[rejected]
    assert not prompt_is_missing(row["prompt"])
    completion = out["chosen"][k]
    assert (completion if isinstance(completion, str) else completion[0]["content"]) == texts[chosen]
    for name in ("reward_chosen", "reward_rejected", "reward_margin", "edit_distance", "logp_diff", "dcrm"):
        value = out[name][k] if name in out else None
        assert value is None or math.isfinite(value), (name, value)


def _check_drop(out: dict, k: int) -> None:
    assert isinstance(out["drop_reason"][k], str) and out["drop_reason"][k]
    assert out["chosen"][k] is None and out["rejected"][k] is None and out["chosen_index"][k] is None


def _expected_drop(row: dict) -> str | None:
    """The drop reason the first two rules force, whatever the strategy."""
    if prompt_is_missing(row["prompt"]):
        return "missing_prompt"
    if sum(r is not None for r in row["responses"]) < 2:
        return "fewer_than_two_responses"
    return None


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(candidate_rows())
def test_pair_selection_invariants_on_messy_rows(candidates):
    batch = with_metrics(rows(*candidates))
    for strategy in STRATEGIES:
        out = selector(strategy)(batch)
        assert len(out["drop_reason"]) == len(candidates)  # one pairs row per candidates row
        for reason in out["drop_reason"]:
            event(f"{strategy}: {reason or 'kept'}")
        for k, row in enumerate(candidates):
            forced = _expected_drop(row)
            if forced is not None:
                assert out["drop_reason"][k] == forced, (strategy, row)
            if out["drop_reason"][k] is None:
                _check_pair(row, out, k)
                assert (
                    math.isfinite(out["reward_chosen"][k])
                    and out["reward_margin"][k] > 0
                    or strategy == "ds_fix"
                )
            else:
                _check_drop(out, k)


@FAST
@given(candidate_rows(), st.sampled_from(["high", "low", "all"]), st.sampled_from([None, 1, 2]))
def test_contrast_pairs_invariants_on_messy_rows(candidates, mode, max_pairs):
    batch = rows(*candidates)
    out = ContrastPairs(mode=mode, max_pairs_per_prompt=max_pairs)(batch)
    by_key: dict[int, list[int]] = {}
    for k, key in enumerate(out["key"]):
        by_key.setdefault(key, []).append(k)
    assert sorted(by_key) == [row["key"] for row in candidates]  # every input row gives rows
    for row in candidates:
        produced = by_key[row["key"]]
        forced = _expected_drop(row)
        dropped = [k for k in produced if out["drop_reason"][k] is not None]
        # a row is either dropped once, with its reason, or kept with 1..max_pairs pairs
        assert (len(dropped) == 1 == len(produced)) or not dropped
        if forced is not None:
            assert [out["drop_reason"][k] for k in produced] == [forced]
        for k in produced:
            if out["drop_reason"][k] is None:
                _check_pair(row, out, k)
                assert out["chosen_correctness"][k] > out["rejected_correctness"][k]
            else:
                _check_drop(out, k)
        if max_pairs is not None:
            assert len(produced) <= max_pairs


@FAST
@given(candidate_rows())
def test_annotated_pairs_invariants_on_messy_rows(candidates):
    batch = rows(*candidates)
    for row in candidates:
        row["policy_logps"] = [None if r is None else -float(len(r)) for r in row["responses"]]
        row["ref_logps"] = [None if r is None else -0.5 * len(r) for r in row["responses"]]
    batch = rows(*candidates)
    batch.update(ImplicitMargins()(batch))
    batch.update(AnnotationSelector(strategy="random", level="instance", fraction=1.0)(batch))
    out = AnnotatedPairs()(batch)
    selected = [(row, k) for row, flags in zip(candidates, batch["selected_for_annotation"], strict=True)
                for k, flag in enumerate(flags) if flag]  # fmt: skip
    assert len(out["drop_reason"]) == len(selected)  # one row per selected pair, kept or dropped
    for k, (row, _) in enumerate(selected):
        assert out["key"][k] == row["key"]
        assert None not in [row["responses"][i] for i in (out["chosen_index"][k], out["rejected_index"][k])
                            if i is not None]  # fmt: skip
        if prompt_is_missing(row["prompt"]):
            assert out["drop_reason"][k] == "missing_prompt"
        if out["drop_reason"][k] is None:
            _check_pair(row, out, k)
        else:
            _check_drop(out, k)


@FAST
@given(candidate_rows())
def test_pair_metrics_stay_aligned_on_messy_rows(candidates):
    out = PairMetrics()(rows(*candidates))
    for row, matrix in zip(candidates, out["dcrm_matrix"], strict=True):
        n = len(row["responses"])
        assert np.array(matrix, dtype=np.float64).reshape(n, n).shape == (n, n)
        for k, text in enumerate(row["responses"]):
            if text is None:
                assert all(v is None or math.isnan(v) for v in matrix[k])
