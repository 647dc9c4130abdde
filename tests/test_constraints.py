"""ConstrainedPrompts: prompts with k IFEval constraints, checked against lm-eval's own tables and checks."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.constraints import (
    ARGUMENT_SAMPLERS,
    DIFFICULTY,
    EXCLUDED_KINDS,
    SEED_PROMPT,
    ConstrainedPrompts,
    ConstraintConfig,
)
from hfpref.steps.ifeval import IFEvalVerifier, instruction_registry

SEEDS = [f"Seed prompt number {i}: write about topic {i % 13} for reader {i % 7}." for i in range(200)]
DUMMY_RESPONSES = [
    "This is a dummy response. It has two sentences.",
    '"<<A title>>\n\nSECTION 1\n* one point\n* two\n\nP.S. done. Any other questions?"',
]


def lm_eval_tables():
    instruction_registry()  # imports lm-eval with the packaged NLTK data
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT, instructions_registry.INSTRUCTION_CONFLICTS


def generate_dataset(seeds, batch_size=64, **config) -> datasets.Dataset:
    step = ConstrainedPrompts(ConstraintConfig(**config))
    return step.apply(datasets.Dataset.from_dict({"prompt": list(seeds)}), batch_size=batch_size)


def generate(seeds, batch_size=64, **config) -> dict[str, list]:
    return generate_dataset(seeds, batch_size, **config).to_dict()


@pytest.fixture(scope="module")
def mixed_k_dataset():
    return generate_dataset(SEEDS, k_choices=[1, 2, 3, 4, 5, 6], seed=0)


@pytest.fixture(scope="module")
def mixed_k(mixed_k_dataset):
    return mixed_k_dataset.to_dict()


def test_every_kind_but_the_excluded_has_an_argument_sampler():
    registry, _ = lm_eval_tables()
    assert set(ARGUMENT_SAMPLERS) == set(registry) - set(EXCLUDED_KINDS)
    assert set(EXCLUDED_KINDS) == {"combination:repeat_prompt"}


def test_every_prompt_is_graded_by_the_verifier_and_by_lm_eval_itself(mixed_k_dataset):
    assert mixed_k_dataset.features["kwargs"] == datasets.List(datasets.Json())
    rows = mixed_k_dataset.add_column("responses", [DUMMY_RESPONSES] * len(mixed_k_dataset))
    graded = IFEvalVerifier().apply(rows)  # through Arrow, as a recipe runs it
    assert len(graded) == 200
    for ids, strict in zip(graded["instruction_id_list"], graded["ifeval_strict"], strict=True):
        assert [len(v) for v in strict] == [len(ids)] * len(DUMMY_RESPONSES)

    # lm-eval's own grading (its process_results) accepts every row too, with the same strict verdicts
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval.utils import process_results

    saved, DetectorFactory.seed = DetectorFactory.seed, 0  # as the verifier seeds it
    try:
        for i, row in enumerate(graded):
            doc = {"key": i, **{k: row[k] for k in ("prompt", "instruction_id_list", "kwargs")}}
            for response, strict in zip(DUMMY_RESPONSES, row["ifeval_strict"], strict=True):
                assert process_results(doc, [response])["inst_level_strict_acc"] == strict
    finally:
        DetectorFactory.seed = saved


def test_descriptions_are_the_checks_own_text_for_the_recorded_arguments(mixed_k):
    registry, _ = lm_eval_tables()
    for seed, prompt, ids, kwargs in zip(
        SEEDS, mixed_k["prompt"], mixed_k["instruction_id_list"], mixed_k["kwargs"], strict=True
    ):
        descriptions = []
        for kind, arguments in zip(ids, kwargs, strict=True):
            check = registry[kind](kind)
            state = random.getstate()
            descriptions.append(check.build_description(**arguments))
            assert random.getstate() == state, f"{kind} drew a random value: an argument is missing"
            assert (check.get_instruction_args() or {}) == arguments
        assert prompt == seed + "\n\n" + "\n".join(descriptions)


def test_no_two_constraints_of_a_prompt_conflict_in_ifevals_table(mixed_k):
    _, conflicts = lm_eval_tables()  # the raw table: A conflicts with B if either lists the other

    def clash(a, b):
        return a == b or b in conflicts.get(a, set()) or a in conflicts.get(b, set())

    pairs_seen = 0
    for ids in mixed_k["instruction_id_list"]:
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                pairs_seen += 1
                assert not clash(ids[x], ids[y]), (ids[x], ids[y])
                lowercase_vs_sections = {
                    "change_case:english_lowercase",
                    "detectable_format:multiple_sections",
                }
                assert {ids[x], ids[y]} != lowercase_vs_sections
    assert pairs_seen > 500  # the table was exercised, not skipped


def test_difficulty_is_the_number_of_constraints_and_every_k_is_drawn(mixed_k):
    assert mixed_k[DIFFICULTY] == [len(ids) for ids in mixed_k["instruction_id_list"]]
    assert set(mixed_k[DIFFICULTY]) == {1, 2, 3, 4, 5, 6}
    assert mixed_k[SEED_PROMPT] == SEEDS
    fixed = generate(SEEDS[:30], k=4)
    assert fixed[DIFFICULTY] == [4] * 30
    assert all(len(ids) == len(set(ids)) == 4 for ids in fixed["instruction_id_list"])


def test_deterministic_across_runs_batch_sizes_and_row_order(mixed_k):
    again = generate(SEEDS, batch_size=7, k_choices=[1, 2, 3, 4, 5, 6], seed=0)
    assert again == mixed_k
    reversed_rows = generate(SEEDS[::-1], batch_size=200, k_choices=[1, 2, 3, 4, 5, 6], seed=0)
    assert {k: v[::-1] for k, v in reversed_rows.items()} == mixed_k
    other_seed = generate(SEEDS[:20], k_choices=[1, 2, 3, 4, 5, 6], seed=1)
    assert other_seed["prompt"] != mixed_k["prompt"][:20]


def test_global_random_states_are_left_alone():
    random.seed(123)
    np.random.seed(123)
    state, np_state = random.getstate(), np.random.get_state()
    ConstrainedPrompts(k_choices=[3, 6])({"prompt": SEEDS[:40]})
    assert random.getstate() == state
    after = np.random.get_state()
    assert after[0] == np_state[0] and (after[1] == np_state[1]).all() and after[2:] == np_state[2:]


def test_arguments_are_consistent_within_a_prompt():
    kinds = [
        "keywords:existence",
        "keywords:frequency",
        "keywords:forbidden_words",
        "keywords:letter_frequency",
        "length_constraints:nth_paragraph_first_word",
        "startend:end_checker",
    ]
    rows = generate(SEEDS, k=6, kinds=kinds)
    less_than_letters = 0
    for ids, kwargs in zip(rows["instruction_id_list"], rows["kwargs"], strict=True):
        args = dict(zip(ids, kwargs, strict=True))
        existence = args["keywords:existence"]["keywords"]
        frequency = args["keywords:frequency"]
        forbidden = args["keywords:forbidden_words"]["forbidden_words"]
        paragraph = args["length_constraints:nth_paragraph_first_word"]
        end_phrase = args["startend:end_checker"]["end_phrase"].lower()
        words = [*existence, frequency["keyword"], *forbidden, paragraph["first_word"]]
        assert len(set(words)) == len(words)
        for a in words:
            assert a not in end_phrase
            assert not any(a in b for b in words if b != a)
        assert 1 <= paragraph["nth_paragraph"] <= paragraph["num_paragraphs"]
        letter = args["keywords:letter_frequency"]
        if letter["let_relation"] == "less than":
            less_than_letters += 1
            required = [*existence, paragraph["first_word"], end_phrase]
            if frequency["relation"] == "at least":
                required.append(frequency["keyword"])
            assert all(letter["letter"] not in text for text in required)
    assert less_than_letters > 20


def test_section_markers_and_capital_counts_respect_the_case_constraints():
    capital = generate(
        SEEDS[:60], k=2, kinds=["change_case:english_capital", "detectable_format:multiple_sections"]
    )
    for ids, kwargs in zip(capital["instruction_id_list"], capital["kwargs"], strict=True):
        assert (
            dict(zip(ids, kwargs, strict=True))["detectable_format:multiple_sections"]["section_spliter"]
            == "SECTION"
        )
    counted = generate(
        SEEDS,
        k=3,
        kinds=[
            "change_case:capital_word_frequency",
            "detectable_format:multiple_sections",
            "startend:end_checker",
        ],
    )
    for ids, kwargs in zip(counted["instruction_id_list"], counted["kwargs"], strict=True):
        args = dict(zip(ids, kwargs, strict=True))
        assert args["detectable_format:multiple_sections"]["section_spliter"] == "Section"
        capital_args = args["change_case:capital_word_frequency"]
        # "Is there anything else I can help with?" forces one capital word ("I"); the other ending none
        forced = 1 if args["startend:end_checker"]["end_phrase"].startswith("Is there") else 0
        if capital_args["capital_relation"] == "less than":
            assert capital_args["capital_frequency"] > forced


def test_fewer_than_one_sentence_is_never_asked():
    rows = generate(SEEDS, k=1, kinds=["length_constraints:number_sentences"])
    less = [kw[0]["num_sentences"] for kw in rows["kwargs"] if kw[0]["relation"] == "less than"]
    assert less and min(less) >= 2


def test_other_source_column_keeps_it_and_writes_prompt():
    step = ConstrainedPrompts(k=2, source_column="instruction")
    out = step({"instruction": ["Describe a cat."], "key": [7]})
    assert out[SEED_PROMPT] == ["Describe a cat."]
    assert out["prompt"][0].startswith("Describe a cat.\n\n")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"k": 2, "k_choices": [2]}, "exactly one of k or k_choices"),
        ({}, "exactly one of k or k_choices"),
        ({"k": 0}, "integers >= 1"),
        ({"k": 1, "kinds": ["keywords:nonsense"]}, "unknown IFEval instruction id"),
        ({"k": 1, "kinds": ["combination:repeat_prompt"]}, "repeat_prompt"),
        (
            {"k": 2, "kinds": ["detectable_format:json_format", "detectable_format:title"]},
            "mutually compatible",
        ),
        ({"k": 2, "template": "{prompt}"}, "{constraints}"),
    ],
)
def test_bad_configs_are_rejected_with_the_reason(config, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        ConstrainedPrompts(ConstraintConfig(**config))


def test_bad_seed_prompts_name_the_row_and_column():
    step = ConstrainedPrompts(k=1)
    with pytest.raises(RowError, match=r"row 4 key=9 column 'prompt'.*got '  '"):
        step({"prompt": ["  "], "key": [9]}, indices=[4])
    with pytest.raises(RowError, match="column 'prompt'"):
        step({"prompt": [[{"role": "user", "content": "hi"}]]})
    with pytest.raises(MissingColumnError, match="'instruction'"):
        ConstrainedPrompts(k=1, source_column="instruction")({"prompt": ["x"]})
