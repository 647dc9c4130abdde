"""ContrastPairs and mix_contrast on hand-built candidate sets, with gaps and expected pairs worked out by hand."""

from __future__ import annotations

import collections
import math

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, RowError, to_numpy_column, to_python
from hfpref.steps.contrast import (
    ContrastConfig,
    ContrastPairs,
    MixError,
    contrast_level,
    largest_mix_size,
    largest_remainder,
    mix_contrast,
    mix_counts,
)
from hfpref.steps.selection import split_dropped


def row(**columns) -> dict[str, list]:
    """A one-row batch."""
    return {name: [value] for name, value in columns.items()}


def pairs_of(out: dict) -> list[tuple]:
    """(chosen_index, rejected_index, contrast, level) of each kept pair, or ("dropped", reason)."""
    result = []
    for i in range(len(out["prompt"])):
        if out["drop_reason"][i] is not None:
            result.append(("dropped", out["drop_reason"][i]))
        else:
            result.append(
                (
                    out["chosen_index"][i],
                    out["rejected_index"][i],
                    out["contrast"][i],
                    out["contrast_level"][i],
                )
            )
    return result


# Four responses meeting 4, 3, 2 and 0 of k = 4 constraints. Positive gaps (chosen, rejected):
#   (0,1) .25 low   (0,2) .5 high   (0,3) 1 high   (1,2) .25 low   (1,3) .75 high   (2,3) .5 high
FOUR = row(
    prompt="q",
    responses=["all four", "three", "two", "none"],
    correctness=[1.0, 0.75, 0.5, 0.0],
    instruction_id_list=["a", "b", "c", "d"],
)


def test_high_contrast_is_best_versus_worst():
    out = ContrastPairs(mode="high")(FOUR)
    assert pairs_of(out) == [(0, 3, 1.0, "high")]
    assert (out["chosen"], out["rejected"]) == (["all four"], ["none"])
    assert (out["chosen_correctness"], out["rejected_correctness"]) == ([1.0], [0.0])
    assert out["pair_strategy"] == ["rs_high_contrast"]
    assert out["difficulty"] == [4]  # len(instruction_id_list) when there is no difficulty column


def test_every_high_pair_largest_gap_first_then_better_chosen():
    out = ContrastPairs(mode="high", max_pairs_per_prompt=None)(FOUR)
    # gaps 1, .75, then the two .5 pairs: (0,2) has the better chosen (1.0 > .5)
    assert pairs_of(out) == [
        (0, 3, 1.0, "high"),
        (1, 3, 0.75, "high"),
        (0, 2, 0.5, "high"),
        (2, 3, 0.5, "high"),
    ]


def test_equal_gaps_tie_despite_floating_point_and_the_better_chosen_goes_first():
    # k = 5: 1 − 0.4 = 0.6 but 0.8 − 0.2 = 0.6000000000000001; both meet 3 more of 5 constraints
    fifths = row(prompt="f", responses=["five", "four", "two", "one"], correctness=[1.0, 0.8, 0.4, 0.2])
    out = ContrastPairs(mode="high", max_pairs_per_prompt=None)(fifths)
    assert [(c, r) for c, r, _, _ in pairs_of(out)] == [(0, 3), (0, 2), (1, 3)]


def test_low_contrast_prefers_the_better_chosen():
    out = ContrastPairs(mode="low", max_pairs_per_prompt=None)(FOUR)
    assert pairs_of(out) == [(0, 1, 0.25, "low"), (1, 2, 0.25, "low")]
    assert pairs_of(ContrastPairs(mode="low")(FOUR)) == [(0, 1, 0.25, "low")]
    assert ContrastPairs(mode="low")(FOUR)["pair_strategy"] == ["rs_low_contrast"]


def test_all_mode_tags_mid_gaps_and_thirds():
    # k = 3: correctness 1, 2/3, 1/3, 0; gaps of 1/3 are between low (≤ .25) and high (≥ .5): mid
    thirds = row(prompt="t", responses=["w", "x", "y", "z"], correctness=[1.0, 2 / 3, 1 / 3, 0.0])
    out = ContrastPairs(mode="all", max_pairs_per_prompt=None)(thirds)
    got = [(c, r, level) for c, r, _, level in pairs_of(out)]
    assert got == [
        (0, 3, "high"),
        (0, 2, "high"),
        (1, 3, "high"),
        (0, 1, "mid"),
        (1, 2, "mid"),
        (2, 3, "mid"),
    ]
    assert out["contrast"] == pytest.approx([1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert out["pair_strategy"] == ["rs_contrast"] * 6
    assert pairs_of(ContrastPairs(mode="low")(thirds)) == [("dropped", "no_low_contrast_pair")]


def test_a_gap_on_the_threshold_counts_despite_floating_point():
    # 7/10 − 2/10 is 0.49999999999999994 in floating point; the pair meets 5 more of 10 constraints: high
    tenths = row(prompt="s", responses=["seven of ten", "two of ten"], correctness=[7 / 10, 2 / 10])
    assert 7 / 10 - 2 / 10 < 0.5
    assert pairs_of(ContrastPairs(mode="high")(tenths))[0][3] == "high"
    assert contrast_level(0.25 + 1e-12, 0.5, 0.25) == "low"
    assert contrast_level(0.26, 0.5, 0.25) == "mid"


@pytest.mark.parametrize(
    ("responses", "scores", "mode", "reason"),
    [
        (["only"], [1.0], "high", "fewer_than_two_responses"),
        (["", "   "], [1.0, 0.0], "high", "empty_response"),
        (["a", "b"], [None, 0.5], "high", "nan_score"),
        (["a", "b"], [float("nan"), 0.5], "all", "nan_score"),
        (["same", "same"], [1.0, 0.0], "all", "identical_responses"),
        (["a", "b", "c"], [0.5, 0.5, 0.5], "all", "scores_tied"),
        (["a", "b"], [0.75, 0.5], "high", "no_high_contrast_pair"),
        (["a", "b"], [1.0, 0.0], "low", "no_low_contrast_pair"),
    ],
)
def test_drop_reasons(responses, scores, mode, reason):
    out = ContrastPairs(mode=mode)(row(prompt="p", responses=responses, correctness=scores))
    assert pairs_of(out) == [("dropped", reason)]
    assert out["chosen"] == [None] and out["contrast"] == [None] and out["contrast_level"] == [None]


def test_tied_responses_never_pair_and_equal_texts_never_pair_twice():
    batch = row(prompt="p", responses=["a", "b", "a", "c"], correctness=[1.0, 0.0, 1.0, 1.0])
    out = ContrastPairs(mode="all", max_pairs_per_prompt=None)(batch)
    texts = list(zip(out["chosen"], out["rejected"], strict=True))
    # (a, b) from 0 or 2 once, (c, b) once; a, c and the second a are tied with each other
    assert sorted(texts) == [("a", "b"), ("c", "b")]
    assert all(c != r for c, r in texts)


def test_ties_are_broken_by_a_seeded_shuffle_of_the_prompt():
    def pick(prompt: str, seed: int = 0) -> tuple:
        batch = row(prompt=prompt, responses=["a", "b", "c", "d"], correctness=[1.0, 1.0, 0.0, 0.0])
        return pairs_of(ContrastPairs(mode="high", seed=seed)(batch))[0][:2]

    picks = [pick(f"prompt {i}") for i in range(24)]
    assert set(picks) <= {(0, 2), (0, 3), (1, 2), (1, 3)}
    assert len(set(picks)) > 1  # not always the first tied pair
    assert picks == [pick(f"prompt {i}") for i in range(24)]
    assert [pick(f"prompt {i}", seed=5) for i in range(24)] != picks
    # the pick does not depend on the batch the row is in
    batch = {
        "prompt": [f"prompt {i}" for i in range(24)],
        "responses": [["a", "b", "c", "d"]] * 24,
        "correctness": [[1.0, 1.0, 0.0, 0.0]] * 24,
    }
    assert [p[:2] for p in pairs_of(ContrastPairs(mode="high")(batch))] == picks


def test_rewards_generators_and_pair_metrics_fill_the_design_columns():
    batch = row(
        prompt="p",
        responses=["good", "bad"],
        correctness=[1.0, 0.0],
        rewards=[0.9, 0.1],
        generators=["model-a", "model-b"],
        edit_distance_matrix=[[0, 3], [3, 0]],
        logp_diff_matrix=[[0.0, 2.0], [2.0, 0.0]],
        difficulty=5,
        key=11,
    )
    out = ContrastPairs(mode="high")(batch)
    assert (out["chosen_generator"], out["rejected_generator"]) == (["model-a"], ["model-b"])
    assert (out["reward_chosen"], out["reward_rejected"]) == ([0.9], [0.1])
    assert out["reward_margin"] == [pytest.approx(0.8)]
    assert (out["edit_distance"], out["logp_diff"]) == ([3.0], [2.0])
    sigma = 1 / (1 + math.exp(-0.8))
    assert out["dcrm"] == [pytest.approx((sigma - 0.5) / (3 + 2 + 1))]
    assert out["difficulty"] == [5] and out["key"] == [11]
    for column in ("responses", "correctness", "rewards", "generators", "edit_distance_matrix"):
        assert column not in out
    bare = ContrastPairs(mode="high")(row(prompt="p", responses=["good", "bad"], correctness=[1.0, 0.0]))
    assert bare["reward_margin"] == [None] and bare["dcrm"] == [None] and bare["difficulty"] == [None]


def test_conversational_prompts_get_assistant_messages():
    prompt = [{"role": "user", "content": "q"}]
    out = ContrastPairs(mode="high")(row(prompt=prompt, responses=["good", "bad"], correctness=[1.0, 0.0]))
    assert out["chosen"] == [[{"role": "assistant", "content": "good"}]]
    assert out["rejected"] == [[{"role": "assistant", "content": "bad"}]]


def test_dataset_apply_keeps_types_when_a_batch_is_all_dropped():
    candidates = datasets.Dataset.from_dict(
        {
            "prompt": ["tied", "four", "two"],
            "responses": [["x", "y"], FOUR["responses"][0], ["p", "q"]],
            "correctness": [[0.5, 0.5], FOUR["correctness"][0], [1.0, 0.0]],
            "difficulty": [2, 4, 2],
        }
    )
    step = ContrastPairs(mode="high", max_pairs_per_prompt=2)
    pairs = step.apply(candidates, batch_size=1)  # the first batch is all dropped
    assert pairs.features["contrast"] == datasets.Value("float64")
    assert pairs.features["difficulty"] == datasets.Value("int64")
    assert pairs.features["chosen"] == datasets.Value("string")
    kept, reasons = split_dropped(pairs)
    assert reasons == collections.Counter({"scores_tied": 1})
    assert list(zip(kept["prompt"], kept["chosen"], kept["rejected"], kept["difficulty"], strict=True)) == [
        ("four", "all four", "none", 4),
        ("four", "three", "none", 4),
        ("two", "p", "q", 2),
    ]
    assert step.apply(candidates, batch_size=3).to_dict() == pairs.to_dict()


def test_numpy_batches_give_the_same_pairs():
    plain = {
        "prompt": ["q", "r"],
        "responses": [["a", "b", "c"], ["d", "e", "f"]],
        "correctness": [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]],
    }
    as_numpy = ContrastPairs(mode="all", max_pairs_per_prompt=None)(
        {k: to_numpy_column(v) for k, v in plain.items()}
    )
    as_lists = ContrastPairs(mode="all", max_pairs_per_prompt=None)(plain)
    assert all(isinstance(v, np.ndarray) for v in as_numpy.values())
    assert {k: to_python(v) for k, v in as_numpy.items()} == as_lists


def test_bad_rows_and_configs_are_named():
    with pytest.raises(RowError, match=r"row 3 column 'correctness' must hold 2 numbers.*\[1\.0\]"):
        ContrastPairs()(row(prompt="p", responses=["a", "b"], correctness=[1.0]), indices=[3])
    with pytest.raises(RowError, match=r"column 'responses'\[1\] must be a string"):
        ContrastPairs()(row(prompt="p", responses=["a", 5], correctness=[1.0, 0.0]))
    with pytest.raises(MissingColumnError, match="correctness"):
        ContrastPairs()(row(prompt="p", responses=["a", "b"]))
    with pytest.raises(ValueError, match="low_max_gap < high_min_gap"):
        ContrastConfig(low_max_gap=0.5, high_min_gap=0.5)
    with pytest.raises(ValueError, match="mode"):
        ContrastConfig(mode="medium")


# ---- mix_contrast ----------------------------------------------------------------------------------


def pool(cells: dict[tuple[str, int], int], dropped: int = 0) -> datasets.Dataset:
    """Pairs rows: ``count`` rows per (contrast_level, difficulty), plus ``dropped`` dropped rows."""
    rows = collections.defaultdict(list)
    for (level, difficulty), count in cells.items():
        for n in range(count):
            rows["prompt"].append(f"{level}-{difficulty}-{n}")
            rows["contrast_level"].append(level)
            rows["difficulty"].append(difficulty)
            rows["drop_reason"].append(None)
    for n in range(dropped):
        rows["prompt"].append(f"dropped-{n}")
        rows["contrast_level"].append(None)
        rows["difficulty"].append(2)
        rows["drop_reason"].append("scores_tied")
    return datasets.Dataset.from_dict(dict(rows))


def counts(mixed: datasets.Dataset, by: tuple[str, ...] = ("contrast_level",)) -> dict:
    return dict(collections.Counter(zip(*(mixed[c] for c in by), strict=True)))


POOL = pool({("high", 2): 6, ("high", 4): 4, ("low", 2): 3, ("low", 4): 3, ("mid", 2): 3}, dropped=2)


def test_mix_has_the_exact_size_and_ratio_and_ignores_mid_and_dropped_rows():
    mixed = mix_contrast(POOL, ratio_high=0.5, size=8, seed=0)
    assert counts(mixed) == {("high",): 4, ("low",): 4}
    assert "drop_reason" not in mixed.column_names
    assert counts(mix_contrast(POOL, ratio_high=0.75, size=8)) == {("high",): 6, ("low",): 2}
    assert counts(mix_contrast(POOL, ratio_high=1.0, size=10)) == {("high",): 10}
    assert mix_counts(5, 0.5) == (3, 2)  # half rounds up: ⌊2.5 + .5⌋
    assert mix_counts(7, 0.3) == (2, 5)  # ⌊2.1 + .5⌋


def test_mix_is_deterministic_in_input_order_and_seeded():
    first = mix_contrast(POOL, ratio_high=0.5, size=8, seed=0)
    assert first.to_dict() == mix_contrast(POOL, ratio_high=0.5, size=8, seed=0).to_dict()
    order = [POOL["prompt"].index(p) for p in first["prompt"]]
    assert order == sorted(order)
    assert mix_contrast(POOL, ratio_high=0.5, size=8, seed=1)["prompt"] != first["prompt"]


def test_mix_refuses_when_a_level_is_short_naming_counts_or_takes_all_when_allowed():
    with pytest.raises(
        MixError, match=r"needs 8 high and 8 low .* hold 10 high and 6 low .*low: need 8, have 6"
    ):
        mix_contrast(POOL, ratio_high=0.5, size=16)
    short = mix_contrast(POOL, ratio_high=0.5, size=16, allow_short=True)
    assert counts(short) == {("high",): 8, ("low",): 6}


# high+low pairs per difficulty: d2 = 6 + 3 = 9, d4 = 4 + 3 = 7 (16 in all)
@pytest.mark.parametrize(
    ("size", "high_2", "high_4", "low_2", "low_4", "refused"),
    [
        # size 8 → 4 high, 4 low; each split 4·9/16 = 2.25, 4·7/16 = 1.75 → floors 2, 1, the spare unit to d4
        (8, 2, 2, 2, 2, None),
        # size 12 → 6 each: 3.375, 2.625 → 3, 2 + spare to d4 → 3, 3
        (12, 3, 3, 3, 3, None),
        # size 14 → 7 each: 3.9375, 3.0625 → 3, 3 + spare to d2 → 4, 3; low has only 3 at d2: refused,
        # or short when allowed
        (14, 4, 3, 3, 3, r"low with difficulty=2: need 4, have 3"),
    ],
)
def test_stratified_mix_gives_both_levels_the_pools_difficulty_mix(
    size, high_2, high_4, low_2, low_4, refused
):
    if refused is not None:
        with pytest.raises(MixError, match=refused):
            mix_contrast(POOL, ratio_high=0.5, size=size, stratify="difficulty")
    options = {"allow_short": True} if refused is not None else {}
    mixed = mix_contrast(POOL, ratio_high=0.5, size=size, stratify="difficulty", **options)
    assert counts(mixed, ("contrast_level", "difficulty")) == {
        ("high", 2): high_2,
        ("high", 4): high_4,
        ("low", 2): low_2,
        ("low", 4): low_4,
    }


def test_largest_mix_size_is_the_largest_size_the_levels_allow():
    # 10 high, 6 low: at 1/2, 13 → 7 high (⌊6.5 + .5⌋) + 6 low, while 14 needs 7 low;
    # at 3/4, 13 → 10 high (⌊9.75 + .5⌋) + 3 low, while 14 needs 11 high
    assert largest_mix_size(POOL, 0.5) == 13
    assert counts(mix_contrast(POOL, 0.5, 13)) == {("high",): 7, ("low",): 6}
    assert largest_mix_size(POOL, 0.75) == 13
    assert largest_mix_size(POOL, 0.0) == 6 and largest_mix_size(POOL, 1.0) == 10
    assert counts(mix_contrast(POOL, 0.75, 13)) == {("high",): 10, ("low",): 3}
    with pytest.raises(MixError):
        mix_contrast(POOL, 0.75, 14)


def test_largest_remainder_by_hand():
    assert largest_remainder(4, {2: 9, 4: 7}) == {2: 2, 4: 2}
    assert largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}  # tie: earlier key
    assert largest_remainder(0, {"a": 5}) == {"a": 0}


def test_mix_of_contrast_pairs_end_to_end():
    candidates = datasets.Dataset.from_dict(
        {
            "prompt": [f"p{i}" for i in range(6)],
            "responses": [["a", "b", "c"]] * 6,
            # rows 0-2: gaps 1 (high) and .25 (low); rows 3-5: only a .25 gap (low) and a tie
            "correctness": [[1.0, 0.25, 0.0]] * 3 + [[0.5, 0.25, 0.25]] * 3,
        }
    )
    pairs = ContrastPairs(mode="all", max_pairs_per_prompt=None).apply(candidates)
    mixed = mix_contrast(pairs, ratio_high=0.5, size=6, seed=3)
    assert counts(mixed) == {("high",): 3, ("low",): 3}
    for chosen, rejected, gap in zip(
        mixed["chosen_correctness"], mixed["rejected_correctness"], mixed["contrast"], strict=True
    ):
        assert chosen - rejected == pytest.approx(gap) and gap > 0


def test_mix_argument_errors():
    with pytest.raises(ValueError, match="size must be a positive int"):
        mix_contrast(POOL, size=0)
    with pytest.raises(ValueError, match="ratio_high"):
        mix_contrast(POOL, ratio_high=1.5, size=4)
    with pytest.raises(ValueError, match=r"needs column\(s\) \['contrast_level'\]"):
        mix_contrast(POOL.remove_columns("contrast_level"), size=4)


def test_step_keeps_its_public_path_in_manifests():
    # the class lives in hfpref.steps.contrast.pairs; manifests and fingerprints keep the package's path
    assert ContrastPairs().describe()["step"] == "hfpref.steps.contrast.ContrastPairs"
