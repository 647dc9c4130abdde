"""ResponseSampler: shapes, seeded determinism independent of batching, chat template, greedy decoding."""

from __future__ import annotations

import pickle
import shutil

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.core.step import MissingColumnError, RowError
from hfpref.steps.sampling import (
    ResponseSampler,
    SamplerConfig,
    gumbel_noise_processor,
    length_groups,
    prompt_seed,
)
from tests.helpers import SAMPLER_PROMPTS
from tests.tiny_models import build_tiny_models

PROMPTS = SAMPLER_PROMPTS


def sampler(policy: str, **overrides) -> ResponseSampler:
    return ResponseSampler(SamplerConfig(model=policy, **{"n": 3, "max_new_tokens": 8, **overrides}))


def test_shapes_and_generator_names(policy):
    out = sampler(policy)({"prompt": PROMPTS})
    # the tiny policy has a chat template: prompts come back as the conversation they were sampled in
    assert set(out) == {"prompt", "responses", "generators", "response_token_ids", "response_token_unit"}
    assert out["prompt"] == [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in PROMPTS]
    assert [len(r) for r in out["responses"]] == [3] * len(PROMPTS)
    assert all(isinstance(text, str) for row in out["responses"] for text in row)
    assert out["generators"] == [[policy] * 3] * len(PROMPTS)
    # temperature 1 over a random tiny model: the 3 samples of a prompt are not copies of each other
    assert all(len(set(row)) > 1 for row in out["responses"])
    named = sampler(policy, n=2, generator_name="tiny")({"prompt": PROMPTS[:1]})
    assert named["generators"] == [["tiny", "tiny"]]


def test_seeded_samples_do_not_depend_on_batching_or_order(policy):
    step = sampler(policy)
    reference = step({"prompt": PROMPTS})["responses"]
    # a second run with a fresh step, one prompt at a time, reversed order, one prompt per generate call
    assert sampler(policy)({"prompt": PROMPTS})["responses"] == reference
    assert [step({"prompt": [p]})["responses"][0] for p in PROMPTS] == reference
    assert step({"prompt": PROMPTS[::-1]})["responses"][::-1] == reference
    assert sampler(policy, token_budget=1)({"prompt": PROMPTS})["responses"] == reference
    # through Dataset.map with different map batch sizes
    rows = datasets.Dataset.from_dict({"prompt": PROMPTS[:2] + PROMPTS[3:]})
    for batch_size in (1, 3):
        assert step.apply(rows, batch_size=batch_size)["responses"] == reference[:2] + reference[3:]
    # the seed matters
    assert sampler(policy, seed=1)({"prompt": PROMPTS})["responses"] != reference


def test_same_weights_anywhere_sample_alike_other_weights_independently(policy, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(policy, copy)
    assert (
        sampler(str(copy))({"prompt": PROMPTS})["responses"]
        == sampler(policy)({"prompt": PROMPTS})["responses"]
    )
    # another model's noise comes from another stream: its samples are not coupled to this model's
    assert prompt_seed(0, sampler(str(copy)).resolved_revision(), "p") == prompt_seed(
        0, sampler(policy).resolved_revision(), "p"
    )
    other = build_tiny_models(tmp_path / "other", seed=5)["policy"]
    assert prompt_seed(0, sampler(str(other)).resolved_revision(), "p") != prompt_seed(
        0, sampler(policy).resolved_revision(), "p"
    )


def test_prompt_seed_is_stable_and_specific_to_seed_model_and_prompt():
    assert prompt_seed(0, "m", "a") == prompt_seed(0, "m", "a")
    seeds = {
        prompt_seed(0, "m", "a"),
        prompt_seed(1, "m", "a"),
        prompt_seed(0, "m", "b"),
        prompt_seed(0, "m2", "a"),
    }
    assert len(seeds) == 4
    assert 0 <= prompt_seed(123, "m", PROMPTS[2]) < 2**63


def test_chat_template_is_applied(policy, tmp_path):
    step = sampler(policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    batch = {"prompt": PROMPTS}
    ids = step.prompt_token_ids(tokenizer, PROMPTS[0], batch, 0, None)
    assert tokenizer.decode(ids) == f"<|user|>{PROMPTS[0]}<|end|><|assistant|>"
    ids = step.prompt_token_ids(tokenizer, PROMPTS[2], batch, 2, None)
    assert (
        tokenizer.decode(ids)
        == f"<|system|>Be brief.<|end|><|user|>{PROMPTS[2][1]['content']}<|end|><|assistant|>"
    )
    # without a chat template a string prompt is tokenized as it is; a message list is an error
    plain = tmp_path / "no-template"
    shutil.copytree(policy, plain)
    (plain / "chat_template.jinja").unlink()
    bare = AutoTokenizer.from_pretrained(plain)
    assert bare.chat_template is None
    assert step.prompt_token_ids(bare, PROMPTS[0], batch, 0, None) == bare(PROMPTS[0])["input_ids"]
    with pytest.raises(RowError, match="batch row 2.*no chat template"):
        step.prompt_token_ids(bare, PROMPTS[2], batch, 2, None)


def test_greedy_equals_manual_generate(policy):
    out = sampler(policy, n=2, temperature=0.0, max_new_tokens=12)({"prompt": PROMPTS})
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    for prompt, responses in zip(PROMPTS, out["responses"], strict=True):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")[
            "input_ids"
        ]
        with torch.inference_mode():
            generated = model.generate(ids, do_sample=False, max_new_tokens=12)
        expected = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
        assert responses == [expected, expected]


def test_gumbel_noise_samples_the_softmax_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 20000
    scores = probs.log().repeat(rows, 1)
    processor = gumbel_noise_processor([torch.Generator().manual_seed(7)], n=rows)
    picks = processor(None, scores).argmax(dim=-1)
    frequencies = torch.bincount(picks, minlength=4).double() / rows
    # binomial standard deviation is at most sqrt(0.25 / 20000) = 0.0035; 0.015 is over 4 of them
    assert torch.allclose(frequencies, probs.double(), atol=0.015)


def test_top_p_is_applied_before_the_noise(policy):
    greedy = sampler(policy, temperature=0.0, n=1, max_new_tokens=8)({"prompt": PROMPTS})["responses"]
    # top_p this small keeps only the most likely token, so sampling collapses to greedy decoding
    nucleus = sampler(policy, temperature=1.0, top_p=1e-6, n=2, max_new_tokens=8)({"prompt": PROMPTS})
    assert nucleus["responses"] == [[g[0], g[0]] for g in greedy]


def test_bad_input_names_column_and_row(policy):
    step = sampler(policy)
    with pytest.raises(MissingColumnError, match="prompt"):
        step({"question": ["hi"]})
    with pytest.raises(RowError, match="row 5 key=7.*'prompt'.*42"):
        step({"prompt": [42], "key": [7]}, indices=[5])
    with pytest.raises(RowError, match="empty string"):
        step({"prompt": [""]})
    with pytest.raises(ValueError, match="backend"):
        SamplerConfig(model=policy, backend="tgi")


def test_length_groups_respect_the_token_budget():
    token_ids = [[0] * length for length in (5, 1, 9, 3, 7)]
    groups = length_groups(token_ids, n=2, max_new_tokens=10, token_budget=80)
    assert sorted(k for g in groups for k in g) == list(range(5))
    flat = [len(token_ids[k]) for g in groups for k in g]
    assert flat == sorted(flat)  # grouped by length
    for group in groups:
        cost = 2 * len(group) * (max(len(token_ids[k]) for k in group) + 10)
        assert cost <= 80 or len(group) == 1
    # lengths 1, 3: 2*2*(3+10) = 52; adding 5: 2*3*15 = 90 > 80; 5, 7: 2*2*17 = 68; adding 9: 2*3*19 = 114
    assert groups == [[1, 3], [0, 4], [2]]


def test_pickling_drops_the_model_and_fingerprint_tracks_config(policy):
    step = sampler(policy)
    step({"prompt": PROMPTS[:1]})
    assert step._loaded
    assert pickle.loads(pickle.dumps(step))._loaded == {}
    assert step.fingerprint() == sampler(policy).fingerprint()
    assert step.fingerprint() != sampler(policy, seed=1).fingerprint()
    assert step.describe()["revision"].startswith("sha256:")
    assert step.describe()["backend"] == "transformers"


def test_prompt_comes_back_in_the_form_it_was_sampled_in(policy, tmp_path):
    step = sampler(policy)
    as_text = step({"prompt": PROMPTS[:2]})
    as_messages = step({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS[:2]]})
    # one context, one form: the string was sampled as that user message, with the same seed and samples
    assert (
        as_text["prompt"] == as_messages["prompt"] == [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    )
    assert as_text["responses"] == as_messages["responses"]
    # through Dataset.map the column's type changes from string to messages
    mapped = step.apply(datasets.Dataset.from_dict({"prompt": PROMPTS[:2]}))
    assert mapped["prompt"] == as_text["prompt"] and mapped["responses"] == as_text["responses"]
    # without a chat template the string is sampled, and stays, as text
    plain = tmp_path / "no-template"
    shutil.copytree(policy, plain)
    (plain / "chat_template.jinja").unlink()
    assert sampler(str(plain))({"prompt": PROMPTS[:2]})["prompt"] == PROMPTS[:2]
