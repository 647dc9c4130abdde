"""RewardAnnotator: the reward model's own template, batched == one at a time, multi-objective heads."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
)

from hfpref.model_utils import content_hash, select_device
from hfpref.rewards import RewardAnnotator, SequenceScores, conversation_ids, pooled_position
from hfpref.transform import RowError

ROWS = [
    {
        "prompt": "Write a short poem about the sea.",
        "responses": ["The sea is wide and blue.", "The sea is wide.", "", "Waves, waves and more waves."],
    },
    {
        "prompt": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Respond with the keys name and age."},
        ],
        "responses": ['{"name": "fox", "age": 3}', "No.", "The quick brown fox jumps over the lazy dog."],
    },
    {"prompt": "List the planets.", "responses": ["Mercury, Venus, Earth, Mars."]},
]
OTHER_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}<eos>"
)


def _batch(rows: list[dict]) -> dict[str, list]:
    return {"prompt": [r["prompt"] for r in rows], "responses": [r["responses"] for r in rows]}


def _native_scores(path, rows, render) -> list[list[list[float]]]:
    """Each conversation alone through the model's own forward (its own pooling), rendered by ``render``."""
    device = select_device(None)  # where the annotator runs
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        return [
            [
                model(input_ids=torch.tensor([render(row["prompt"], response)], device=device))
                .logits[0]
                .tolist()
                for response in row["responses"]
            ]
            for row in rows
        ]


def _render_with_template(tokenizer):
    def render(prompt, response):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        rendered = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]

    return render


@pytest.fixture(scope="module")
def reward_path(tiny_models):
    return str(tiny_models["reward"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("packing", ["tree", "padded"])
@pytest.mark.parametrize("budget", [16, 4096])
def test_batched_equals_one_at_a_time(reward_path, attn, packing, budget):
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    want = _native_scores(reward_path, ROWS, _render_with_template(tokenizer))
    step = RewardAnnotator(model=reward_path, attn_implementation=attn, packing=packing, token_budget=budget)
    out = step(_batch(ROWS))
    assert step.resources(None).scorer.runner.mode == packing
    for rewards, native in zip(out["rewards"], want, strict=True):
        assert rewards == pytest.approx([n[0] for n in native], abs=1e-5)
    assert out["reward_source"] == [f"{reward_path}@{content_hash(reward_path)}"] * len(ROWS)
    assert step.output_columns() == ["rewards", "reward_source"]


def test_results_do_not_depend_on_input_order(reward_path):
    step = RewardAnnotator(model=reward_path, token_budget=32)
    forward = step(_batch(ROWS))["rewards"]
    backward = step(_batch(ROWS[::-1]))["rewards"][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_uses_the_reward_models_own_template(tiny_models, tmp_path):
    """An RM whose template differs from the policy's is scored on its own rendering, never the policy's."""
    rm = tmp_path / "rm-other-template"
    shutil.copytree(tiny_models["reward"], rm)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    tokenizer.chat_template = OTHER_TEMPLATE
    tokenizer.save_pretrained(rm)
    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    row = ROWS[1]
    ours = conversation_ids(tokenizer, row["prompt"], row["responses"][0])
    assert (
        ours
        == tokenizer(
            "system: Answer in JSON.\nuser: Respond with the keys name and age.\n"
            'assistant: {"name": "fox", "age": 3}\n<eos>'
        )["input_ids"]
    )
    assert ours != conversation_ids(policy_tokenizer, row["prompt"], row["responses"][0])
    want = _native_scores(str(rm), ROWS, _render_with_template(tokenizer))
    out = RewardAnnotator(model=str(rm))(_batch(ROWS))
    for rewards, native in zip(out["rewards"], want, strict=True):
        assert rewards == pytest.approx([n[0] for n in native], abs=1e-5)


def test_without_chat_template_scores_prompt_plus_response_text(tiny_models, tmp_path):
    rm = tmp_path / "rm-no-template"
    shutil.copytree(tiny_models["reward"], rm)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(rm)
    (rm / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    assert not tokenizer.chat_template
    rows = [ROWS[0], ROWS[2]]
    want = _native_scores(str(rm), rows, lambda p, r: tokenizer(p + r)["input_ids"])
    step = RewardAnnotator(model=str(rm))
    out = step(_batch(rows))
    for rewards, native in zip(out["rewards"], want, strict=True):
        assert rewards == pytest.approx([n[0] for n in native], abs=1e-5)
    with pytest.raises(RowError, match="row 4 response 0.*no chat template"):
        step(_batch([ROWS[1]]), indices=[4])


@pytest.fixture(scope="module")
def three_head_rm(tiny_models, tmp_path_factory):
    config = AutoConfig.from_pretrained(tiny_models["reward"])
    config.num_labels = 3
    torch.manual_seed(7)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm3") / "tiny-rm-3"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_models["reward"]).save_pretrained(path)
    return str(path)


def test_multi_objective_head(three_head_rm):
    tokenizer = AutoTokenizer.from_pretrained(three_head_rm)
    want = _native_scores(three_head_rm, ROWS, _render_with_template(tokenizer))
    with pytest.raises(ValueError, match="has 3 outputs; set reward_index or reward_weights"):
        RewardAnnotator(model=three_head_rm)(_batch(ROWS))
    by_index = RewardAnnotator(model=three_head_rm, reward_index=2)
    assert by_index.output_columns() == ["rewards", "reward_source", "reward_outputs"]
    out = by_index(_batch(ROWS))
    weights = [0.5, -1.0, 2.0]
    weighted = RewardAnnotator(model=three_head_rm, reward_weights=weights)(_batch(ROWS))
    for i, native in enumerate(want):
        assert [o for o in out["reward_outputs"][i]] == [pytest.approx(n, abs=1e-5) for n in native]
        assert out["rewards"][i] == pytest.approx([n[2] for n in native], abs=1e-5)
        assert weighted["rewards"][i] == pytest.approx(
            [sum(w * v for w, v in zip(weights, n, strict=True)) for n in native], abs=1e-5
        )
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 3 outputs"):
        RewardAnnotator(model=three_head_rm, reward_weights=[1.0, 1.0])(_batch(ROWS))


def test_models_without_a_linear_score_head_run_alone(reward_path):
    model = AutoModelForSequenceClassification.from_pretrained(reward_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    groups = [[conversation_ids(tokenizer, row["prompt"], r) for r in row["responses"]] for row in ROWS]
    packed = SequenceScores(model, packing="tree")(groups)
    alone = SequenceScores(model, packing="padded")
    alone.packed = False  # what a custom head (no `score` Linear) gets
    for a, b in zip(packed, alone(groups), strict=True):
        assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-5)


def test_pooled_position_follows_transformers():
    assert pooled_position([5, 6, 7], None) == 2
    assert pooled_position([5, 6, 2, 2], pad_token_id=2) == 1  # a trailing EOS that doubles as pad is skipped
    assert pooled_position([2, 2], pad_token_id=2) == 0


def test_truncation_is_counted(reward_path):
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    lengths = [len(conversation_ids(tokenizer, ROWS[0]["prompt"], r)) for r in ROWS[0]["responses"]]
    max_length = sorted(lengths)[1]
    with pytest.raises(RowError, match=rf"exceed max_length={max_length}"):
        RewardAnnotator(model=reward_path, max_length=max_length)(_batch(ROWS[:1]))
    out = RewardAnnotator(model=reward_path, max_length=max_length, overflow="truncate")(_batch(ROWS[:1]))
    assert out["reward_truncated_tokens"] == [[max(n - max_length, 0) for n in lengths]]
    render = _render_with_template(tokenizer)
    want = _native_scores(reward_path, ROWS[:1], lambda p, r: render(p, r)[:max_length])
    assert out["rewards"][0] == pytest.approx([n[0] for n in want[0]], abs=1e-5)
