"""One prompt context for sampling and scoring: what is sampled through a chat template is scored in it.

Checked against TRL 1.16's DPOTrainer (precomputed reference log-probs of the conversational pair), the
recipe's preflight (a scorer without a chat template after a templated sampler), and the manifest (the
template's sha256).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.core.step import RowError
from hfpref.pipeline.recipe import Recipe, step_class
from hfpref.release import build_manifest
from hfpref.steps.chat_prompts import (
    MESSAGES,
    TEXT,
    ChatPrompts,
    PromptFormError,
    check_prompt_forms,
    prompt_form_of_feature,
)
from hfpref.steps.logprobs import LogProbAnnotator
from hfpref.steps.sampling import ResponseSampler
from tests.helpers import assert_ref_logps_match_trl, trl_reference_rows
from tests.tiny_models import CHAT_TEMPLATE

PROMPTS = ["Write a short poem about the sea.", "List the planets.", "Explain why the sky is blue."]
TEMPLATE_SHA256 = hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()  # independent of hfpref's helper


@pytest.fixture(scope="module")
def bare_policy(tiny_models, tmp_path_factory) -> str:
    """The tiny policy without its chat template (same weights and vocabulary)."""
    return _without_template(
        tiny_models["policy"], tmp_path_factory.mktemp("bare") / "tiny-llama-no-template"
    )


def _without_template(model, folder) -> str:
    """A copy of ``model`` in ``folder`` without its chat template file (same weights and vocabulary)."""
    shutil.copytree(model, folder)
    (folder / "chat_template.jinja").unlink()
    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    return str(folder)


@pytest.fixture(scope="module")
def sampled(policy) -> dict[str, list]:
    sampler = ResponseSampler(model=policy, n=2, max_new_tokens=10, seed=3)
    return sampler({"prompt": PROMPTS})


def test_sampled_response_is_scored_in_the_conversation_it_was_sampled_in(policy, sampled, tmp_path):
    # the sampler formatted the string prompts with the chat template, and says so in the data
    assert sampled["prompt"] == [[{"role": "user", "content": p}] for p in PROMPTS]
    out = LogProbAnnotator(model=policy)({"prompt": sampled["prompt"], "responses": sampled["responses"]})

    pairs = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": responses[0]}],
            "rejected": [{"role": "assistant", "content": responses[1]}],
        }
        for prompt, responses in zip(sampled["prompt"], sampled["responses"], strict=True)
    ]
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    trl_rows = trl_reference_rows(model, AutoTokenizer.from_pretrained(policy), pairs, tmp_path)
    assert len(trl_rows) == len(PROMPTS)
    assert_ref_logps_match_trl(pairs, out, trl_rows)

    # the old behaviour, scoring the raw string, is another context and gives other numbers
    raw = LogProbAnnotator(model=policy)({"prompt": PROMPTS, "responses": sampled["responses"]})
    gaps = [
        abs(a - b)
        for row_a, row_b in zip(raw["ref_logps"], out["ref_logps"], strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    ]
    assert max(gaps) > 1e-2


def test_without_a_chat_template_text_stays_text(bare_policy):
    sampler = ResponseSampler(model=bare_policy, n=2, max_new_tokens=4)
    out = sampler({"prompt": PROMPTS})
    assert out["prompt"] == PROMPTS
    assert sampler.describe()["chat_template_sha256"] is None
    assert sampler.prompt_form_after(TEXT) == TEXT
    with pytest.raises(PromptFormError, match="no chat template"):
        sampler.prompt_form_after(MESSAGES)


def test_describe_records_the_chat_template(policy, bare_policy):
    assert ResponseSampler(model=policy).describe()["chat_template_sha256"] == TEMPLATE_SHA256
    assert LogProbAnnotator(model=policy).describe()["chat_template_sha256"] == TEMPLATE_SHA256
    assert LogProbAnnotator(model=bare_policy).describe()["chat_template_sha256"] is None
    # the template is part of what a step computes: it is in the fingerprint
    assert ResponseSampler(model=policy).fingerprint() != ResponseSampler(model=bare_policy).fingerprint()


def test_scoring_messages_without_a_chat_template_fails_with_the_fix(bare_policy):
    step = LogProbAnnotator(model=bare_policy)
    with pytest.raises(PromptFormError, match=r"row 4.*chat messages.*no chat template.*score with a model"):
        step({"prompt": [[{"role": "user", "content": "hi"}]], "responses": [["a"]]}, indices=[4])
    # text prompts are fine under a model without a template
    assert len(step({"prompt": ["hi"], "responses": [["a", "b"]]})["ref_logps"][0]) == 2


def test_prompt_forms_walk_the_steps(policy, bare_policy):
    sampler, bare_sampler = ResponseSampler(model=policy), ResponseSampler(model=bare_policy)
    scorer, bare_scorer = LogProbAnnotator(model=policy), LogProbAnnotator(model=bare_policy)
    wheres = ["a", "b", "c"]
    assert check_prompt_forms([sampler, scorer], wheres[:2], TEXT) == MESSAGES
    assert check_prompt_forms([bare_sampler, bare_scorer], wheres[:2], TEXT) == TEXT
    with pytest.raises(PromptFormError, match="^b: .*no chat template"):
        check_prompt_forms([sampler, bare_scorer], wheres[:2], TEXT)
    with pytest.raises(PromptFormError, match="^b: .*no chat template"):
        check_prompt_forms([ChatPrompts(), bare_sampler], wheres[:2], TEXT)
    # unknown input form: nothing to check until a step says what the prompts are
    assert check_prompt_forms([bare_scorer], wheres[:1], None) is None
    assert prompt_form_of_feature(datasets.Value("string")) == TEXT
    messages = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "x"}]]}).features["prompt"]
    assert prompt_form_of_feature(messages) == MESSAGES


def test_chat_prompts_is_a_registered_step():
    assert step_class("ChatPrompts") is ChatPrompts
    rows = datasets.Dataset.from_dict({"prompt": ["a", "b"]})
    out = ChatPrompts().apply(rows)
    assert out["prompt"] == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    assert ChatPrompts(role="system")({"prompt": ["s"]})["prompt"] == [[{"role": "system", "content": "s"}]]
    with pytest.raises(RowError, match="batch row 1.*'prompt'.*42"):
        ChatPrompts()({"prompt": ["ok", 42]})


# ---- recipes --------------------------------------------------------------------------------------


def _recipe(tmp_path, steps: list[dict]) -> Recipe:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return Recipe.from_dict(
        {
            "input": {"path": str(prompts)},
            "steps": steps,
            "pairs": {"strategies": ["best_of_n2"], "config": {"seed": 0}},
            "output": {"folder": str(tmp_path / "release"), "name": "context-test", "version": "0.0.1"},
        }
    )


def test_recipe_sampling_with_a_template_and_scoring_without_fails_before_sampling(
    policy, bare_policy, tmp_path, monkeypatch
):
    _assert_refused_before_sampling("LogProbAnnotator", bare_policy, policy, tmp_path, monkeypatch)


def _assert_refused_before_sampling(scorer: str, bare_model: str, policy: str, tmp_path, monkeypatch) -> None:
    """A recipe sampling through the policy's template, then scoring with ``scorer`` on a model without one,
    fails in preflight, naming the scorer, before any response is sampled."""

    def no_sampling(self, rank):
        raise AssertionError(f"the recipe sampled before finding that {scorer} cannot take the prompts")

    monkeypatch.setattr(ResponseSampler, "load", no_sampling)
    recipe = _recipe(
        tmp_path,
        [
            {"step": "ResponseSampler", "config": {"model": policy, "n": 2, "max_new_tokens": 4}},
            {"step": scorer, "config": {"model": bare_model}},
        ],
    )
    with pytest.raises(PromptFormError, match=rf"steps\[1\] \({scorer}\): .*no chat template"):
        recipe.run(cache_dir=tmp_path / "cache", progress=False)


@pytest.fixture(scope="module")
def bare_reward(tiny_models, tmp_path_factory) -> str:
    """The tiny reward model without its chat template (same weights and vocabulary)."""
    return _without_template(
        tiny_models["reward"], tmp_path_factory.mktemp("bare-rm") / "tiny-llama-rm-no-template"
    )


def test_a_reward_model_without_a_template_is_refused_messages_before_sampling(
    tiny_models, policy, bare_reward, tmp_path, monkeypatch
):
    from hfpref.steps.rewards import RewardAnnotator

    bare, templated = RewardAnnotator(model=bare_reward), RewardAnnotator(model=str(tiny_models["reward"]))
    assert bare.prompt_form_after(TEXT) == TEXT and bare.prompt_form_after(None) is None
    assert templated.prompt_form_after(MESSAGES) == MESSAGES
    with pytest.raises(PromptFormError, match=r"reward model .*no chat template"):
        bare.prompt_form_after(MESSAGES)
    _assert_refused_before_sampling("RewardAnnotator", bare_reward, policy, tmp_path, monkeypatch)


def test_recipe_release_records_the_template_and_keeps_pairs_conversational(tiny_models, policy, tmp_path):
    recipe = _recipe(
        tmp_path,
        [
            {"step": "ResponseSampler", "config": {"model": policy, "n": 2, "max_new_tokens": 6}},
            {"step": "LogProbAnnotator", "config": {"model": policy}},
            {"step": "RewardAnnotator", "config": {"model": str(tiny_models["reward"])}},
            {"step": "PairMetrics", "config": {"edit_distance_unit": "words"}},
        ],
    )
    result = recipe.run(cache_dir=tmp_path / "cache", progress=False)
    candidates = result.candidates
    assert candidates["prompt"] == [[{"role": "user", "content": p}] for p in PROMPTS]
    # the candidates' log-probs are those of the conversation (as a direct call on it computes them)
    direct = LogProbAnnotator(model=policy)(
        {"prompt": candidates["prompt"], "responses": candidates["responses"]}
    )
    for got, want in zip(candidates["ref_logps"], direct["ref_logps"], strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    pairs = result.pairs["best_of_n2"]
    assert all(isinstance(row["chosen"], list) and row["chosen"][0]["role"] == "assistant" for row in pairs)

    manifest = build_manifest(result, version="0.0.1")
    by_step = {s["step"].rsplit(".", 1)[1]: s for s in manifest["steps"]}
    assert by_step["ResponseSampler"]["chat_template_sha256"] == TEMPLATE_SHA256
    assert by_step["LogProbAnnotator"]["chat_template_sha256"] == TEMPLATE_SHA256
    assert manifest["edit_distance_unit"] == "word"
