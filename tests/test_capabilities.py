"""Measured generator accuracy: hand-computed accuracies and interval bounds on a tiny candidates dataset."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest

from hfpref.steps.capabilities import CapabilityError, generator_accuracy, ranking, wilson_interval

# three prompts; generator "a" meets everything but one instruction, "b" less; "c" has a missing response
ROWS = {
    "generators": [["a", "b", "c"], ["a", "b", "c"], ["a", "b"]],
    "ifeval_strict": [
        [[True, True], [True, False], None],
        [[True], [False], [True]],
        [[True, False, True], [True, True, True]],
    ],
}


def test_hand_computed_accuracies_and_ranking():
    out = {a["generator"]: a for a in generator_accuracy(datasets.Dataset.from_dict(ROWS))}
    # a: prompts 1 and 2 fully met, prompt 3 not -> 2/3; instructions 2 + 1 + 2 of 2 + 1 + 3 = 5/6
    assert out["a"]["prompt_level"] == pytest.approx(2 / 3) and out["a"][
        "instruction_level"
    ] == pytest.approx(5 / 6)
    # b: only prompt 3 fully met -> 1/3; instructions 1 + 0 + 3 of 6 -> 4/6
    assert out["b"]["prompt_level"] == pytest.approx(1 / 3) and out["b"][
        "instruction_level"
    ] == pytest.approx(4 / 6)
    # c: its None response is not graded: one response, fully met
    assert out["c"]["responses"] == 1 and out["c"]["prompt_level"] == 1.0 and out["c"]["instructions"] == 1
    assert ranking(list(out.values())) == ["c", "a", "b"]
    assert [a["generator"] for a in generator_accuracy(ROWS)] == [
        "c",
        "a",
        "b",
    ]  # a dict of columns works too


def test_wilson_bounds_against_the_formula():
    # Wilson score interval for 2 of 3 at 95% (z = 1.959964): centre (p + z²/2n)/(1 + z²/n), half-width
    # z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n), computed here from the formula
    z, n, p = 1.959963984540054, 3, 2 / 3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(2, 3) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(2, 3) == pytest.approx(
        (0.2077, 0.9385), abs=1e-4
    )  # published tables: 0.208, 0.939
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.0 < high < 0.31
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    out = {a["generator"]: a for a in generator_accuracy(ROWS)}
    assert out["a"]["prompt_level_ci"] == pytest.approx(list(wilson_interval(2, 3)))


def test_bootstrap_interval_resamples_prompts():
    out = {a["generator"]: a for a in generator_accuracy(ROWS, resamples=4000, seed=1)}
    low, high = out["a"]["instruction_level_ci"]
    # every resample is a ratio of prompt sums from {2/2, 1/1, 2/3}: bounded by the smallest and largest
    # attainable ratios (all prompt 3 -> 2/3; no prompt 3 -> 1) and containing the estimate
    assert 2 / 3 - 1e-12 <= low <= 5 / 6 <= high <= 1.0
    met, total = np.array([2, 1, 2]), np.array([2, 1, 3])
    rng = np.random.default_rng(1)
    picks = rng.integers(0, 3, size=(4000, 3))
    ratios = met[picks].sum(axis=1) / total[picks].sum(axis=1)
    assert [low, high] == pytest.approx(list(np.quantile(ratios, [0.025, 0.975])))
    # reproducible: the same seed gives the same bounds
    assert generator_accuracy(ROWS, resamples=4000, seed=1) == generator_accuracy(
        ROWS, resamples=4000, seed=1
    )


def test_correctness_fallback_and_errors():
    rows = {"generators": [["a", "b"], ["a", "b"]], "correctness": [[1.0, 0.5], [0.5, None]]}
    out = {a["generator"]: a for a in generator_accuracy(rows)}
    assert out["a"]["prompt_level"] == 0.5 and out["a"]["instruction_level"] == 0.75
    assert out["b"]["responses"] == 1 and out["b"]["prompt_level"] == 0.0
    with pytest.raises(CapabilityError, match="needs a 'generators' column"):
        generator_accuracy({"ifeval_strict": ROWS["ifeval_strict"]})
    with pytest.raises(CapabilityError, match="IFEvalVerifier"):
        generator_accuracy({"generators": ROWS["generators"]})


def test_bootstrap_in_blocks_equals_one_index_matrix(monkeypatch):
    """The blocked bootstrap (bounded memory) gives the interval of one (resamples, n) index matrix."""
    import hfpref.steps.capabilities as capabilities

    rng = np.random.default_rng(7)
    numerators = rng.integers(0, 4, size=300).astype(np.float64)
    denominators = np.full(300, 3.0)
    # the textbook percentile bootstrap: every resample's indices drawn at once
    picks = np.random.default_rng(5).integers(0, 300, size=(500, 300))
    ratios = numerators[picks].sum(axis=1) / denominators[picks].sum(axis=1)
    expected = np.quantile(ratios, [0.025, 0.975])
    monkeypatch.setattr(
        capabilities, "BOOTSTRAP_BLOCK_VALUES", 300 * 7
    )  # blocks of 7 resamples, last one short
    got = capabilities.bootstrap_ratio_interval(numerators, denominators, 0.95, resamples=500, seed=5)
    assert got == (float(expected[0]), float(expected[1]))
    monkeypatch.setattr(capabilities, "BOOTSTRAP_BLOCK_VALUES", 1)  # one resample per block
    assert capabilities.bootstrap_ratio_interval(numerators, denominators, 0.95, resamples=500, seed=5) == got
