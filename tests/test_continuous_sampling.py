"""ResponseSampler's continuous-batching backend: seeded noise, determinism per prompt, greedy, token ids."""

from __future__ import annotations

import random

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.core.errors import UserError
from hfpref.steps import continuous_sampling as cs
from hfpref.steps.sampling import ResponseSampler, SamplerConfig, plain_generation_config
from tests.helpers import SAMPLER_PROMPTS

PROMPTS = SAMPLER_PROMPTS


def sampler(policy: str, **overrides) -> ResponseSampler:
    config = {"n": 3, "max_new_tokens": 8, "backend": "continuous", **overrides}
    return ResponseSampler(SamplerConfig(model=policy, **config))


# ---- the noise, without a model ----------------------------------------------------------------------


def lowbias32(x: int) -> int:
    """Wellons' lowbias32 on plain Python ints: the reference for the tensor version."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_tensor_hash_matches_the_reference_on_the_whole_range():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + random.Random(0).sample(range(2**32), 2000)
    hashed = cs._hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert hashed == [lowbias32(v) for v in values]


def test_noise_rows_depend_only_on_their_key():
    keys = torch.tensor([5, -7, 5, 2**31 - 1, -(2**31)], dtype=torch.int32)
    noise = cs.uniform_noise(keys, 1000)
    assert noise.shape == (5, 1000) and noise.dtype == torch.float32
    assert noise.min() > 0 and noise.max() < 1
    assert torch.equal(noise[0], noise[2])  # same key, same row, wherever it sits in the batch
    assert torch.equal(cs.uniform_noise(keys[1:2], 1000)[0], noise[1])  # alone or with others
    assert torch.equal(cs.uniform_noise(keys, 1000, rows_per_chunk=2), noise)  # in any chunks
    assert not torch.equal(noise[0], noise[1])
    assert abs(noise.mean().item() - 0.5) < 0.01  # 5000 uniforms: standard error 0.004


def test_step_keys_are_int32_and_differ_by_seed_and_step():
    keys = {cs.step_key(seed, step) for seed in (0, 1, 2**62) for step in range(50)}
    assert len(keys) == 150
    assert all(-(2**31) <= key < 2**31 for key in keys)
    assert cs.step_key(3, 4) == cs.step_key(3, 4)
    assert cs.response_seed(1, 0) != cs.response_seed(1, 1) != cs.response_seed(2, 1)


def test_argmax_of_noisy_scores_samples_the_tempered_softmax_within_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    rows = 20000
    keys = torch.tensor([cs.step_key(9, step) for step in range(rows)], dtype=torch.int32)
    for temperature, top_p, expected in (
        (1.0, 1.0, [0.5, 0.3, 0.15, 0.05]),
        # temperature 2: softmax(log p / 2) ~ sqrt(p), normalised
        (2.0, 1.0, [p**0.5 / sum(q**0.5 for q in (0.5, 0.3, 0.15, 0.05)) for p in (0.5, 0.3, 0.15, 0.05)]),
        # top-p 0.7 keeps 0.5 and 0.3 (cumulative 0.8 >= 0.7), renormalised
        (1.0, 0.7, [0.625, 0.375, 0.0, 0.0]),
    ):
        scores = cs.gumbel_scores(logits.expand(rows, 4).clone(), keys, temperature, top_p)
        counts = torch.bincount(scores.argmax(dim=1), minlength=4) / rows
        assert counts.tolist() == pytest.approx(expected, abs=0.012)  # 4 standard errors at most
    assert counts[2:].sum() == 0  # outside the nucleus: never


def test_processor_keys_each_row_by_its_seed_and_token_index():
    from transformers.generation.continuous_batching.requests import FutureRequestState, RequestState

    fresh = RequestState("a", initial_tokens=[5] * 7, logit_processor_kwargs={cs.SEED_KWARG: 11})
    fresh.position_offset = 7  # the prompt is in the cache: the first new token comes next
    # a request soft-reset after 3 tokens: they moved into its prompt, the original length is kept apart
    reset = RequestState("b", initial_tokens=[5] * 10, _true_initial_tokens=7)
    reset.logit_processor_kwargs[cs.SEED_KWARG] = 12
    reset.position_offset = 12
    warmup = RequestState("c", initial_tokens=[0] * 4)  # transformers' warm-up requests carry no seed
    warmup.position_offset = 4
    futures = [FutureRequestState(state, True, {}, 1) for state in (fresh, reset, warmup)]
    keys = cs._processor_class()(1.0, 1.0).prepare_tensor_args(futures)
    assert keys.dtype == torch.int32
    assert keys.tolist() == [cs.step_key(11, 0), cs.step_key(12, 5), cs.step_key(0, 0)]


def test_unsupported_transformers_versions_are_user_errors(policy, monkeypatch):
    cs.check_transformers_version("5.24.0")
    for version in ("4.56.0", "5.23.1", "5.25.0", "6.0.0"):
        with pytest.raises(UserError, match="transformers >=5.24,<5.25"):
            cs.check_transformers_version(version)
    monkeypatch.setattr(transformers, "__version__", "4.57.0")
    with pytest.raises(UserError, match="backend 'transformers'"):
        sampler(policy)({"prompt": PROMPTS[:1]})


def test_config_and_fingerprint(policy):
    with pytest.raises(ValueError, match="continuous"):
        SamplerConfig(model=policy, backend="continous")
    step = sampler(policy)
    assert step.describe()["backend"] == "continuous"
    assert step.fingerprint() != sampler(policy, backend="transformers").fingerprint()
    assert step.fingerprint() == sampler(policy, token_budget=256).fingerprint()  # runtime: samples alike


# ---- sampling with the tiny model (each call starts a manager: about a second on a CPU) ---------------


def test_responses_depend_only_on_prompt_j_seed_and_model(policy):
    reference = sampler(policy)({"prompt": PROMPTS})["responses"]
    assert [len(row) for row in reference] == [3] * len(PROMPTS)
    assert all(len(set(row)) > 1 for row in reference)  # temperature 1: not copies
    # a fresh step, the prompts reversed, n = 2 (response j's seed does not depend on n) and a cache too
    # small for all requests at once (one page: they run a few at a time)
    other = sampler(policy, n=2, token_budget=256)({"prompt": PROMPTS[::-1]})["responses"][::-1]
    assert other == [row[:2] for row in reference]
    assert sampler(policy)({"prompt": PROMPTS[2:3]})["responses"] == reference[2:3]  # alone


def test_samples_equal_a_one_request_reference_loop(policy):
    """Inside the manager, response j of a prompt is the plain loop: argmax(gumbel_scores) token by token."""
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    step = sampler(policy, n=2, temperature=0.7, top_p=0.9, max_new_tokens=6)
    token_ids = [tokenizer(p)["input_ids"] for p in (PROMPTS[0], PROMPTS[3])]
    samples = cs.generate_continuous(model, tokenizer, step.config, token_ids, [3, 4])
    for ids, prompt_seed, sample in zip(token_ids, [3, 4], samples, strict=True):
        for j in range(2):
            seed, new = cs.response_seed(prompt_seed, j), []
            with torch.inference_mode():
                for t in range(6):
                    logits = model(torch.tensor([ids + new])).logits[:, -1].float()
                    keys = torch.tensor([cs.step_key(seed, t)], dtype=torch.int32)
                    token = cs.gumbel_scores(logits, keys, 0.7, 0.9).argmax().item()
                    if token == tokenizer.eos_token_id:
                        break
                    new.append(token)
            assert sample.token_ids[j] == new


def greedy_reference(model, tokenizer, ids: list[int], eos: int) -> list[int]:
    """Plain greedy ``generate`` on one prompt (no padding, no batch): its new tokens without the final EOS."""
    config = plain_generation_config(model, tokenizer, eos, 12)
    with torch.inference_mode():
        output = model.generate(torch.tensor([ids]), generation_config=config)
    new = output[0, len(ids) :].tolist()
    return new[:-1] if new[-1] == eos else new


def test_temperature_zero_is_greedy_and_token_ids_exclude_eos(policy):
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    step = sampler(policy, temperature=0, max_new_tokens=12, n=2)
    batch = {"prompt": PROMPTS}
    token_ids = [step.prompt_token_ids(tokenizer, p, batch, i, None) for i, p in enumerate(PROMPTS)]
    # the random model never picks the real EOS: make the 4th greedy token of prompt 0 the EOS instead, so
    # at least that response ends early and its EOS must be cut
    eos = greedy_reference(model, tokenizer, token_ids[0], tokenizer.eos_token_id)[3]
    model.generation_config.eos_token_id = eos
    expected = [greedy_reference(model, tokenizer, ids, eos) for ids in token_ids]
    assert len(expected[0]) == 3
    samples = cs.generate_continuous(model, tokenizer, step.config, token_ids, [0] * len(PROMPTS))
    assert [sample.token_ids for sample in samples] == [[ids, ids] for ids in expected]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert [sample.texts for sample in samples] == [[text, text] for text in texts]
    assert cs.generate_continuous(model, tokenizer, step.config, [], []) == []
