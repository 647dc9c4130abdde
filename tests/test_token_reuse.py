"""The sampler's token ids reach PairMetrics (issue 15): e_Δ on the sampled ids, no second tokenization."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.core import columns as C
from hfpref.core.step import Step
from hfpref.models.hub import model_token_unit
from hfpref.models.token_ids import response_ids, skipped_token_ids
from hfpref.release.manifest import candidate_columns
from hfpref.steps.pair_metrics import PairMetrics, token_unit, tokenizer_content_hash
from hfpref.steps.pair_rows import NOT_PASSED_THROUGH
from hfpref.steps.sampling import ResponseSampler, SamplerConfig
from tests.helpers import DeclaredColumns, levenshtein

PROMPTS = ["Write a short poem about the sea.", "List the planets.", "Name three colours.", "Why?"]


@pytest.fixture(scope="module")
def sampled(policy) -> datasets.Dataset:
    """Sampled candidates through Dataset.map (the ids come back from Arrow, as in a recipe), with rewards."""
    step = ResponseSampler(SamplerConfig(model=policy, n=3, max_new_tokens=12))
    rows = step.apply(datasets.Dataset.from_dict({"prompt": PROMPTS}), batch_size=2)
    return rows.add_column(C.REWARDS, [[0.5, -1.0, 2.0]] * len(rows))


class TokenizeSpy:
    """Records every text PairMetrics.tokenize is asked for."""

    def __init__(self, monkeypatch) -> None:
        self.texts: list[str] = []
        original = PairMetrics.tokenize

        def spy(step, texts, rank=None):
            self.texts += list(texts)
            return original(step, texts, rank)

        monkeypatch.setattr(PairMetrics, "tokenize", spy)


def expected_distances(token_lists: list[list[int]]) -> list[list[int]]:
    return [[levenshtein(a, b) for b in token_lists] for a in token_lists]


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_unit_label_is_the_one_pair_metrics_declares(policy, tmp_path):
    sampler = ResponseSampler(SamplerConfig(model=policy))
    label = sampler.token_unit()
    assert label == PairMetrics(edit_distance_unit=policy).unit_label()
    assert (
        label == f"token:{policy}@{tokenizer_content_hash(policy)}" == token_unit(policy, label.split("@")[1])
    )
    # a Hub id is versioned by its resolved commit
    assert model_token_unit("org/model", "a" * 40) == f"token:org/model@{'a' * 40}"
    # the same files under another name are another label (the label names the tokenizer as given)
    copy = shutil.copytree(policy, tmp_path / "copy")
    assert ResponseSampler(SamplerConfig(model=str(copy))).token_unit() != label


def test_sampler_writes_the_generated_ids_of_each_response(sampled, policy):
    tokenizer = AutoTokenizer.from_pretrained(policy)
    assert sampled.features[C.RESPONSE_TOKEN_IDS] == datasets.List(datasets.List(datasets.Value("int32")))
    assert sampled[C.RESPONSE_TOKEN_UNIT] == [ResponseSampler(SamplerConfig(model=policy)).token_unit()] * 4
    special = set(tokenizer.all_special_ids) | {3, 4, 5, 6}  # + the chat template's role markers
    for texts, ids in zip(sampled[C.RESPONSES], sampled[C.RESPONSE_TOKEN_IDS], strict=True):
        assert len(ids) == len(texts) == 3
        for text, row in zip(texts, ids, strict=True):
            assert 0 < len(row) <= 12 and not special & set(row)  # no prompt, no EOS, no padding
            assert tokenizer.decode(row) == text  # the ids ARE the response: its text decodes from them


def test_greedy_ids_are_the_tokens_generate_makes(policy):
    out = ResponseSampler(SamplerConfig(model=policy, n=2, temperature=0.0, max_new_tokens=12))(
        {"prompt": PROMPTS[:2]}
    )
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    for prompt, ids in zip(PROMPTS[:2], out[C.RESPONSE_TOKEN_IDS], strict=True):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )["input_ids"]
        with torch.inference_mode():
            generated = model.generate(chat, do_sample=False, max_new_tokens=12)[0, chat.shape[1] :].tolist()
        expected = [t for t in generated if t not in (0, 1, 2, 3, 4, 5, 6)]  # the tiny tokenizer's specials
        assert [row.tolist() for row in ids] == [expected, expected]


def test_response_ids_drop_what_the_text_drops():
    row = response_ids([7, 5, 300, 2, 0, 0], frozenset({0, 2, 5}))
    assert row.dtype == np.int32 and row.tolist() == [7, 300]
    fake = SimpleNamespace(
        all_special_ids=[0, 2],
        added_tokens_decoder={5: SimpleNamespace(special=True), 9: SimpleNamespace(special=False)},
    )
    assert skipped_token_ids(fake) == {0, 2, 5}


def test_sampled_ids_match_encoding_where_the_text_round_trips(policy):
    # one or two new tokens: short enough that many responses are whole UTF-8 (a random tiny model
    # samples bytes; longer responses almost all hold a broken UTF-8 sequence)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompts = [f"Question {i}: say something about topic {7 * i}." for i in range(20)]
    out = ResponseSampler(SamplerConfig(model=policy, n=4, max_new_tokens=2))({"prompt": prompts})
    pairs = [
        (text, row.tolist())
        for texts, ids in zip(out[C.RESPONSES], out[C.RESPONSE_TOKEN_IDS], strict=True)
        for text, row in zip(texts, ids, strict=True)
    ]
    whole = [(text, row) for text, row in pairs if "\ufffd" not in text]
    broken = [(text, row) for text, row in pairs if "\ufffd" in text]
    assert len(whole) >= 10 and broken  # both kinds occur, so both checks below can fail
    assert all(encode(tokenizer, text) == row for text, row in whole)
    assert all(encode(tokenizer, text) != row for text, row in broken)


def test_pair_metrics_counts_on_the_sampled_ids_without_tokenizing(sampled, policy, monkeypatch):
    spy = TokenizeSpy(monkeypatch)
    out = PairMetrics(edit_distance_unit=policy).apply(sampled, batch_size=3)
    assert spy.texts == []
    assert out[C.EDIT_DISTANCE_UNIT] == sampled[C.RESPONSE_TOKEN_UNIT]
    for ids, matrix in zip(sampled[C.RESPONSE_TOKEN_IDS], out[C.EDIT_DISTANCE_MATRIX], strict=True):
        assert matrix == expected_distances(ids)


def test_another_unit_tokenizes_the_texts(sampled, tiny_models, monkeypatch):
    other = str(tiny_models["reward"])  # another folder: another unit, even where the tokenizer files agree
    tokenizer = AutoTokenizer.from_pretrained(other)
    spy = TokenizeSpy(monkeypatch)
    out = PairMetrics(edit_distance_unit=other).apply(sampled, batch_size=4)
    texts = [text for row in sampled[C.RESPONSES] for text in row]
    assert spy.texts == texts
    for responses, matrix in zip(sampled[C.RESPONSES], out[C.EDIT_DISTANCE_MATRIX], strict=True):
        assert matrix == expected_distances([encode(tokenizer, text) for text in responses])
    spy.texts.clear()
    # in words no row's ids are in the step's unit: every text is split the batch way (word_codes), none
    # goes through the per-text tokenize fallback
    words = PairMetrics().apply(sampled, batch_size=4)
    assert spy.texts == []
    for responses, matrix in zip(sampled[C.RESPONSES], words[C.EDIT_DISTANCE_MATRIX], strict=True):
        assert matrix == expected_distances([text.split() for text in responses])


def test_rows_and_responses_without_ids_are_tokenized(sampled, policy, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(policy)
    ids = [[row.copy() for row in r] for r in sampled[C.RESPONSE_TOKEN_IDS]]
    ids[0] = None  # a row from elsewhere
    ids[1][2] = None  # one response from elsewhere (e.g. merged in)
    ids[2] = ids[2][:2]  # ids that do not align with the responses
    responses = [list(r) for r in sampled[C.RESPONSES]]
    responses[3][0] = None  # a missing response keeps its blank cells
    batch = {**sampled.to_dict(), C.RESPONSE_TOKEN_IDS: ids, C.RESPONSES: responses}
    spy = TokenizeSpy(monkeypatch)
    out = PairMetrics(edit_distance_unit=policy)(batch)
    assert spy.texts == [*responses[0], responses[1][2], *responses[2]]
    expected = [
        [encode(tokenizer, text) for text in responses[0]],
        [*ids[1][:2], encode(tokenizer, responses[1][2])],
        [encode(tokenizer, text) for text in responses[2]],
        [[], *ids[3][1:]],
    ]
    for row, (tokens, matrix) in enumerate(zip(expected, out[C.EDIT_DISTANCE_MATRIX], strict=True)):
        want = expected_distances(tokens)
        if row == 3:
            want = [[None if 0 in (i, j) else d for j, d in enumerate(r)] for i, r in enumerate(want)]
        assert matrix == want
    # without the unit column nothing is reused: every response is tokenized, as without the ids (a missing
    # one as the empty placeholder its blanked cells come from)
    spy.texts.clear()
    PairMetrics(edit_distance_unit=policy)({k: v for k, v in batch.items() if k != C.RESPONSE_TOKEN_UNIT})
    assert spy.texts == ["" if text is None else text for row in responses for text in row]


def test_the_token_cache_stays_out_of_pairs_and_the_release():
    assert set(C.TOKEN_CACHE_COLUMNS) <= NOT_PASSED_THROUGH
    assert C.RESPONSE_TOKEN_IDS in C.PER_RESPONSE_COLUMNS  # screening subsets it with the responses
    names = [C.PROMPT, C.RESPONSES, C.RESPONSE_TOKEN_IDS, C.RESPONSE_TOKEN_UNIT, C.DCRM_MATRIX]
    for keep_matrices in (False, True):
        result = SimpleNamespace(
            candidates=SimpleNamespace(column_names=names),
            recipe=SimpleNamespace(output=SimpleNamespace(candidate_matrices=keep_matrices)),
        )
        kept, dropped = candidate_columns(result)
        assert kept == [C.PROMPT, C.RESPONSES] + ([C.DCRM_MATRIX] if keep_matrices else [])
        assert set(dropped) == {C.RESPONSE_TOKEN_IDS, C.RESPONSE_TOKEN_UNIT} | (
            set() if keep_matrices else {C.DCRM_MATRIX}
        )


def test_screening_removes_a_response_with_its_ids_and_reuse_survives(sampled, policy, monkeypatch):
    from hfpref.steps.screening import ScreenResponses

    row = sampled[0]
    longest = max(len(text) for text in row[C.RESPONSES])
    keep = [k for k, text in enumerate(row[C.RESPONSES]) if len(text) < longest]
    assert 1 <= len(keep) < 3  # the cap below removes some response of this row and keeps another
    screened = ScreenResponses(max_chars=longest - 1, stale_prompt="off").apply(sampled.select([0]))
    assert screened[C.RESPONSES][0] == [row[C.RESPONSES][k] for k in keep]
    assert screened[C.RESPONSE_TOKEN_IDS][0] == [row[C.RESPONSE_TOKEN_IDS][k] for k in keep]
    spy = TokenizeSpy(monkeypatch)
    out = PairMetrics(edit_distance_unit=policy)(screened.to_dict())
    assert spy.texts == []
    assert out[C.EDIT_DISTANCE_MATRIX][0] == expected_distances(screened[C.RESPONSE_TOKEN_IDS][0])


class LengthRewards(DeclaredColumns, Step):
    """rewards = the length of each response's text (a stand-in for a reward model)."""

    outputs = (C.REWARDS,)

    def process(self, batch, rank, indices):
        return {C.REWARDS: [[float(len(text)) for text in row] for row in batch[C.RESPONSES]]}


def test_a_recipe_hands_the_ids_on_and_releases_none_of_them(policy, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from hfpref.pipeline import recipe as R
    from hfpref.release.folder import MANIFEST_FILE
    from hfpref.release.writer import write_release

    monkeypatch.setitem(R.STEP_REGISTRY, "LengthRewards", f"{__name__}:LengthRewards")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    recipe = R.Recipe.from_dict(
        {
            "input": {"path": str(prompts)},
            "steps": [
                {"step": "ResponseSampler", "config": {"model": policy, "n": 3, "max_new_tokens": 8}},
                {"step": "LengthRewards"},
                {"step": "PairMetrics", "config": {"edit_distance_unit": policy}},
            ],
            "pairs": {"strategies": ["max_margin"]},
            "output": {"folder": str(tmp_path / "release"), "name": "reuse", "version": "0.0.1"},
        }
    )
    spy = TokenizeSpy(monkeypatch)
    result = recipe.run(cache_dir=tmp_path / "cache", progress=False)
    assert spy.texts == []  # the runner handed the sampler's ids to PairMetrics
    candidates = result.candidates
    for ids, matrix in zip(candidates[C.RESPONSE_TOKEN_IDS], candidates[C.EDIT_DISTANCE_MATRIX], strict=True):
        assert matrix == expected_distances(ids)
    assert not set(C.TOKEN_CACHE_COLUMNS) & set(result.pairs["max_margin"].column_names)
    folder = write_release(result)
    files = sorted((folder / "data").rglob("*.parquet"))
    assert files and all(not set(C.TOKEN_CACHE_COLUMNS) & set(pq.read_schema(f).names) for f in files)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert set(C.TOKEN_CACHE_COLUMNS) <= set(manifest["configs"]["candidates"]["dropped_columns"])


def test_the_continuous_backend_writes_ids_its_texts_decode_from(policy):
    tokenizer = AutoTokenizer.from_pretrained(policy)
    step = ResponseSampler(SamplerConfig(model=policy, n=2, max_new_tokens=8, backend="continuous"))
    rows = step.apply(datasets.Dataset.from_dict({"prompt": PROMPTS[:2]}), batch_size=2)
    assert rows[C.RESPONSE_TOKEN_UNIT] == [step.token_unit()] * 2
    for texts, ids in zip(rows[C.RESPONSES], rows[C.RESPONSE_TOKEN_IDS], strict=True):
        assert len(ids) == len(texts) == 2
        for text, row in zip(texts, ids, strict=True):
            assert 0 < len(row) <= 8 and tokenizer.decode(row) == text
