"""Implicit rewards and margins (hand-computed, and against TRL's DPOTrainer), and selection for annotation."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.logprobs import LogProbAnnotator
from hfpref.steps.margins import (
    AnnotationSelectionConfig,
    AnnotationSelector,
    EqualMarginsError,
    ImplicitMargins,
    budget_size,
    implicit_rewards,
    pair_margins,
    select_for_annotation,
    selection_summary,
    unordered_pairs,
)

# ---- formulas, by hand -----------------------------------------------------------------------------------


def test_implicit_rewards_and_margins_by_hand():
    step = ImplicitMargins(beta=0.1)
    batch = {
        "prompt": ["p"],
        "responses": [["a", "b", "c"]],
        "policy_logps": [[-10.0, -12.0, -9.0]],
        "ref_logps": [[-11.0, -11.0, -11.0]],
    }
    out = step(batch)
    # r̂ = 0.1 * (policy - ref) = [0.1, -0.1, 0.2]; margins of (0,1), (0,2), (1,2)
    assert out["implicit_rewards"][0] == pytest.approx([0.1, -0.1, 0.2])
    assert out["pair_indices"][0] == [[0, 1], [0, 2], [1, 2]]
    assert out["implicit_margins"][0] == pytest.approx([0.2, -0.1, -0.3])


def test_length_normalised_margins_by_hand():
    step = ImplicitMargins(beta=0.5, length_normalize=True)
    assert step.input_columns()[-2:] == ["policy_token_counts", "ref_token_counts"]
    batch = {
        "responses": [["a", "b"]],
        "policy_logps": [[-4.0, -9.0]],
        "ref_logps": [[-6.0, -6.0]],
        "policy_token_counts": [[2, 3]],
        "ref_token_counts": [[2, 3]],
    }
    out = step(batch)
    # per token: policy [-2, -3], ref [-3, -2]; r̂ = 0.5 * [1, -1] = [0.5, -0.5]; margin 1.0
    assert out["implicit_rewards"][0] == pytest.approx([0.5, -0.5])
    assert out["implicit_margins"][0] == pytest.approx([1.0])
    with pytest.raises(MissingColumnError, match="policy_token_counts"):
        step({k: v for k, v in batch.items() if k != "policy_token_counts"})


def test_helpers():
    assert unordered_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert unordered_pairs(1) == [] and list(pair_margins([3.0])) == []
    assert implicit_rewards([-1.0], [-3.0], 2.0).tolist() == [4.0]
    # round(fraction * available), halves up; counts are capped
    assert [budget_size(3, 0.5, None), budget_size(28, 0.5, None), budget_size(5, 0.1, None)] == [2, 14, 1]
    assert budget_size(3, None, 10) == 3 and budget_size(3, None, 0) == 0


def test_bad_log_probs_name_row_and_column():
    step = ImplicitMargins()
    batch = {
        "prompt": ["p"],
        "responses": [["a", "b"]],
        "policy_logps": [[-1.0]],
        "ref_logps": [[-1.0, -2.0]],
    }
    with pytest.raises(RowError, match=r"batch row 0 .*'policy_logps' must hold 2 finite numbers.*\[-1.0\]"):
        step(batch)
    batch["policy_logps"] = [[-1.0, float("nan")]]
    with pytest.raises(RowError, match="policy_logps"):
        step(batch)
    with pytest.raises(ValueError, match="beta"):
        ImplicitMargins(beta=0)


# ---- the margin TRL logs ---------------------------------------------------------------------------------

PAIRS = [
    {
        "prompt": [{"role": "user", "content": "Write a short poem about the sea."}],
        "chosen": [{"role": "assistant", "content": "The sea is wide and blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
    {
        "prompt": [{"role": "user", "content": "List the planets of the solar system."}],
        "chosen": [{"role": "assistant", "content": "Mercury, Venus, Earth, Mars."}],
        "rejected": [{"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}],
    },
    {
        "prompt": "Respond in JSON format",
        "chosen": ' {"name": "fox", "age": 3}',
        "rejected": " The lazy dog.",
    },
]


@pytest.fixture(scope="module")
def perturbed_policy(tiny_models, tmp_path_factory):
    """The tiny model with every weight moved by seeded noise: a policy that differs from its reference."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["policy"], dtype=torch.float32)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("perturbed") / "policy"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["policy"]).save_pretrained(folder)
    return folder


def test_pair_margin_equals_trl_rewards_margins(tiny_models, perturbed_policy, tmp_path):
    beta = 0.3

    def text(completion):
        return completion if isinstance(completion, str) else completion[0]["content"]

    candidates = datasets.Dataset.from_list(
        [{"prompt": p["prompt"], "responses": [text(p["chosen"]), text(p["rejected"])]} for p in PAIRS[:2]]
    )
    standard = datasets.Dataset.from_list(
        [{"prompt": p["prompt"], "responses": [text(p["chosen"]), text(p["rejected"])]} for p in PAIRS[2:]]
    )
    ours = []
    for rows in (candidates, standard):  # conversational and standard prompts: separate Arrow schemas
        rows = LogProbAnnotator(model=str(perturbed_policy), output_prefix="policy").apply(rows)
        rows = LogProbAnnotator(model=str(tiny_models["policy"]), output_prefix="ref").apply(rows)
        rows = ImplicitMargins(beta=beta).apply(rows)
        ours += [margins[0] for margins in rows["implicit_margins"]]  # pair (0, 1) = (chosen, rejected)

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    policy = AutoModelForCausalLM.from_pretrained(perturbed_policy, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_models["policy"], dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        bf16=False,  # TRL's default bf16 autocast would move its numbers by ~5e-4 (NOTES.md)
        use_cpu=True,
        report_to=[],
        per_device_eval_batch_size=1,
    )
    for pair, margin in zip(PAIRS, ours, strict=True):
        rows = datasets.Dataset.from_list([pair])
        trainer = DPOTrainer(
            model=policy, ref_model=reference, args=args, train_dataset=rows, processing_class=tokenizer
        )
        metrics = trainer.evaluate(eval_dataset=rows)
        assert margin == pytest.approx(metrics["eval_rewards/margins"], abs=1e-4)
    assert all(abs(m) > 1e-3 for m in ours), "the perturbed policy must differ from its reference"


# ---- selection, by hand ----------------------------------------------------------------------------------


def _candidates(rows: list[dict]) -> datasets.Dataset:
    """Candidates rows from {prompt, responses, margins}, with pair_indices filled in."""
    return datasets.Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "responses": r["responses"],
                "pair_indices": [list(p) for p in unordered_pairs(len(r["responses"]))],
                "implicit_margins": r["margins"],
            }
            for r in rows
        ]
    )


FOUR = {"prompt": "p0", "responses": ["a", "b", "c", "d"], "margins": [0.5, -0.1, 2.0, 0.3, -1.0, 0.05]}


@pytest.mark.parametrize(
    ("strategy", "budget", "expected"),
    [
        ("smallest_margin", {"fraction": 0.5}, {5, 1, 3}),  # |m| 0.05, 0.1, 0.3
        ("largest_margin", {"fraction": 0.5}, {2, 4, 0}),  # |m| 2.0, 1.0, 0.5
        ("smallest_margin", {"count": 2}, {5, 1}),
        ("largest_margin", {"count": 1}, {2}),
        ("smallest_margin", {"fraction": 1.0}, {0, 1, 2, 3, 4, 5}),
    ],
)
def test_instance_selection_by_hand(strategy, budget, expected):
    out = select_for_annotation(_candidates([FOUR]), strategy=strategy, level="instance", **budget)
    flags = out["selected_for_annotation"][0]
    assert {k for k, f in enumerate(flags) if f} == expected
    assert out["selection_strategy"][0] == strategy and out["selection_level"][0] == "instance"
    assert out["selection_fraction"][0] == budget.get("fraction")
    assert out["selection_count"][0] == budget.get("count")
    # the margins themselves are kept, unselected pairs included
    assert out["implicit_margins"][0] == FOUR["margins"] and len(flags) == 6


def test_instance_and_corpus_level_differ_where_they_must():
    # prompt A's margins are all small, prompt B's all large: per prompt, half of each is taken; across the
    # corpus, the three smallest margins are all A's
    rows = [
        {"prompt": "A", "responses": ["a1", "a2", "a3"], "margins": [0.01, -0.02, 0.03]},
        {"prompt": "B", "responses": ["b1", "b2", "b3"], "margins": [1.0, -2.0, 3.0]},
    ]
    instance = select_for_annotation(
        _candidates(rows), strategy="smallest_margin", level="instance", fraction=0.5
    )
    corpus = select_for_annotation(
        _candidates(rows), strategy="smallest_margin", level="corpus", fraction=0.5
    )
    assert instance["selected_for_annotation"] == [[True, True, False], [True, True, False]]
    assert corpus["selected_for_annotation"] == [[True, True, True], [False, False, False]]
    largest = select_for_annotation(_candidates(rows), strategy="largest_margin", level="corpus", count=2)
    assert largest["selected_for_annotation"] == [[False, False, False], [False, True, True]]
    assert corpus["selection_level"] == ["corpus", "corpus"]


def test_excluded_pairs_are_never_selected_and_say_why():
    rows = [
        {"prompt": "p", "responses": ["same", "same", "", "other"], "margins": [0.0, 5.0, 0.5, 0.2, 0.1, 9.0]}
    ]
    out = select_for_annotation(_candidates(rows), strategy="smallest_margin", level="instance", fraction=1.0)
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert out["pair_excluded_reason"][0] == [
        "identical_responses",
        "empty_response",
        None,
        "empty_response",
        None,
        "empty_response",
    ]
    assert out["selected_for_annotation"][0] == [False, False, True, False, True, False]
    nan_row = [{"prompt": "q", "responses": ["x", "y"], "margins": [float("nan")]}]
    out = select_for_annotation(_candidates(nan_row), strategy="largest_margin", level="corpus", fraction=1.0)
    assert out["pair_excluded_reason"][0] == ["nan_margin"] and out["selected_for_annotation"][0] == [False]


# ---- ties, seeds, determinism ----------------------------------------------------------------------------


def _zero_margin_rows(prompts: int = 12, n: int = 4) -> list[dict]:
    pairs = len(unordered_pairs(n))
    return [
        {"prompt": f"prompt {k}", "responses": [f"r{k}-{i}" for i in range(n)], "margins": [0.0] * pairs}
        for k in range(prompts)
    ]


@pytest.mark.parametrize("level", ["instance", "corpus"])
@pytest.mark.parametrize("strategy", ["smallest_margin", "largest_margin"])
def test_all_equal_margins_are_an_error_by_default(level, strategy):
    """Round 1 of iterative DPO with the policy as its own reference: every margin is 0."""
    rows = _candidates(_zero_margin_rows())
    with pytest.raises(EqualMarginsError, match=r"all 72 eligible pairs have the same implicit margin \(0\)"):
        select_for_annotation(rows, strategy=strategy, level=level, fraction=0.5)
    # one differing margin anywhere is enough to rank by
    changed = _zero_margin_rows()
    changed[5]["margins"][2] = 0.25
    out = select_for_annotation(_candidates(changed), strategy=strategy, level=level, fraction=0.5)
    assert selection_summary(out)["margins_all_equal"] is False
    # random selection never needed margins
    select_for_annotation(rows, strategy="random", level=level, fraction=0.5)


@pytest.mark.parametrize("level", ["instance", "corpus"])
def test_all_zero_margins_select_at_random_by_seed_when_asked(level):
    """``on_equal_margins: random``: the explicit fallback is the seeded random selection, and reported."""
    rows = _candidates(_zero_margin_rows())
    picks = {}
    for strategy in ("smallest_margin", "largest_margin", "random"):
        for seed in (0, 1):
            out = select_for_annotation(
                rows, strategy=strategy, level=level, fraction=0.5, seed=seed, on_equal_margins="random"
            )
            assert selection_summary(out)["margins_all_equal"] is True
            picks[strategy, seed] = out["selected_for_annotation"]
            assert sum(map(sum, picks[strategy, seed])) == 12 * 3  # half of 12 x 6 pairs, exactly
    # with no margin to rank by, each strategy is the seeded random selection
    assert picks["smallest_margin", 0] == picks["random", 0] == picks["largest_margin", 0]
    assert picks["random", 0] != picks["random", 1]
    if level == "corpus":  # a corpus-level random pick is not half of every prompt
        assert {sum(flags) for flags in picks["random", 0]} != {3}


@pytest.mark.parametrize("level", ["instance", "corpus"])
def test_selection_depends_on_neither_row_order_nor_batch_size(level):
    rng = random.Random(7)
    rows = [
        {
            "prompt": f"p{k}",
            "responses": [f"r{k}{i}" for i in range(4)],
            "margins": [round(rng.random(), 1) for _ in range(6)],
        }
        for k in range(10)
    ]  # rounding to one decimal makes many ties, broken by the seeded key
    base = select_for_annotation(
        _candidates(rows), strategy="smallest_margin", level=level, count=7 if level == "corpus" else 2
    )
    expected = dict(zip(base["prompt"], base["selected_for_annotation"], strict=True))
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    for batch_size in (1, 3, 64):
        step = AnnotationSelector(
            strategy="smallest_margin", level=level, count=7 if level == "corpus" else 2
        )
        out = step.apply(_candidates(shuffled), batch_size=batch_size)
        assert dict(zip(out["prompt"], out["selected_for_annotation"], strict=True)) == expected


def test_corpus_ranking_is_global_and_exact():
    rng = np.random.default_rng(0)
    rows = [
        {
            "prompt": f"p{k}",
            "responses": [f"r{k}{i}" for i in range(3)],
            "margins": rng.normal(size=3).tolist(),
        }
        for k in range(8)
    ]
    out = select_for_annotation(_candidates(rows), strategy="smallest_margin", level="corpus", fraction=0.25)
    everything = sorted(abs(m) for r in rows for m in r["margins"])
    chosen = sorted(
        abs(m)
        for margins, flags in zip(out["implicit_margins"], out["selected_for_annotation"], strict=True)
        for m, f in zip(margins, flags, strict=True)
        if f
    )
    assert chosen == everything[:6]  # round(0.25 * 24) = 6 smallest, wherever they are
    summary = selection_summary(out)
    assert (summary["pairs"], summary["eligible"], summary["selected"]) == (24, 24, 6)
    assert summary["abs_margin_selected"]["max"] <= summary["abs_margin_unselected"]["min"]


def test_corpus_level_needs_the_whole_dataset():
    step = AnnotationSelector(strategy="smallest_margin", level="corpus", fraction=0.5)
    batch = _candidates([FOUR])[:]
    with pytest.raises(ValueError, match="whole dataset.*apply"):
        step(batch)


def test_config_and_row_errors():
    with pytest.raises(ValueError, match="exactly one budget"):
        AnnotationSelectionConfig(fraction=0.5, count=3)
    with pytest.raises(ValueError, match="exactly one budget"):
        AnnotationSelectionConfig()
    with pytest.raises(ValueError, match="unknown selection strategy"):
        AnnotationSelectionConfig(strategy="smallest", fraction=0.5)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        AnnotationSelectionConfig(fraction=1.5)
    with pytest.raises(ValueError, match=r"on_equal_margins must be one of \['error', 'random'\]"):
        AnnotationSelectionConfig(fraction=0.5, on_equal_margins="ignore")
    step = AnnotationSelector(fraction=0.5)
    bad = {
        "prompt": ["p"],
        "responses": [["a", "b", "c"]],
        "pair_indices": [[[0, 1]]],
        "implicit_margins": [[0.1]],
    }
    with pytest.raises(RowError, match=r"batch row 0 column 'pair_indices' must list the 3 pairs"):
        step(bad)


def test_steps_keep_their_public_paths_in_manifests():
    # the classes live in submodules of hfpref.steps.margins; manifests and fingerprints keep the package's path
    assert ImplicitMargins().describe()["step"] == "hfpref.steps.margins.ImplicitMargins"
    assert AnnotationSelector(fraction=0.5).describe()["step"] == "hfpref.steps.margins.AnnotationSelector"
