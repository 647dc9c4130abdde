"""PairMetrics and dcrm against hand-computed e_Δ, p_Δ, r_Δ and DCRM (DESIGN.md formulas)."""

from __future__ import annotations

import math
import pickle

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.pair_metrics import (
    PairMetrics,
    PairMetricsConfig,
    dcrm,
    dense_symbols,
    tokenizer_content_hash,
)
from tests.helpers import levenshtein
from tests.tiny_models import build_tokenizer


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tokenizer().save_pretrained(folder)
    return folder


def test_dcrm_scalar_and_vectorised_match_the_formula():
    assert dcrm(0.5, 3, 2) == pytest.approx((1 / (1 + math.exp(-0.5)) - 0.5) / (3 + 2 + 1), rel=1e-12)
    assert dcrm(-2.0, 0, 0.25, eps=0.5) == pytest.approx((sigmoid(-2.0) - 0.5) / (0 + 0.25 + 0.5), rel=1e-12)
    assert isinstance(dcrm(1.0, 1, 1), float)
    values = dcrm(np.array([0.5, -2.0, 0.0]), np.array([3, 0, 7]), np.array([2.0, 0.25, 1.0]))
    assert isinstance(values, np.ndarray)
    np.testing.assert_allclose(
        values,
        [(sigmoid(0.5) - 0.5) / (3 + 2 + 1), (sigmoid(-2.0) - 0.5) / (0 + 0.25 + 1), 0.0],
        rtol=1e-12,
    )
    # broadcasting: one margin against a column of distances
    np.testing.assert_allclose(
        dcrm(1.0, np.array([[1], [3]]), 0.0), [[(sigmoid(1) - 0.5) / 2], [(sigmoid(1) - 0.5) / 4]]
    )
    assert math.isnan(dcrm(float("nan"), 1, 1))
    assert dcrm(1e-20, 0, 0) > 0 > dcrm(-1e-20, 0, 0), "DCRM keeps the sign of tiny reward margins"


def test_word_level_matrices_by_hand():
    step = PairMetrics()
    out = step(
        {
            "responses": [["a b c", "a x c", "b", ""]],
            "rewards": [[1.0, 0.5, -1.0, 2.0]],
            "ref_logps": [[-3.0, -5.5, -4.0, -1.0]],
        }
    )
    # a b c -> a x c: 1 substitution; a b c -> b: 2 deletions; a x c -> b: 2 deletions + 1 substitution
    assert out["edit_distance_matrix"] == [[[0, 1, 2, 3], [1, 0, 3, 3], [2, 3, 0, 1], [3, 3, 1, 0]]]
    assert out["reward_margin_matrix"][0][0] == [0.0, 0.5, 2.0, -1.0]
    assert out["reward_margin_matrix"][0][2] == [-2.0, -1.5, 0.0, -3.0]
    assert out["logp_diff_matrix"][0][0] == [0.0, 2.5, 1.0, 2.0]
    assert out["logp_diff_matrix"][0][1] == [2.5, 0.0, 1.5, 4.5]
    dcrm_matrix = out["dcrm_matrix"][0]
    assert dcrm_matrix[0][1] == pytest.approx((sigmoid(0.5) - 0.5) / (1 + 2.5 + 1))
    assert dcrm_matrix[1][0] == pytest.approx((sigmoid(-0.5) - 0.5) / (1 + 2.5 + 1))
    assert dcrm_matrix[0][2] == pytest.approx((sigmoid(2.0) - 0.5) / (2 + 1.0 + 1))
    assert dcrm_matrix[3][2] == pytest.approx((sigmoid(3.0) - 0.5) / (1 + 3.0 + 1))
    assert dcrm_matrix[1][1] == 0.0
    assert out["edit_distance_unit"] == ["word"]


def test_without_ref_logps_p_is_zero_and_matrix_none():
    step = PairMetrics(eps=0.5)
    out = step({"responses": [["one two", "one three four"]], "rewards": [[0.0, 1.0]]})
    assert out["logp_diff_matrix"] == [None]
    assert out["edit_distance_matrix"] == [[[0, 2], [2, 0]]]
    assert out["dcrm_matrix"][0][1][0] == pytest.approx((sigmoid(1.0) - 0.5) / (2 + 0 + 0.5))
    # a row whose ref_logps is None behaves the same, next to a row that has them
    out = step(
        {
            "responses": [["x", "y"], ["x", "y"]],
            "rewards": [[0.0, 1.0], [0.0, 1.0]],
            "ref_logps": [None, [-1.0, -2.0]],
        }
    )
    assert out["logp_diff_matrix"] == [None, [[0.0, 1.0], [1.0, 0.0]]]


def test_nan_and_none_propagate_to_their_cells_only():
    out = PairMetrics()(
        {
            "responses": [["a", "b", "c"]],
            "rewards": [[1.0, None, float("nan")]],
            "ref_logps": [[-1.0, -2.0, None]],
        }
    )
    margin, logp, value = (
        np.array(out[k][0]) for k in ("reward_margin_matrix", "logp_diff_matrix", "dcrm_matrix")
    )
    assert np.isnan(margin[0, 1]) and np.isnan(margin[2, 0]) and margin[0, 0] == 0.0
    assert logp[0, 1] == 1.0 and np.isnan(logp[0, 2]) and np.isnan(logp[2, 1])
    assert np.isnan(value[0, 1]) and value[0, 0] == 0.0
    assert out["edit_distance_matrix"][0] == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def test_small_and_empty_rows():
    out = PairMetrics()({"responses": [[], ["only"], None], "rewards": [[], [0.3], None]})
    assert out["edit_distance_matrix"] == [[], [[0]], []]
    assert out["dcrm_matrix"] == [[], [[0.0]], []]


def test_bad_rows_name_column_row_and_value():
    step = PairMetrics()
    with pytest.raises(RowError, match=r"row 7 key='k'.*'rewards'.*2 values for 3 responses"):
        step({"key": ["k"], "responses": [["a", "b", "c"]], "rewards": [[1.0, 2.0]]}, indices=[7])
    with pytest.raises(RowError, match=r"'rewards' must hold numbers.*'high'"):
        step({"responses": [["a", "b"]], "rewards": [[1.0, "high"]]})
    with pytest.raises(RowError, match=r"'responses'\[1\] must be a string, got int 5"):
        step({"responses": [["a", 5]], "rewards": [[1.0, 2.0]]})
    with pytest.raises(MissingColumnError, match="'rewards'"):
        step({"responses": [["a"]]})


def test_config_is_validated():
    with pytest.raises(ValueError, match="eps must be positive"):
        PairMetricsConfig(eps=0)


def test_token_level_edit_distance_with_tiny_tokenizer(tokenizer_dir):
    tokenizer = build_tokenizer()
    responses = [
        "The sea is wide and blue.",
        "The sea is wide and green.",
        "List the planets in order from the sun.",
        "The sea is wide and blue.",  # a repeat: tokenized once, same ids
        "",
    ]
    step = PairMetrics(tokenizer=str(tokenizer_dir))
    out = step({"responses": [responses[:3], responses[3:]], "rewards": [[0.0, 1.0, 2.0], [0.0, 1.0]]})
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in responses]
    assert all(tokenizer.eos_token_id not in row and tokenizer.bos_token_id not in row for row in ids)
    expected = [[levenshtein(a, b) for b in ids[:3]] for a in ids[:3]]
    assert out["edit_distance_matrix"][0] == expected
    assert out["edit_distance_matrix"][1] == [[0, len(ids[3])], [len(ids[3]), 0]]
    # "blue." -> "green." is one word apart but several tokens apart: the token ids were used
    assert expected[0][1] > 1
    revision = tokenizer_content_hash(tokenizer_dir)
    assert step.resolved_revision() == revision and revision.startswith("sha256:")
    assert out["edit_distance_unit"] == [f"token:{tokenizer_dir}@{revision}"] * 2


def test_step_tokens_match_the_tokenizer_call_even_with_saved_truncation(tmp_path):
    tokenizer = build_tokenizer()
    texts = ["The quick brown fox jumps over the lazy dog.", "Say <eos> then stop", "Ünïcode ✓ text", ""]
    expected = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    tokenizer.backend_tokenizer.enable_truncation(max_length=4)  # a setting a saved tokenizer may carry
    tokenizer.save_pretrained(tmp_path)
    assert max(len(ids) for ids in expected) > 4
    assert PairMetrics(tokenizer=str(tmp_path)).tokenize(texts) == expected


def test_large_token_ids_are_relabelled_without_changing_distances():
    rng = np.random.default_rng(0)
    # token ids far above 255, shared between responses so the distances are not all the maximum
    base = rng.integers(0, 128_000, size=40)
    rows = [[int(t) if rng.random() > 0.3 else int(rng.integers(0, 128_000)) for t in base] for _ in range(4)]
    rows[3] = rows[3][:25]
    batch = {"responses": [["r0", "r1", "r2", "r3"]], "rewards": [[0.0, 1.0, 2.0, 3.0]]}
    out = PairMetrics().metrics_from_tokens(batch, rows)
    assert out["edit_distance_matrix"][0] == [[levenshtein(a, b) for b in rows] for a in rows]
    assert dense_symbols([[500, 7, 500], [7, 9]]) == [[0, 1, 0], [1, 2]]


def test_tokenizer_hash_follows_tokenizer_files_and_fingerprint(tmp_path, tokenizer_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tokenizer_dir, copy)
    assert tokenizer_content_hash(copy) == tokenizer_content_hash(tokenizer_dir)
    before = PairMetrics(tokenizer=str(copy)).fingerprint()
    config = (copy / "tokenizer_config.json").read_text()
    (copy / "tokenizer_config.json").write_text(config.replace("}", ', "note": "edited"}', 1))
    assert tokenizer_content_hash(copy) != tokenizer_content_hash(tokenizer_dir)
    assert PairMetrics(tokenizer=str(copy)).fingerprint() != before
    assert PairMetrics().resolved_revision() is None
    pinned = "0123456789abcdef0123456789abcdef01234567"
    assert PairMetrics(tokenizer="org/model", tokenizer_revision=pinned).resolved_revision() == pinned


def test_tokenizer_is_loaded_lazily_and_not_pickled(tokenizer_dir):
    step = PairMetrics(tokenizer=str(tokenizer_dir))
    fingerprint = step.fingerprint()
    state = pickle.dumps(step)
    assert step._loaded == {}
    step({"responses": [["a b", "a"]], "rewards": [[1.0, 0.0]]})
    assert step._loaded[None]["tokenizer"] is not None
    clone = pickle.loads(pickle.dumps(step))
    assert clone._loaded == {} and pickle.dumps(step) == state
    assert clone.fingerprint() == fingerprint


def test_numpy_batches_as_ray_sends_them():
    step = PairMetrics()
    batch = {"responses": [["a b c", "a x c"], ["p", "q", "r s"]], "rewards": [[1.0, 0.0], [0.0, 2.0, 1.0]]}
    expected = step(batch)
    responses = np.empty(2, dtype=object)
    responses[0], responses[1] = np.array(["a b c", "a x c"]), np.array(["p", "q", "r s"])
    rewards = np.empty(2, dtype=object)
    rewards[0], rewards[1] = np.array([1.0, 0.0]), np.array([0.0, 2.0, 1.0])
    out = step({"responses": responses, "rewards": rewards})
    assert all(isinstance(column, np.ndarray) for column in out.values())
    assert [list(map(list, m)) for m in out["edit_distance_matrix"]] == expected["edit_distance_matrix"]
    assert [list(map(list, m)) for m in out["dcrm_matrix"]] == expected["dcrm_matrix"]
    assert list(out["edit_distance_unit"]) == ["word", "word"]


def _candidates(tmp_path) -> datasets.Dataset:
    path = tmp_path / "cands.jsonl"
    rows = [
        {"key": i, "prompt": f"p{i}", "responses": ["a b", "a c", f"d {i}"], "rewards": [0.1 * i, 1.0, -1.0]}
        for i in range(4)
    ]
    rows[1]["ref_logps"] = None
    for i in (0, 2, 3):
        rows[i]["ref_logps"] = [-1.0, -2.0, -4.0]
    datasets.Dataset.from_list(rows).to_json(path)
    return datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )


def test_apply_types_mixed_rows_and_reruns_from_cache(tmp_path, monkeypatch):
    ds = _candidates(tmp_path)
    first = PairMetrics().apply(ds, batch_size=1)  # row 1 (no logps) in a batch of its own
    assert first["logp_diff_matrix"][1] is None
    assert first["logp_diff_matrix"][2] == [[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]]
    assert first["edit_distance_matrix"][0] == [[0, 1, 2], [1, 0, 2], [2, 2, 0]]
    assert first.features["edit_distance_matrix"] == datasets.List(datasets.List(datasets.Value("int64")))
    calls = []
    original = PairMetrics.process
    monkeypatch.setattr(PairMetrics, "process", lambda self, *a: calls.append(1) or original(self, *a))
    again = PairMetrics().apply(ds, batch_size=1)
    assert calls == [], "a rerun of a finished step must be a cache hit"
    assert again.cache_files == first.cache_files
    changed = PairMetrics(eps=2.0).apply(ds, batch_size=1)
    assert calls and changed._fingerprint != first._fingerprint


# ---- e_Δ's unit is declared, not borrowed from a model step --------------------------------------------


def test_edit_distance_unit_is_its_own_setting(tokenizer_dir):
    assert PairMetricsConfig().edit_distance_unit == "words" and PairMetricsConfig().tokenizer is None
    assert PairMetricsConfig(edit_distance_unit="word").edit_distance_unit == "words"
    named = PairMetricsConfig(edit_distance_unit=str(tokenizer_dir))
    assert named.tokenizer == str(tokenizer_dir)
    # the older spelling declares the same unit, and a step built either way is the same step
    assert PairMetricsConfig(tokenizer=str(tokenizer_dir)) == named
    assert PairMetrics(tokenizer=str(tokenizer_dir)).fingerprint() == PairMetrics(named).fingerprint()
    with pytest.raises(ValueError, match="disagree"):
        PairMetricsConfig(edit_distance_unit="words", tokenizer=str(tokenizer_dir))
    with pytest.raises(ValueError, match="needs a tokenizer unit"):
        PairMetricsConfig(tokenizer_revision="main")
    with pytest.raises(ValueError, match="edit_distance_unit must be"):
        PairMetricsConfig(edit_distance_unit="")
    assert (
        PairMetrics(named).edit_distance_unit
        == f"token:{tokenizer_dir}@{tokenizer_content_hash(tokenizer_dir)}"
    )


def test_reused_token_ids_only_in_the_declared_unit(tokenizer_dir):
    from hfpref.steps.pair_metrics import EditDistanceUnitError, token_unit

    step = PairMetrics(edit_distance_unit=str(tokenizer_dir))
    batch = {"responses": [["the sea is wide", "the sea", "blue"]], "rewards": [[1.0, 0.0, 0.5]]}
    own = step(batch)
    tokens = step.tokenize(step.response_texts(batch))
    declared = token_unit(str(tokenizer_dir), tokenizer_content_hash(tokenizer_dir))
    assert step.metrics_from_tokens(batch, tokens, unit=declared) == own
    with pytest.raises(EditDistanceUnitError, match="token ids given in unit 'token:other@abc'.*declares"):
        step.metrics_from_tokens(batch, tokens, unit="token:other@abc")
    with pytest.raises(EditDistanceUnitError, match="'word'"):
        step.metrics_from_tokens(batch, tokens, unit="word")


def test_curate_tokenizer_override_sets_the_declared_unit(tokenizer_dir):
    from hfpref.pipeline.recipe import Recipe

    recipe = Recipe.from_dict(
        {
            "input": {"default": "ifeval"},
            "steps": [{"step": "PairMetrics", "config": {"edit_distance_unit": "words"}}],
            "pairs": {"strategies": ["best_of_n2"]},
            "output": {"folder": "out", "name": "n", "version": "0.0.1"},
        },
        validate=False,
    )
    overridden = recipe.with_overrides(tokenizer=str(tokenizer_dir))
    assert overridden.steps[0].config == {"edit_distance_unit": str(tokenizer_dir)}


def test_changing_the_reference_model_does_not_change_e_delta(tiny_models, tokenizer_dir, tmp_path):
    """Two recipes differing only in π_ref, whose tokenizers differ: identical e_Δ, different p_Δ."""
    import json

    import torch
    from transformers import LlamaForCausalLM

    from hfpref.pipeline.recipe import Recipe
    from hfpref.release import build_manifest
    from tests.tiny_models import _config

    # a second reference model with another tokenizer (a smaller vocabulary splits words differently)
    other_tokenizer = build_tokenizer(vocab_size=270)
    torch.manual_seed(3)
    other_ref = tmp_path / "other-ref"
    LlamaForCausalLM(_config(other_tokenizer)).save_pretrained(other_ref)
    other_tokenizer.save_pretrained(other_ref)

    rows = [
        {
            "prompt": "Write a short poem about the sea.",
            "responses": ["The sea is wide and blue.", "The sea is blue.", "Waves over the lazy dog."],
            "rewards": [1.0, 0.5, 0.0],
        },
        {
            "prompt": "List the planets.",
            "responses": ["Mercury, Venus, Earth and Mars.", "The planets of the solar system.", "Earth"],
            "rewards": [0.2, 0.9, 0.4],
        },
    ]
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def run(reference: str):
        recipe = Recipe.from_dict(
            {
                "input": {"path": str(candidates)},
                "steps": [
                    {"step": "LogProbAnnotator", "config": {"model": reference}},
                    {"step": "PairMetrics", "config": {"edit_distance_unit": str(tokenizer_dir)}},
                ],
                "pairs": {"strategies": ["best_of_n2"], "config": {"seed": 0}},
                "output": {"folder": str(tmp_path / "release"), "name": "e-delta", "version": "0.0.1"},
            }
        )
        result = recipe.run(cache_dir=tmp_path / "cache", progress=False)
        return result, build_manifest(result, version="0.0.1")

    first, first_manifest = run(str(tiny_models["policy"]))
    second, second_manifest = run(str(other_ref))
    assert first.candidates["edit_distance_matrix"] == second.candidates["edit_distance_matrix"]
    assert first.candidates["logp_diff_matrix"] != second.candidates["logp_diff_matrix"]  # π_ref did change
    unit = f"token:{tokenizer_dir}@{tokenizer_content_hash(tokenizer_dir)}"
    assert first_manifest["edit_distance_unit"] == second_manifest["edit_distance_unit"] == unit
    # the two references' own tokenizers would have given different e_Δ: the test can tell them apart
    own = [
        PairMetrics(edit_distance_unit=str(path)).apply(first.candidates)["edit_distance_matrix"]
        for path in (tiny_models["policy"], other_ref)
    ]
    assert own[0] != own[1]
