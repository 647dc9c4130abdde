"""Annotating only the selected pairs' responses, and the TRL preference rows they become."""

from __future__ import annotations

import datasets
import pytest

from hfpref.core.errors import UserError
from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.annotate import AnnotatedPairs, AnnotateSelected, needed_responses
from hfpref.steps.margins import unordered_pairs
from hfpref.steps.rewards import RewardAnnotator
from hfpref.steps.selection import split_dropped


def _row(prompt, responses, selected, **extra) -> dict:
    return {
        "prompt": prompt,
        "responses": responses,
        "pair_indices": [list(p) for p in unordered_pairs(len(responses))],
        "selected_for_annotation": selected,
        **extra,
    }


# ---- pairs rows, by hand -------------------------------------------------------------------------------


def _scored(prompt, responses, selected, rewards, implicit, **extra) -> dict:
    return _row(
        prompt,
        responses,
        selected,
        rewards=rewards,
        implicit_rewards=implicit,
        selection_strategy="smallest_margin",
        selection_level="corpus",
        **extra,
    )


def _chat_row(content, responses, rewards, implicit, generators, key) -> dict:
    """A one-pair conversational row, its pair selected, scored by the same reward model."""
    prompt = [{"role": "user", "content": content}]
    return _scored(
        prompt,
        responses,
        [True],
        rewards=rewards,
        implicit=implicit,
        ref_logps=[-1.0, -2.0],
        generators=generators,
        reward_source="rm@abc",
        key=key,
    )


def test_pairs_rows_by_hand():
    rows = [
        _scored(
            "p0",
            ["a", "b", "c"],
            [True, True, False],  # (0,1) (0,2) selected; (1,2) not
            rewards=[0.5, 0.9, 0.5],
            implicit=[0.1, -0.2, 0.3],
            ref_logps=[-3.0, -5.5, -4.0],
            generators=["m", "m", "m"],
            reward_source="rm@abc",
            key=7,
        ),
        _chat_row(
            "hi", ["x", "y"], [None, 1.0], [0.0, 0.0], ["m", "m"], key=8
        ),  # the annotator could not score x
        _chat_row("yo", ["u", "v"], [0.2, 0.7], [0.4, 0.1], ["m", "n"], key=9),
    ]
    step = AnnotatedPairs()
    out = step({k: [r[k] for r in rows[:1]] for k in rows[0]})
    assert out["prompt"] == ["p0", "p0"]
    # (0, 1): reward 0.9 > 0.5, so chosen = 1; implicit margin r̂_1 − r̂_0 = −0.2 − 0.1
    assert (out["chosen"][0], out["rejected"][0]) == ("b", "a")
    assert (out["chosen_index"][0], out["rejected_index"][0]) == (1, 0)
    assert out["reward_margin"][0] == pytest.approx(0.4)
    assert out["implicit_margin"][0] == pytest.approx(-0.3)
    assert (out["implicit_reward_chosen"][0], out["implicit_reward_rejected"][0]) == (-0.2, 0.1)
    assert out["logp_diff"][0] == pytest.approx(2.5) and out["edit_distance"][0] is None
    assert out["pair_strategy"] == ["smallest_margin_corpus"] * 2
    # (0, 2): rewards tied, dropped with a reason (never silently)
    assert out["drop_reason"] == [None, "rewards_tied"] and out["chosen"][1] is None
    # per-row columns come along; per-response and per-pair lists do not
    assert out["reward_source"] == ["rm@abc"] * 2 and out["key"] == [7, 7]
    assert out["selection_level"] == ["corpus"] * 2
    for name in ("responses", "rewards", "ref_logps", "generators", "implicit_rewards", "pair_indices"):
        assert name not in out

    pairs = step.apply(datasets.Dataset.from_list(rows[1:]), batch_size=1)
    kept, dropped = split_dropped(pairs)
    assert dropped == {"nan_reward": 1}
    assert kept["chosen"] == [[{"role": "assistant", "content": "v"}]]
    assert kept["implicit_margin"] == [pytest.approx(-0.3)]
    assert (kept["chosen_generator"], kept["rejected_generator"]) == (["n"], ["m"])


def test_rows_without_selection_make_no_pairs_and_keep_types():
    rows = [
        _scored("p0", ["a", "b"], [False], rewards=[None, None], implicit=[0.0, 0.0]),
        _scored("p1", ["c", "d"], [True], rewards=[0.0, 1.0], implicit=[0.5, -0.5]),
    ]
    pairs = AnnotatedPairs().apply(datasets.Dataset.from_list(rows), batch_size=1)  # first batch: no rows
    assert pairs["prompt"] == ["p1"] and pairs["chosen"] == ["d"] and pairs["implicit_margin"] == [-1.0]


def test_pairs_need_their_columns_and_aligned_rewards():
    row = _scored("p", ["a", "b"], [True], rewards=[1.0], implicit=[0.0, 0.0])
    with pytest.raises(RowError, match=r"column 'rewards' must hold 2 numbers.*\[1.0\]"):
        AnnotatedPairs()({k: [v] for k, v in row.items()})
    row.pop("implicit_rewards")
    with pytest.raises(MissingColumnError, match="implicit_rewards"):
        AnnotatedPairs()({k: [v] for k, v in row.items()})


# ---- annotating only what was selected ---------------------------------------------------------------------


def test_needed_responses():
    pairs = [list(p) for p in unordered_pairs(4)]  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert needed_responses([False, False, True, False, False, True], pairs) == [0, 2, 3]
    assert needed_responses([False] * 6, pairs) == []


def test_reward_model_scores_exactly_the_selected_responses(tiny_models):
    rows = [
        _row("Write a poem.", ["The sea.", "Blue waves.", "No."], [False, False, False]),
        _row(
            "List the planets.",
            ["Mercury.", "Venus, Earth.", "Mars.", "Jupiter."],
            [False, True, False, False, False, False],
        ),
        _row([{"role": "user", "content": "Why is the sky blue?"}], ["Light.", "Air."], [True]),
    ]
    rows[2]["prompt"] = "Why is the sky blue?"  # one Arrow schema: standard prompts throughout
    model = str(tiny_models["reward"])
    step = AnnotateSelected(annotator="RewardAnnotator", annotator_config={"model": model})
    seen: list[list[str]] = []
    inner_process = step.annotator.process

    def spy(batch, rank, indices):
        seen.extend(batch["responses"])
        return inner_process(batch, rank, indices)

    step.annotator.process = spy
    out = step.apply(datasets.Dataset.from_list(rows), batch_size=1)  # the first batch annotates nothing

    full = RewardAnnotator(model=model)(
        {"prompt": [r["prompt"] for r in rows], "responses": [r["responses"] for r in rows]}
    )
    assert out["rewards"][0] == [None, None, None]
    # row 1 selected position 1 of (0,1) (0,2) (0,3) (1,2) (1,3) (2,3): the pair (0, 2)
    assert out["rewards"][1][1] is None and out["rewards"][1][3] is None
    assert [out["rewards"][1][k] for k in (0, 2)] == pytest.approx(
        [full["rewards"][1][k] for k in (0, 2)], abs=1e-5
    )
    assert out["rewards"][2] == pytest.approx(full["rewards"][2], abs=1e-5)
    assert out["response_annotated"] == [[False] * 3, [True, False, True, False], [True, True]]
    assert out["reward_source"][0] is None and out["reward_source"][2] == full["reward_source"][2]
    # the annotator saw only the needed responses (row 1 twice: apply first learns the output types on the
    # first row that needs annotation)
    assert sorted(map(tuple, seen)) == sorted(
        [("Mercury.", "Mars."), ("Mercury.", "Mars."), ("Light.", "Air.")]
    )


def test_ifeval_verifier_as_the_annotator():
    row = _row(
        "Answer without commas.",
        ["no commas here", "with, a comma", "also fine", "comma, again"],
        [True, False, False, False, False, True],  # (0, 1) and (2, 3)
        instruction_id_list=["punctuation:no_comma"],
        kwargs=[{}],
    )
    step = AnnotateSelected(annotator="IFEvalVerifier", annotator_config={"reward": "strict"})
    assert "instruction_id_list" in step.input_columns()
    out = step({k: [v] for k, v in row.items()})
    assert out["rewards"] == [[1.0, 0.0, 1.0, 0.0]]
    assert out["ifeval_strict"] == [[[True], [False], [True], [False]]]
    row.update(
        {k: v[0] for k, v in out.items()},
        implicit_rewards=[0.0] * 4,
        selection_strategy="random",
        selection_level="instance",
    )
    pairs = AnnotatedPairs()({k: [v] for k, v in row.items()})
    assert pairs["chosen"] == ["no commas here", "also fine"]
    assert pairs["rejected"] == ["with, a comma", "comma, again"]
    assert pairs["instruction_id_list"] == [["punctuation:no_comma"]] * 2  # per-row columns carried
    assert "ifeval_strict" not in pairs and "correctness" not in pairs


def test_unknown_annotator_is_named():

    with pytest.raises(UserError, match="unknown step .PairRM."):
        AnnotateSelected(annotator="PairRM")


def test_steps_keep_their_public_paths_in_manifests():
    # the classes live in submodules of hfpref.steps.annotate; manifests and fingerprints keep the package's path
    assert AnnotatedPairs().describe()["step"] == "hfpref.steps.annotate.AnnotatedPairs"
    selected = AnnotateSelected(annotator="IFEvalVerifier")
    assert selected.describe()["step"] == "hfpref.steps.annotate.AnnotateSelected"
