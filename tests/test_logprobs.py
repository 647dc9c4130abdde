"""LogProbAnnotator: TRL's reference log-probs, exactness of packing and batching, truncation, revisions."""

from __future__ import annotations

import pickle
import random
import shutil

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.core.step import MissingColumnError, RowError
from hfpref.models import attention
from hfpref.models import runner as hidden_state_runner
from hfpref.models.hub import content_hash, resolve_revision
from hfpref.models.loading import parse_dtype, select_device
from hfpref.models.packing import SequenceQuery, pack_segments, plan_padded_batches, split_group
from hfpref.steps.logprobs import LogProbAnnotator, LogProbConfig, ResponseLogProbs, tokenize_responses
from tests.helpers import assert_ref_logps_match_trl, trl_reference_rows

STANDARD_PAIRS = [
    {
        "prompt": "Write a short poem about the sea.",
        "chosen": " The sea is wide and blue.",
        "rejected": " No.",
    },
    {
        "prompt": "List the planets",
        "chosen": " of the solar system in order from the sun.",
        "rejected": " Explain why the sky is blue, in simple words.",
    },
    {
        "prompt": "Respond in JSON format",
        "chosen": ' {"name": "fox", "age": 3}',
        "rejected": " The lazy dog.",
    },
]
CONVERSATIONAL_PAIRS = [
    {
        "prompt": [{"role": "user", "content": "Write a short poem about the sea."}],
        "chosen": [{"role": "assistant", "content": "The sea is wide and blue."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
    {
        "prompt": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Respond with the keys name and age."},
        ],
        "chosen": [{"role": "assistant", "content": '{"name": "fox", "age": 3}'}],
        "rejected": [{"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}],
    },
]

# candidates rows with shared prompts, responses sharing their first words, an empty response
CANDIDATES = [
    {
        "prompt": "Write a short poem about the sea.",
        "responses": [
            " The sea is wide and blue.",
            " The sea is wide.",
            "",
            " Waves, waves, waves and more waves.",
        ],
    },
    {
        "prompt": [{"role": "user", "content": "Explain why the sky is blue, in simple words, for a child."}],
        "responses": ["Light scatters.", "Because of the air.", "Light scatters in the air, blue the most."],
    },
    {"prompt": "Answer in exactly three sentences.", "responses": [" One. Two. Three."]},
    {
        "prompt": [
            {"role": "system", "content": "Highlight at least two sections with markdown."},
            {"role": "user", "content": "List the planets."},
        ],
        "responses": ["*Mercury* and *Venus*", "*Mercury*, *Venus*, *Earth*, *Mars*", "Earth"],
    },
]


def _batch(rows: list[dict]) -> dict[str, list]:
    return {"prompt": [r["prompt"] for r in rows], "responses": [r["responses"] for r in rows]}


def _reference(model, tokenizer, prompt, response) -> tuple[float, int]:
    """One sequence alone, full logits and full-vocab log-softmax, tokenized as TRL does (written out here)."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]
    else:
        prompt_ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        conversation = [*prompt, {"role": "assistant", "content": response}]
        full = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full], device=model.device)).logits[0].float()
    logps = logits.log_softmax(-1)[len(prompt_ids) - 1 : -1]
    targets = torch.tensor(full[len(prompt_ids) :], device=model.device)
    return float(logps.gather(1, targets[:, None]).sum()), len(targets)


@pytest.fixture(scope="module")
def policy(tiny_models):
    path = str(tiny_models["policy"])
    return (
        path,
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(path),
    )


@pytest.fixture(scope="module")
def expected(policy):
    _, model, tokenizer = policy
    return [[_reference(model, tokenizer, row["prompt"], r) for r in row["responses"]] for row in CANDIDATES]


# ---- TRL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [STANDARD_PAIRS, CONVERSATIONAL_PAIRS], ids=["standard", "conversational"])
def test_ref_logps_equal_trl_dpo_trainer_precomputed(policy, pairs, tmp_path):
    path, model, tokenizer = policy
    trl_rows = trl_reference_rows(model, tokenizer, pairs, tmp_path)

    def text(completion):
        return completion if isinstance(completion, str) else completion[0]["content"]

    rows = [{"prompt": p["prompt"], "responses": [text(p["chosen"]), text(p["rejected"])]} for p in pairs]
    out = LogProbAnnotator(model=path, packing="tree", token_budget=64)(_batch(rows))
    assert_ref_logps_match_trl(pairs, out, trl_rows)


# ---- exactness of packing and batching ------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("packing", ["tree", "padded"])
@pytest.mark.parametrize("budget", [16, 48, 4096])
def test_equals_one_sequence_at_a_time(policy, expected, attn, packing, budget):
    path = policy[0]
    step = LogProbAnnotator(model=path, attn_implementation=attn, packing=packing, token_budget=budget)
    out = step(_batch(CANDIDATES))
    assert step.resources(None).scorer.runner.mode == packing
    for row, logps, counts, want in zip(
        CANDIDATES, out["ref_logps"], out["ref_token_counts"], expected, strict=True
    ):
        assert len(logps) == len(row["responses"])
        assert logps == pytest.approx([w[0] for w in want], abs=1e-4)
        assert counts == [w[1] for w in want]


def test_results_do_not_depend_on_input_order_or_row_batching(policy, expected):
    step = LogProbAnnotator(model=policy[0], token_budget=40)
    order = list(range(len(CANDIDATES)))
    random.Random(0).shuffle(order)
    shuffled = step(_batch([CANDIDATES[i] for i in order]))
    for position, i in enumerate(order):
        assert shuffled["ref_logps"][position] == pytest.approx([w[0] for w in expected[i]], abs=1e-4)
    for i, row in enumerate(CANDIDATES):  # each response alone, in its own call
        for k, response in enumerate(row["responses"]):
            alone = step(_batch([{"prompt": row["prompt"], "responses": [response]}]))
            assert alone["ref_logps"][0][0] == pytest.approx(expected[i][k][0], abs=1e-4)


def test_tree_packing_shares_the_prompt(policy):
    step = LogProbAnnotator(model=policy[0], packing="tree", token_budget=4096)
    step(_batch(CANDIDATES[:1]))
    stats = step.resources(None).scorer.runner.stats
    assert stats["forward_passes"] == 1
    assert stats["processed_tokens"] < stats["sequence_tokens"], "the shared prompt must be processed once"


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_bfloat16_model_sums_in_float32(tiny_models, packing):
    path = str(tiny_models["policy"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(select_device(None)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = LogProbAnnotator(model=path, dtype="bfloat16", packing=packing)(_batch(CANDIDATES))
    for row, logps in zip(CANDIDATES, out["ref_logps"], strict=True):
        want = [_reference(model, tokenizer, row["prompt"], r)[0] for r in row["responses"]]
        # a bf16 accumulator would be off by up to 0.25 at these magnitudes (bf16 spacing is 0.5 at 64..128)
        assert logps == pytest.approx(want, abs=2e-2)


def test_scorer_rejects_a_response_without_context(policy):
    scorer = ResponseLogProbs(policy[1], packing="padded")
    with pytest.raises(ValueError, match="response start 0"):
        scorer([[([5, 6, 7], 0)]])


def _varlen_from_cu_seqlens(q, k, v, layout, scale, *, end_aligned=True):
    """What a fused varlen kernel computes from ``cu_q``/``cu_k`` alone, written out with einsum."""
    cu_q, cu_k = layout.cu_q.tolist(), layout.cu_k.tolist()
    assert layout.max_q == max(b - a for a, b in zip(cu_q, cu_q[1:], strict=False))
    assert layout.max_k == max(b - a for a, b in zip(cu_k, cu_k[1:], strict=False))
    out = torch.empty_like(q)
    repeats = q.shape[1] // k.shape[1]
    for i in range(len(cu_q) - 1):
        qs = q[cu_q[i] : cu_q[i + 1]]
        ks = k[cu_k[i] : cu_k[i + 1]].repeat_interleave(repeats, 1)
        vs = v[cu_k[i] : cu_k[i + 1]].repeat_interleave(repeats, 1)
        n_q, n_k = len(qs), len(ks)
        allowed = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q if end_aligned else 0)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[cu_q[i] : cu_q[i + 1]] = torch.einsum("hqk,khd->qhd", weights, vs)
    return out


def test_fused_kernel_inputs_and_guard(policy, expected, monkeypatch):
    """The cu_seqlens layout a varlen kernel gets is right, and a kernel with the wrong causal alignment is refused."""
    monkeypatch.setitem(attention.KERNELS, "varlen_emulated", _varlen_from_cu_seqlens)
    monkeypatch.setitem(
        attention.KERNELS, "top_left_causal", lambda *a: _varlen_from_cu_seqlens(*a, end_aligned=False)
    )
    monkeypatch.setattr(
        hidden_state_runner,
        "candidate_kernels",
        lambda device, dtype: ["top_left_causal", "varlen_emulated", "sdpa_loop"],
    )
    _, model, tokenizer = policy
    scorer = ResponseLogProbs(model, packing="tree", token_budget=40)
    assert scorer.runner.kernel == "varlen_emulated"
    assert scorer.runner.kernel_check["top_left_causal"] > 0.1
    assert scorer.runner.kernel_check["varlen_emulated"] < 1e-5
    groups = [tokenize_responses(tokenizer, row["prompt"], row["responses"]) for row in CANDIDATES]
    for sums, want in zip(scorer(groups), expected, strict=True):
        assert sums == pytest.approx([w[0] for w in want], abs=1e-4)


# ---- output columns, truncation, errors -------------------------------------------------------------


def test_output_prefix_names_the_columns(policy, expected):
    step = LogProbAnnotator(model=policy[0], output_prefix="policy")
    assert step.output_columns() == ["policy_logps", "policy_token_counts"]
    out = step(_batch(CANDIDATES[:1]))
    assert set(out) == {"policy_logps", "policy_token_counts"}
    assert out["policy_logps"][0] == pytest.approx([w[0] for w in expected[0]], abs=1e-4)


def test_overlong_sequence_errors_by_default(policy):
    max_length = len(policy[2](CANDIDATES[0]["prompt"])["input_ids"]) + 2
    step = LogProbAnnotator(model=policy[0], max_length=max_length)
    with pytest.raises(
        RowError, match=rf"batch row 0 response 0 .*exceed max_length={max_length}.*'truncate'"
    ):
        step(_batch(CANDIDATES[:1]))


def test_truncation_keeps_the_start_and_counts_what_it_dropped(policy):
    path, model, tokenizer = policy
    row = CANDIDATES[0]
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    max_length = len(prompt_ids) + 3
    step = LogProbAnnotator(model=path, max_length=max_length, overflow="truncate")
    assert step.output_columns()[-1] == "ref_truncated_tokens"
    out = step(_batch([row]))
    for k, response in enumerate(row["responses"]):
        full = tokenizer(row["prompt"] + response + tokenizer.eos_token)["input_ids"]
        kept = full[:max_length]
        with torch.no_grad():
            logps = model(input_ids=torch.tensor([kept], device=model.device)).logits[0].log_softmax(-1)
        want = sum(float(logps[t - 1, kept[t]]) for t in range(len(prompt_ids), len(kept)))
        assert out["ref_logps"][0][k] == pytest.approx(want, abs=1e-4)
        assert out["ref_token_counts"][0][k] == len(kept) - len(prompt_ids)
        assert out["ref_truncated_tokens"][0][k] == len(full) - len(kept)
    assert max(out["ref_truncated_tokens"][0]) > 0 and min(out["ref_truncated_tokens"][0]) == 0


def test_prompt_longer_than_context_errors_even_when_truncating(policy):
    step = LogProbAnnotator(model=policy[0], max_length=4, overflow="truncate")
    with pytest.raises(RowError, match="the prompt alone fills it"):
        step(_batch(CANDIDATES[:1]))


def test_bad_rows_name_row_and_column(policy):
    step = LogProbAnnotator(model=policy[0])
    with pytest.raises(MissingColumnError, match="'responses'"):
        step({"prompt": ["hi"]})
    with pytest.raises(RowError, match=r"row 7: column 'prompt'.*got 42"):
        step({"prompt": ["ok", 42], "responses": [["a"], ["b"]]}, indices=[6, 7])
    with pytest.raises(RowError, match=r"batch row 0.*'responses'"):
        step({"prompt": ["ok"], "responses": ["not a list"]})
    with pytest.raises(ValueError, match="overflow"):
        LogProbConfig(model=policy[0], overflow="wrap")


def test_dataset_map_with_conversational_rows(policy, expected, tmp_path):
    dataset = datasets.Dataset.from_list([CANDIDATES[1], CANDIDATES[3]])
    step = LogProbAnnotator(model=policy[0])
    out = step.apply(dataset, batch_size=2)
    assert out["ref_logps"][0] == pytest.approx([w[0] for w in expected[1]], abs=1e-4)
    assert out["ref_logps"][1] == pytest.approx([w[0] for w in expected[3]], abs=1e-4)


# ---- revisions, fingerprints, pickling, helpers ------------------------------------------------------


def test_fingerprint_follows_weights_and_results_not_runtime_fields(tiny_models, tmp_path):
    copy = tmp_path / "policy-copy"
    shutil.copytree(tiny_models["policy"], copy)
    step = LogProbAnnotator(model=str(copy))
    assert step.resolved_revision() == content_hash(copy)
    assert (
        step.fingerprint()
        == LogProbAnnotator(model=str(copy), token_budget=7, device="cpu", compile=True).fingerprint()
    )
    assert step.fingerprint() != LogProbAnnotator(model=str(copy), dtype="bfloat16").fingerprint()
    before = step.fingerprint()
    model = AutoModelForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    model.save_pretrained(copy)
    assert LogProbAnnotator(model=str(copy)).fingerprint() != before


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_compiled_layers_give_the_eager_results(policy, expected, packing):
    step = LogProbAnnotator(model=policy[0], packing=packing, token_budget=48, compile=True)
    runner = step.resources(None).scorer.runner  # loads, compiles and checks the layers
    assert runner.compiled, runner.compile_error
    calls = []
    for layer in runner.backbone.layers:  # count calls that go through the compiled forward
        compiled = layer._compiled_call_impl

        def counted(*args, _compiled=compiled, **kwargs):
            calls.append(1)
            return _compiled(*args, **kwargs)

        layer._compiled_call_impl = counted
    out = step(_batch(CANDIDATES))
    assert len(calls) >= len(runner.backbone.layers)
    for logps, want in zip(out["ref_logps"], expected, strict=True):
        assert logps == pytest.approx([w[0] for w in want], abs=1e-4)


def test_failed_compile_falls_back_to_eager_with_a_warning(policy, expected, monkeypatch):
    def broken_compile(module, *args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("no C++ compiler here")

        module._compiled_call_impl = fails

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    model = AutoModelForCausalLM.from_pretrained(policy[0], dtype=torch.float32).eval()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler here"):
        scorer = ResponseLogProbs(model, compile=True)
    assert not scorer.runner.compiled and "RuntimeError" in scorer.runner.compile_error
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)
    row = CANDIDATES[0]
    tokenizer = policy[2]
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    full = tokenizer(row["prompt"] + row["responses"][0] + tokenizer.eos_token)["input_ids"]
    assert scorer([[(full, len(prompt_ids))]])[0][0] == pytest.approx(expected[0][0][0], abs=1e-4)


def test_pickle_drops_the_model(policy):
    step = LogProbAnnotator(model=policy[0])
    step(_batch(CANDIDATES[2:3]))
    clone = pickle.loads(pickle.dumps(step))
    assert clone._loaded == {} and clone.fingerprint() == step.fingerprint()


def test_hub_revision_offline_from_cache_refs(tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_revision("org/tiny", cache_dir=tmp_path) == commit
    assert resolve_revision("org/tiny", revision=commit.replace("0", "f")) == commit.replace("0", "f")
    with pytest.raises(
        ValueError, match=r"cannot resolve model 'org/other' at revision 'v1'.*HF_HUB_OFFLINE"
    ):
        resolve_revision("org/other", revision="v1", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="local folder"):
        resolve_revision(str(tmp_path), revision="main")


def test_device_and_dtype_helpers():
    assert select_device("cpu", rank=3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device(None, rank=1) == torch.device("cpu")
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="float8"):
        parse_dtype("float8")


def test_token_budget_planning():
    lengths = [5, 30, 12, 12, 7, 40]
    batches = plan_padded_batches(lengths, 40)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 40 for b in batches)
    shared = list(range(10))
    queries = [SequenceQuery(shared + [100 + k] * n, []) for k, n in enumerate([3, 20, 8, 1])]
    segments = split_group(0, queries, 32)
    assert sorted(i for s in segments for _, i in s.members) == [0, 1, 2, 3]
    assert all(s.cost <= 32 for s in segments) and all(s.prefix == 10 for s in segments if len(s.members) > 1)
    bins = pack_segments(segments, 32)
    assert all(sum(s.cost for s in b) <= 32 for b in bins)
    assert np.sum([len(s.members) for b in bins for s in b]) == 4


def test_importing_the_model_step_registers_no_attention():
    """The packed attention is registered with transformers when a runner first needs it, not on import."""
    import subprocess
    import sys

    probe = (
        "import sys, hfpref.models.step, hfpref.models.runner\n"
        "from transformers import AttentionInterface\n"
        "print('hfpref_packed' in AttentionInterface._global_mapping)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
    name = attention.register_packed_attention()
    from transformers import AttentionInterface

    assert name in AttentionInterface._global_mapping
