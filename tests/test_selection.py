"""PairSelector strategies on small hand-built candidate sets, with the expected pairs worked out by hand."""

from __future__ import annotations

import collections
import math

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.pair_metrics import PairMetrics
from hfpref.steps.selection import STRATEGIES, PairSelector, SelectionConfig, split_dropped


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def row(**columns) -> dict[str, list]:
    """A one-row batch."""
    return {name: [value] for name, value in columns.items()}


def pick(strategy: str, batch: dict, **config) -> tuple:
    out = PairSelector(strategy=strategy, **config)(batch)
    if out["drop_reason"][0] is not None:
        return ("dropped", out["drop_reason"][0])
    return (out["chosen_index"][0], out["rejected_index"][0])


# Three responses with hand-set metrics. Ordered pairs with a positive reward margin:
#   (0,1): r_Δ=1, e_Δ=2, p_Δ=1      (2,0): r_Δ=1, e_Δ=10, p_Δ=3      (2,1): r_Δ=2, e_Δ=8, p_Δ=0.5
A = row(
    prompt="q",
    responses=["first", "second", "third"],
    rewards=[1.0, 0.0, 2.0],
    edit_distance_matrix=[[0, 2, 10], [2, 0, 8], [10, 8, 0]],
    logp_diff_matrix=[[0.0, 1.0, 3.0], [1.0, 0.0, 0.5], [3.0, 0.5, 0.0]],
)
S1, S2 = sigmoid(1) - 0.5, sigmoid(2) - 0.5


@pytest.mark.parametrize(
    ("strategy", "scores", "expected"),
    [
        # DCRM: (0,1) S1/(2+1+1)=.0578, (2,0) S1/(10+3+1)=.0165, (2,1) S2/(8+0.5+1)=.0401
        (
            "best_of_n2",
            {(0, 1): S1 / (2 + 1 + 1), (2, 0): S1 / (10 + 3 + 1), (2, 1): S2 / (8 + 0.5 + 1)},
            (0, 1),
        ),
        # −e_Δ: S1/(1+1)=.116, S1/(3+1)=.058, S2/(0.5+1)=.254
        ("dcrm_no_edit", {(0, 1): S1 / (1 + 1), (2, 0): S1 / (3 + 1), (2, 1): S2 / (0.5 + 1)}, (2, 1)),
        # −p_Δ: S1/(2+1)=.077, S1/(10+1)=.021, S2/(8+1)=.042
        ("dcrm_no_logp", {(0, 1): S1 / (2 + 1), (2, 0): S1 / (10 + 1), (2, 1): S2 / (8 + 1)}, (0, 1)),
        # −r_Δ: 1/4, 1/14, 1/9.5
        ("dcrm_no_reward", {(0, 1): 1 / 4, (2, 0): 1 / 14, (2, 1): 1 / 9.5}, (0, 1)),
        ("edit_only", {(0, 1): 1 / 3, (2, 0): 1 / 11, (2, 1): 1 / 9}, (0, 1)),
        ("logp_only", {(0, 1): 1 / 2, (2, 0): 1 / 4, (2, 1): 1 / 1.5}, (2, 1)),
        ("reward_only", {(0, 1): S1, (2, 0): S1, (2, 1): S2}, (2, 1)),
        ("max_margin", {(0, 1): 1, (2, 0): 1, (2, 1): 2}, (2, 1)),
    ],
)
def test_score_strategies_pick_the_hand_computed_best(strategy, scores, expected):
    assert max(scores, key=scores.get) == expected  # the hand arithmetic agrees with the hand pick
    assert pick(strategy, A) == expected


def test_pair_columns_hold_the_pair_values():
    out = PairSelector(strategy="best_of_n2")(A)
    assert out["chosen"] == ["first"] and out["rejected"] == ["second"]
    assert out["reward_chosen"] == [1.0] and out["reward_rejected"] == [0.0] and out["reward_margin"] == [1.0]
    assert out["edit_distance"] == [2.0] and out["logp_diff"] == [1.0]
    assert out["dcrm"][0] == pytest.approx((sigmoid(1.0) - 0.5) / (2 + 1 + 1))
    assert out["pair_strategy"] == ["best_of_n2"] and out["drop_reason"] == [None]
    assert out["chosen_generator"] == [None] and out["rejected_generator"] == [None]
    # the selector's own eps enters both the choice and the dcrm column
    wide = PairSelector(strategy="max_margin", eps=3.0)(A)
    assert wide["dcrm"][0] == pytest.approx((sigmoid(2.0) - 0.5) / (8 + 0.5 + 3.0))


def test_without_logps_dcrm_strategies_take_p_zero_or_drop():
    no_logps = {**A, "logp_diff_matrix": [None]}
    # DCRM with p_Δ=0: (0,1) S1/3=.077, (2,0) S1/11, (2,1) S2/9=.042
    assert pick("best_of_n2", no_logps) == (0, 1)
    out = PairSelector(strategy="best_of_n2")(no_logps)
    assert out["logp_diff"] == [None] and out["dcrm"][0] == pytest.approx(S1 / (2 + 0 + 1))
    assert pick("logp_only", no_logps) == ("dropped", "no_ref_logps")
    assert pick("dcrm_no_edit", no_logps) == ("dropped", "no_ref_logps")
    # metrics-free strategies work without any matrix
    bare = row(prompt="q", responses=["first", "second", "third"], rewards=[1.0, 0.0, 2.0])
    out = PairSelector(strategy="max_margin")(bare)
    assert (out["chosen_index"], out["rejected_index"]) == ([2], [1])
    assert out["edit_distance"] == [None] and out["dcrm"] == [None]


def test_ties_go_to_the_lowest_indices():
    # rewards 3,1,3,1: four pairs share the top margin 2; row-major order gives (0,1)
    batch = row(prompt="q", responses=["a", "b", "c", "d"], rewards=[3.0, 1.0, 3.0, 1.0])
    assert pick("max_margin", batch) == (0, 1)
    # equal DCRM everywhere (symmetric matrices, equal margins) again gives (0,1)
    batch["edit_distance_matrix"] = [[[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]]]
    batch["logp_diff_matrix"] = [[[0.0] * 4] * 4]
    assert pick("best_of_n2", batch) == (0, 1)
    assert pick("edit_only", batch) == (0, 1)


def test_drop_reasons():
    two = {"edit_distance_matrix": [[0, 1], [1, 0]], "logp_diff_matrix": [[0.0, 1.0], [1.0, 0.0]]}
    assert pick(
        "best_of_n2",
        row(prompt="q", responses=["a"], rewards=[1.0], edit_distance_matrix=[[0]], logp_diff_matrix=None),
    ) == ("dropped", "fewer_than_two_responses")
    assert pick("max_margin", row(prompt="q", responses=[], rewards=[])) == (
        "dropped",
        "fewer_than_two_responses",
    )
    assert pick("best_of_n2", row(prompt="q", responses=["a", "b"], rewards=[0.5, 0.5], **two)) == (
        "dropped",
        "rewards_tied",
    )
    assert pick("random", row(prompt="q", responses=["a", "b"], rewards=[0.5, 0.5])) == (
        "dropped",
        "rewards_tied",
    )
    assert pick("max_margin", row(prompt="q", responses=["a", "b"], rewards=[float("nan"), 0.5])) == (
        "dropped",
        "nan_reward",
    )
    assert pick("max_margin", row(prompt="q", responses=["a", "b"], rewards=[None, 0.5])) == (
        "dropped",
        "nan_reward",
    )
    assert pick("max_margin", row(prompt="q", responses=["a", "b"], rewards=None)) == (
        "dropped",
        "nan_reward",
    )
    assert pick("max_margin", row(prompt="q", responses=["", " \n", "c"], rewards=[1.0, 2.0, 3.0])) == (
        "dropped",
        "empty_response",
    )
    assert pick("max_margin", row(prompt="q", responses=["same", "same"], rewards=[1.0, 0.0])) == (
        "dropped",
        "identical_responses",
    )
    nan_logp = {**two, "logp_diff_matrix": [[0.0, float("nan")], [float("nan"), 0.0]]}
    assert pick("best_of_n2", row(prompt="q", responses=["a", "b"], rewards=[1.0, 0.0], **nan_logp)) == (
        "dropped",
        "nan_metric",
    )
    # a metric-free strategy does not care about the NaN log-prob
    assert pick("max_margin", row(prompt="q", responses=["a", "b"], rewards=[1.0, 0.0], **nan_logp)) == (0, 1)


def test_bad_candidates_are_skipped_not_fatal():
    # NaN reward on the best response: the pair is made from the others
    assert pick(
        "max_margin", row(prompt="q", responses=["a", "b", "c"], rewards=[float("nan"), 1.0, 0.0])
    ) == (1, 2)
    # the empty response has the top reward but is never a candidate
    assert pick("max_margin", row(prompt="q", responses=["", "b", "c"], rewards=[5.0, 1.0, 0.0])) == (1, 2)
    # top and bottom are the same text: the best pair with different texts is (0,1) (margin 1, tied with (1,2))
    assert pick("max_margin", row(prompt="q", responses=["x", "y", "x"], rewards=[2.0, 1.0, 0.0])) == (0, 1)
    # duplicates are fine as long as the pair differs
    assert pick("max_margin", row(prompt="q", responses=["a", "a", "b"], rewards=[2.0, 1.0, 0.0])) == (0, 2)


# generators A, A, B, B with rewards 3, 0, 2, 1
DS = row(
    prompt="q",
    responses=["a1", "a2", "b1", "b2"],
    generators=["A", "A", "B", "B"],
    rewards=[3.0, 0.0, 2.0, 1.0],
    # (0,1) is the closest pair, but from one generator; among cross pairs (2,1) is closest
    edit_distance_matrix=[[0, 1, 9, 9], [1, 0, 4, 9], [9, 4, 0, 1], [9, 9, 1, 0]],
    logp_diff_matrix=[[0.0] * 4] * 4,
)


def test_different_source_strategies():
    assert pick("max_margin", DS) == (0, 1)  # same source allowed: margin 3
    assert pick("best_of_n2", DS) == (0, 1)  # S3/(1+1) beats everything
    # cross pairs with positive margin: (0,2) r=1 e=9, (0,3) r=2 e=9, (2,1) r=2 e=4, (3,1) r=1 e=9
    assert pick("best_of_n2_ds", DS) == (2, 1)  # S2/5 is the largest
    assert pick("ds_rm", DS) == (0, 3)  # margin 2 twice, (0,3) comes first row-major
    out = PairSelector(strategy="ds_rm")(DS)
    assert out["chosen_generator"] == ["A"] and out["rejected_generator"] == ["B"]
    one_source = {**DS, "generators": [["A"] * 4]}
    assert pick("ds_rm", one_source) == ("dropped", "no_cross_generator_pair")
    assert pick("best_of_n2_ds", one_source) == ("dropped", "no_cross_generator_pair")
    unknown = {**DS, "generators": [["A", "A", None, None]]}
    assert pick("ds_rm", unknown) == ("dropped", "no_cross_generator_pair")


def test_ds_fix_follows_the_ranking_not_the_reward():
    # B ranked above A: chosen is B's first response, rejected A's first, though A's reward is higher
    out = PairSelector(strategy="ds_fix", generator_ranking=["B", "A"])(DS)
    assert (out["chosen_index"], out["rejected_index"]) == ([2], [0])
    assert out["reward_margin"] == [2.0 - 3.0]
    assert pick("ds_fix", DS, generator_ranking=["A", "B"]) == (0, 2)
    # three generators: the highest-ranked present (A, index 2) against the lowest present (C, index 0)
    three = row(
        prompt="q", responses=["c", "b", "a", "b2"], generators=["C", "B", "A", "B"], rewards=[0.0] * 4
    )
    assert pick("ds_fix", three, generator_ranking=["A", "B", "C"]) == (2, 0)
    assert pick("ds_fix", three, generator_ranking=["X", "B", "C"]) == (1, 0)  # A is unranked, so left out
    unranked = row(prompt="q", responses=["a", "x"], generators=["A", "X"], rewards=[1.0, 0.0])
    assert pick("ds_fix", unranked, generator_ranking=["A", "B"]) == ("dropped", "no_ranked_generators")


def test_random_is_seeded_by_prompt_and_labelled_by_reward():
    rows = [
        {"prompt": f"prompt {k}", "responses": ["a", "b", "c"], "rewards": [0.0, 2.0, 1.0], "key": k}
        for k in range(300)
    ]
    ds = datasets.Dataset.from_list(rows)
    step = PairSelector(strategy="random", seed=7)
    whole = step.apply(ds, batch_size=300)
    singles = step.apply(ds, batch_size=1)
    reversed_order = step.apply(ds.select(range(299, -1, -1)), batch_size=16)
    picks = list(zip(whole["chosen_index"], whole["rejected_index"], strict=True))
    assert picks == list(zip(singles["chosen_index"], singles["rejected_index"], strict=True))
    assert picks[::-1] == list(
        zip(reversed_order["chosen_index"], reversed_order["rejected_index"], strict=True)
    )
    assert all(r_c > r_r for r_c, r_r in zip(whole["reward_chosen"], whole["reward_rejected"], strict=True))
    # the three reward-ordered pairs each come up about a third of the time (300 draws: 5 sigma is ±0.14)
    counts = collections.Counter(picks)
    assert set(counts) == {(1, 0), (1, 2), (2, 0)}
    assert all(0.19 < c / 300 < 0.48 for c in counts.values())
    other_seed = PairSelector(strategy="random", seed=8).apply(ds, batch_size=300)
    assert list(zip(other_seed["chosen_index"], other_seed["rejected_index"], strict=True)) != picks


def test_conversational_prompt_and_passthrough():
    prompt = [{"role": "user", "content": "Say hi."}]
    batch = row(
        prompt=prompt,
        key=12,
        instruction_id_list=["a:b", "c:d"],
        kwargs=[{"n": 1}, {"n": None}],
        edit_distance_unit="word",
        reward_source="rm@abc",
        responses=["hi", "hello there"],
        rewards=[0.2, 0.9],
        generators=["m1", "m2"],
        ref_logps=[-1.0, -2.0],
        edit_distance_matrix=[[0, 2], [2, 0]],
        logp_diff_matrix=[[0.0, 1.0], [1.0, 0.0]],
        reward_margin_matrix=[[0.0, -0.7], [0.7, 0.0]],
        dcrm_matrix=[[0.0, -0.1], [0.1, 0.0]],
    )
    out = PairSelector()(batch)
    assert out["prompt"] == [prompt]
    assert out["chosen"] == [[{"role": "assistant", "content": "hello there"}]]
    assert out["rejected"] == [[{"role": "assistant", "content": "hi"}]]
    assert out["chosen_generator"] == ["m2"]
    for name in ("key", "instruction_id_list", "kwargs", "edit_distance_unit", "reward_source"):
        assert out[name] == batch[name]
    for name in ("responses", "rewards", "generators", "ref_logps", "edit_distance_matrix", "dcrm_matrix"):
        assert name not in out


def test_numpy_batches_as_ray_sends_them():
    responses = np.empty(2, dtype=object)
    responses[0], responses[1] = np.array(["x", "y", "z"]), np.array(["only"])
    rewards = np.empty(2, dtype=object)
    rewards[0], rewards[1] = np.array([0.0, 1.0, 0.5]), np.array([1.0])
    out = PairSelector(strategy="max_margin")(
        {"prompt": np.array(["p", "q"]), "key": np.array([1, 2]), "responses": responses, "rewards": rewards}
    )
    assert all(isinstance(column, np.ndarray) for column in out.values())
    assert list(out["chosen"]) == ["y", None] and list(out["rejected"]) == ["x", None]
    assert list(out["drop_reason"]) == [None, "fewer_than_two_responses"]
    assert list(out["key"]) == [1, 2]


def test_config_and_column_errors():
    with pytest.raises(ValueError, match=r"unknown pair strategy 'best'.*'best_of_n2'.*'reward_only'"):
        SelectionConfig(strategy="best")
    with pytest.raises(ValueError, match="ds_fix.*generator_ranking"):
        PairSelector(strategy="ds_fix")
    assert len(STRATEGIES) == 12
    with pytest.raises(MissingColumnError, match="'edit_distance_matrix'"):
        PairSelector(strategy="best_of_n2")(row(prompt="q", responses=["a", "b"], rewards=[1.0, 0.0]))
    with pytest.raises(MissingColumnError, match="'generators'"):
        PairSelector(strategy="ds_rm")(row(prompt="q", responses=["a", "b"], rewards=[1.0, 0.0]))
    with pytest.raises(RowError, match=r"row 4 key='k9'.*'rewards' must hold 2 numbers"):
        PairSelector(strategy="max_margin")(
            row(key="k9", prompt="q", responses=["a", "b"], rewards=[1.0]), indices=[4]
        )
    # a bool is no reward (every pair maker reads per-response numbers alike, steps.pair_rows.response_numbers)
    with pytest.raises(
        RowError, match=r"'rewards' must hold 2 numbers \(one per response\), got \[True, 0.0\]"
    ):
        PairSelector(strategy="max_margin")(row(prompt="q", responses=["a", "b"], rewards=[True, 0.0]))
    with pytest.raises(RowError, match=r"'responses'\[1\] must be a string or None \(missing\), got int 3"):
        PairSelector(strategy="max_margin")(row(prompt="q", responses=["a", 3], rewards=[1.0, 0.0]))
    with pytest.raises(RowError, match=r"'edit_distance_matrix' has shape \(2, 2\) for 3 responses"):
        PairSelector()(
            row(
                prompt="q",
                responses=["a", "b", "c"],
                rewards=[1.0, 0.0, 2.0],
                edit_distance_matrix=[[0, 1], [1, 0]],
                logp_diff_matrix=None,
            )
        )


def _candidates(tmp_path, conversational: bool) -> datasets.Dataset:
    def prompt(k):
        return [{"role": "user", "content": f"q{k}"}] if conversational else f"q{k}"

    rows = [
        {"key": 0, "prompt": prompt(0), "responses": ["one"], "rewards": [1.0]},
        {"key": 1, "prompt": prompt(1), "responses": ["a b c", "a x c", "z"], "rewards": [0.5, 1.0, 0.0]},
        {"key": 2, "prompt": prompt(2), "responses": ["t", "t"], "rewards": [1.0, 0.0]},
        {"key": 3, "prompt": prompt(3), "responses": ["u v", "u"], "rewards": [0.0, 0.0]},
        {
            "key": 4,
            "prompt": prompt(4),
            "responses": ["p q", "p r s", "p"],
            "rewards": [2.0, 1.0, float("nan")],
        },
    ]
    path = tmp_path / f"cands-{conversational}.jsonl"
    datasets.Dataset.from_list(rows).to_json(path)
    return datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )


@pytest.mark.parametrize("conversational", [False, True])
def test_dropped_and_kept_rows_in_separate_batches_map_and_split(tmp_path, conversational):
    ds = PairMetrics().apply(_candidates(tmp_path, conversational), batch_size=2)
    pairs = PairSelector().apply(ds, batch_size=1)  # the first batch holds a dropped row only
    assert pairs.num_rows == 5
    assert pairs["drop_reason"] == [
        "fewer_than_two_responses",
        None,
        "identical_responses",
        "rewards_tied",
        None,
    ]
    # key 1: positive-margin pairs (1,0) r=.5 e=1, (0,2) r=.5 e=3, (1,2) r=1 e=3 -> (1,0) has the top DCRM
    # key 4: response 2 has a NaN reward, so (0,1) r=1 e=2 is the only pair
    assert pairs["chosen_index"] == [None, 1, None, None, 0]
    assert pairs["rejected_index"] == [None, 0, None, None, 1]
    assert pairs["dcrm"][1] == pytest.approx((sigmoid(0.5) - 0.5) / (1 + 0 + 1))
    assert pairs["edit_distance_unit"] == ["word"] * 5
    kept, reasons = split_dropped(pairs)
    assert reasons == collections.Counter(
        {"fewer_than_two_responses": 1, "identical_responses": 1, "rewards_tied": 1}
    )
    assert kept["key"] == [1, 4] and "drop_reason" not in kept.column_names
    if conversational:
        assert kept["chosen"][0] == [{"role": "assistant", "content": "a x c"}]
    else:
        assert kept["chosen"] == ["a x c", "p q"] and kept["rejected"] == ["a b c", "p r s"]


def test_rerun_is_a_cache_hit(tmp_path, monkeypatch):
    ds = PairMetrics().apply(_candidates(tmp_path, False))
    first = PairSelector().apply(ds)
    calls = []
    original = PairSelector.process
    monkeypatch.setattr(PairSelector, "process", lambda self, *a: calls.append(1) or original(self, *a))
    again = PairSelector().apply(ds)
    assert calls == [] and again.cache_files == first.cache_files
    other = PairSelector(strategy="max_margin").apply(ds)
    assert calls and other._fingerprint != first._fingerprint
    assert other["chosen_index"][1] == 1 and other["rejected_index"][1] == 2


def test_invariants_hold_for_every_strategy_on_random_candidates():
    rng = np.random.default_rng(3)
    pool = ["", "  ", "a", "a b", "b c d", "a b", "c", "d e f g"]
    rows = []
    for k in range(150):
        n = int(rng.integers(0, 6))
        rewards = [float(x) for x in rng.choice([0.0, 0.5, 1.0, 2.0, np.nan], size=n)]
        rows.append(
            {
                "prompt": f"p{k}",
                "responses": [str(x) for x in rng.choice(pool, size=n)],
                "rewards": rewards,
                "generators": [
                    None if g == "none" else str(g) for g in rng.choice(["A", "B", "C", "none"], size=n)
                ],
                "ref_logps": None if k % 3 == 0 else [float(x) for x in rng.normal(-50, 10, size=n)],
            }
        )
    batch = {key: [r[key] for r in rows] for key in rows[0]}
    batch.update(PairMetrics()(batch))
    for strategy in STRATEGIES:
        out = PairSelector(strategy=strategy, generator_ranking=["A", "B"])(batch)
        assert len(out["prompt"]) == len(rows)
        assert out["drop_reason"].count(None) >= 10, (
            f"{strategy} kept too few rows for the check to mean much"
        )
        for k, r in enumerate(rows):
            if out["drop_reason"][k] is not None:
                assert out["chosen"][k] is None and out["chosen_index"][k] is None
                continue
            c, j = out["chosen_index"][k], out["rejected_index"][k]
            assert c != j and r["responses"][c] != r["responses"][j]
            assert r["responses"][c].strip() and r["responses"][j].strip()
            assert out["chosen"][k] == r["responses"][c] and out["rejected"][k] == r["responses"][j]
            assert math.isfinite(r["rewards"][c]) and math.isfinite(r["rewards"][j])
            if strategy == "ds_fix":
                assert ["A", "B"].index(r["generators"][c]) < ["A", "B"].index(r["generators"][j])
            else:
                assert r["rewards"][c] > r["rewards"][j]
            if strategy in ("best_of_n2_ds", "ds_rm"):
                assert None not in (r["generators"][c], r["generators"][j])
                assert r["generators"][c] != r["generators"][j]
