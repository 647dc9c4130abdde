"""Release summaries read datasets batch by batch (bounded memory at any size) with unchanged results."""

from __future__ import annotations

import hashlib
import json

import datasets
import pytest

import hfpref.release.summary as summary
from hfpref.release.manifest import pairs_digest
from hfpref.release.summary import candidates_summary, pair_agreement


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 2 rows, so every summary below spans several batches and a short last one."""
    monkeypatch.setattr(summary, "SUMMARY_BATCH_ROWS", 2)


def pairs(rows: list[tuple[str, str, str]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "prompt": [p for p, _, _ in rows],
            "chosen": [c for _, c, _ in rows],
            "rejected": [r for _, _, r in rows],
        }
    )


def test_candidates_summary_over_batches(small_batches):
    columns = {
        "responses": [["a", None], [None, None, "c"], ["x"], [], ["y", None]],
        "generators": [["g1", "g2"], ["g1", "g2", "g3"], ["g3"], [], ["g2", "g1"]],
        "ifeval_invented_args": [[], ["keywords:letter_frequency.letter"], [], None, ["a", "b"]],
        "screened_out": [
            None,
            [{"reason": "stale_prompt", "generator": "g1"}],
            [],
            None,
            [{"reason": "too_long", "generator": "g2"}, {"reason": "too_long", "generator": "g1"}],
        ],
    }
    got = candidates_summary(datasets.Dataset.from_dict(columns))
    # counted by hand from the rows above
    assert got["candidate_rows"] == 5 and got["responses"] == 8
    assert got["responses_per_generator"] == {"g1": 3, "g2": 3, "g3": 2}
    assert got["missing_responses_per_generator"] == {"g1": 2, "g2": 2}
    assert got["rows_with_missing_responses"] == 3
    assert (got["ifeval_invented_args"], got["rows_with_ifeval_invented_args"]) == (3, 2)
    assert got["screened_out"] == {
        "removed": 3,
        "rows_affected": 2,
        "by_reason": {"stale_prompt": 1, "too_long": 2},
        "by_generator": {"g1": {"stale_prompt": 1, "too_long": 1}, "g2": {"too_long": 1}},
    }
    # a dict of columns (already in memory) gives the same summary
    assert candidates_summary(columns) == got


def test_pairs_digest_and_agreement_over_batches(small_batches):
    a = pairs(
        [("p1", "c1", "r1"), ("p2", "c2", "r2"), ("p3", "c3", "r3"), ("p4", "c4", "r4"), ("p5", "c", "r")]
    )
    b = pairs(
        [("p1", "c1", "r1"), ("p2", "r2", "c2"), ("p4", "c4", "r4"), ("p6", "c6", "r6"), ("p5", "c", "r")]
    )
    # the digest's definition: sha256 over one JSON line [prompt, chosen, rejected] per row, in order
    expected = hashlib.sha256()
    for row in a.to_list():
        expected.update(json.dumps([row["prompt"], row["chosen"], row["rejected"]]).encode() + b"\n")
    assert pairs_digest(a) == expected.hexdigest()
    agreement = pair_agreement({"a": a, "b": b})
    # shared prompts p1, p2, p4, p5; the same (chosen, rejected) for p1, p4, p5 (p2 is swapped)
    assert agreement["a"]["b"] == {"shared_prompts": 4, "same_pairs": 3, "fraction": 0.75}
    assert agreement["b"]["a"] == agreement["a"]["b"]
    assert agreement["a"]["a"] == {"shared_prompts": 5, "same_pairs": 5, "fraction": 1.0}
    # a chosen/rejected split that only differs in where the texts join is a different pair
    c = pairs([("p1", "c1r", "1"), ("p2", "c2", "r2")])
    assert pair_agreement({"a": a, "c": c})["a"]["c"] == {
        "shared_prompts": 2,
        "same_pairs": 1,
        "fraction": 0.5,
    }


def test_strategy_summary_reads_columns_through_arrow_with_an_indices_mapping():
    columns = {
        "edit_distance": [3.0, None, 5.0, 1.0],
        "reward_margin": [0.5, 0.25, None, 1.0],
        "chosen_generator": ["g1", "g2", "g1", None],
        "rejected_generator": ["g2", "g1", "g3", "g1"],
    }
    # a filtered dataset (kept pairs are one) reads through an indices mapping: rows 3, 0, 2 in that order
    kept = datasets.Dataset.from_dict(columns).select([3, 0, 2])
    assert summary.column_values(kept, "edit_distance") == [1.0, 3.0, 5.0]
    got = summary.strategy_summary(kept, {"tie": 1}, ["g1", "g2", "g3"])
    assert got == summary.strategy_summary(
        {k: [v[i] for i in (3, 0, 2)] for k, v in columns.items()}, {"tie": 1}, ["g1", "g2", "g3"]
    )
    assert got["stats"]["edit_distance"]["mean"] == 3.0 and got["stats"]["reward_margin"]["count"] == 2
    # g1 over g2 and g1 over g3: the stronger side chosen twice; the row without a chosen generator is unranked
    assert got["stronger_generator"]["stronger_chosen"] == 2 and got["stronger_generator"]["unranked"] == 1
    assert got["generator_mix"]["chosen"]["counts"] == {"g1": 2, "unknown": 1}
