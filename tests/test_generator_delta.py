"""Generator-level delta: tags, measured capabilities, filters and stratified summaries, all by hand."""

from __future__ import annotations

import math
import pickle

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.generator_delta import (
    GeneratorDeltaTagger,
    delta_bin_edges,
    filter_by_generator_delta,
    format_stratified_summary,
    measure_generator_capabilities,
    stratified_summary,
)

ARENA = {"big": 1250.0, "mid": 1180.0, "small": 1100.0}
PAIRS = {
    "id": list(range(7)),
    "chosen_generator": ["big", "big", "mid", "small", "mid", None, "big"],
    "rejected_generator": ["small", "big", "small", "big", "mid", "small", "mid"],
    "reward_margin": [2.0, 0.5, 1.0, 0.25, 0.75, 3.0, 1.5],
    "dcrm": [0.01, 0.04, 0.02, 0.005, 0.03, 0.06, 0.015],
}


def _tagged() -> datasets.Dataset:
    return GeneratorDeltaTagger(capabilities=ARENA, capability_name="arena_elo").apply(
        datasets.Dataset.from_dict(PAIRS), batch_size=3
    )


def test_tags_by_hand():
    tagged = _tagged()
    assert tagged["same_source"] == [False, True, False, False, True, None, False]
    assert tagged["generator_delta"] == [150.0, 0.0, 80.0, -150.0, 0.0, None, 70.0]
    assert tagged["chosen_capability"] == [1250.0, 1250.0, 1180.0, 1100.0, 1180.0, None, 1250.0]
    assert tagged["rejected_capability"][5] == 1100.0
    assert tagged.features["same_source"] == datasets.Value("bool")


def test_unknown_generator_is_an_error_or_missing():
    batch = {"chosen_generator": ["big", "gpt-9"], "rejected_generator": ["small", "big"]}
    with pytest.raises(RowError, match=r"batch row 1 column 'chosen_generator' names generator 'gpt-9'"):
        GeneratorDeltaTagger(capabilities=ARENA)(batch)
    out = GeneratorDeltaTagger(capabilities=ARENA, on_unknown="missing")(batch)
    assert out["generator_delta"] == [150.0, None]
    assert out["same_source"] == [False, False]
    with pytest.raises(MissingColumnError, match="rejected_generator"):
        GeneratorDeltaTagger(capabilities=ARENA)({"chosen_generator": ["big"]})
    with pytest.raises(ValueError, match="finite number"):
        GeneratorDeltaTagger(capabilities={"big": float("nan")})
    with pytest.raises(ValueError, match="at least one"):
        GeneratorDeltaTagger(capabilities={})


def test_numpy_batches_and_fingerprint():
    step = GeneratorDeltaTagger(capabilities={"7b": 7e9, "70b": 7e10}, capability_name="parameters")
    out = step({"chosen_generator": np.array(["70b", "7b"]), "rejected_generator": np.array(["7b", "7b"])})
    assert list(out["generator_delta"]) == [6.3e10, 0.0]
    assert list(out["same_source"]) == [False, True]
    assert pickle.loads(pickle.dumps(step)).fingerprint() == step.fingerprint()
    assert GeneratorDeltaTagger(capabilities={"7b": 7e9, "70b": 8e10}).fingerprint() != step.fingerprint()


def test_measured_capability_is_mean_reward_per_generator():
    candidates = {
        "rewards": [[1.0, 3.0, 0.5], [2.0, float("nan")], [4.0, -1.0, 0.0]],
        "generators": [["big", "big", "small"], ["small", "big"], ["mid", "small", None]],
    }
    with pytest.warns(UserWarning, match="1 non-finite"):
        measured = measure_generator_capabilities(candidates)
    assert measured == {"big": 2.0, "mid": 4.0, "small": pytest.approx((0.5 + 2.0 - 1.0) / 3)}
    dataset = datasets.Dataset.from_dict(candidates)
    with pytest.warns(UserWarning):
        assert measure_generator_capabilities(dataset) == measured
    tagged = GeneratorDeltaTagger(capabilities=measured, capability_name="mean_reward")(
        {"chosen_generator": ["mid"], "rejected_generator": ["big"]}
    )
    assert tagged["generator_delta"] == [2.0]


def test_measured_capability_rejects_misaligned_rows():
    with pytest.raises(RowError, match="row 1"):
        measure_generator_capabilities({"rewards": [[1.0], [1.0, 2.0]], "generators": [["a"], ["a"]]})
    with pytest.raises(MissingColumnError, match="generators"):
        measure_generator_capabilities({"rewards": [[1.0]]})


def test_filter_by_delta_and_source():
    tagged = _tagged()
    kept, report = filter_by_generator_delta(tagged, min_delta=70.0)
    assert kept["id"] == [0, 2, 6]
    assert report == {"kept": 3, "source_mismatch": 0, "missing_delta": 1, "delta_out_of_range": 3}
    kept, report = filter_by_generator_delta(tagged, same_source=False, max_delta=100.0)
    assert kept["id"] == [2, 3, 6]
    assert report == {"kept": 3, "source_mismatch": 3, "missing_delta": 0, "delta_out_of_range": 1}
    kept, _ = filter_by_generator_delta(tagged, same_source=True)
    assert kept["id"] == [1, 4]
    with pytest.raises(ValueError, match="give"):
        filter_by_generator_delta(tagged)
    with pytest.raises(MissingColumnError, match="GeneratorDeltaTagger"):
        filter_by_generator_delta(datasets.Dataset.from_dict(PAIRS), min_delta=0.0)


def test_stratified_summary_with_given_edges():
    summary = stratified_summary(_tagged(), bins=[0.0, 100.0])
    strata = {s["stratum"]: s for s in summary}
    assert [s["stratum"] for s in summary] == [
        "same source",
        "different source, Δ < 0",
        "different source, Δ in [0, 100]",
        "different source, Δ > 100",
        "unknown source",
    ]
    same = strata["same source"]
    assert same["rows"] == 2
    assert same["metrics"]["reward_margin"]["mean"] == pytest.approx((0.5 + 0.75) / 2)
    assert same["metrics"]["dcrm"]["mean"] == pytest.approx((0.04 + 0.03) / 2)
    middle = strata["different source, Δ in [0, 100]"]  # deltas 80 (row 2) and 70 (row 6)
    assert middle["rows"] == 2
    assert middle["generator_delta"]["mean"] == pytest.approx(75.0)
    assert middle["metrics"]["reward_margin"]["mean"] == pytest.approx((1.0 + 1.5) / 2)
    assert strata["different source, Δ > 100"]["metrics"]["reward_margin"]["mean"] == 2.0  # row 0
    assert strata["different source, Δ < 0"]["metrics"]["dcrm"]["mean"] == 0.005  # row 3
    assert strata["unknown source"]["rows"] == 1 and strata["unknown source"]["generator_delta"] is None
    assert sum(s["rows"] for s in summary) == len(PAIRS["id"])
    table = format_stratified_summary(summary)
    assert "same source" in table and "mean reward_margin" in table and "0.625" in table


def test_stratified_summary_quantile_bins():
    # different-source deltas: 150, 80, -150, 70 -> quantile edges of 2 bins: -150, 75, 150
    assert delta_bin_edges([150.0, 80.0, -150.0, 70.0], 2) == [-150.0, 75.0, 150.0]
    summary = stratified_summary(_tagged(), bins=2, metrics=["reward_margin"])
    strata = {s["stratum"]: s for s in summary}
    low, high = strata["different source, Δ in [-150, 75)"], strata["different source, Δ in [75, 150]"]
    assert low["rows"] == 2 and low["metrics"]["reward_margin"]["mean"] == pytest.approx((0.25 + 1.5) / 2)
    assert high["rows"] == 2 and high["metrics"]["reward_margin"]["mean"] == pytest.approx((2.0 + 1.0) / 2)
    assert list(strata["same source"]["metrics"]) == ["reward_margin"]


def test_stratified_summary_edge_cases():
    one_delta = {
        "same_source": [False, False, True],
        "generator_delta": [5.0, 5.0, 0.0],
        "dcrm": [1.0, 3.0, math.nan],
    }
    summary = stratified_summary(one_delta, bins=3)
    assert [(s["stratum"], s["rows"]) for s in summary] == [
        ("same source", 1),
        ("different source, Δ = 5", 2),
    ]
    assert summary[0]["metrics"]["dcrm"] is None  # NaN is not a value to average
    assert summary[1]["metrics"]["dcrm"]["mean"] == 2.0
    with pytest.raises(ValueError, match="strictly increasing"):
        stratified_summary(one_delta, bins=[1.0, 0.0])
    with pytest.raises(MissingColumnError, match="sample_delta"):
        stratified_summary(one_delta, metrics=["sample_delta"])
