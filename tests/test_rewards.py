"""RewardAnnotator: the reward model's own template, batched == one at a time, multi-objective heads."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
)

from hfpref.core.errors import UserError
from hfpref.core.step import RowError
from hfpref.models.hub import content_hash
from hfpref.models.loading import select_device
from hfpref.steps.reward_heads import CustomHeadScores, SequenceScores, pooled_position
from hfpref.steps.rewards import RewardAnnotator, RewardModelError, conversation_ids

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
    _assert_first_head(out["rewards"], want)
    assert out["reward_source"] == [f"{reward_path}@{content_hash(reward_path)}"] * len(ROWS)
    assert step.output_columns() == ["rewards", "reward_source"]


def test_results_do_not_depend_on_input_order(reward_path):
    step = RewardAnnotator(model=reward_path, token_budget=32)
    forward = step(_batch(ROWS))["rewards"]
    backward = step(_batch(ROWS[::-1]))["rewards"][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def _copy_with_template(model, folder, template: str | None):
    """Copy ``model`` to ``folder`` with ``template`` as its chat template (None: none, no template file);
    returns the copy's tokenizer, read back from the folder."""
    shutil.copytree(model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    if template is None:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    return AutoTokenizer.from_pretrained(folder)


def _assert_first_head(rewards: list[list[float]], native: list[list[list[float]]]) -> None:
    """The annotator's rewards equal the native model's first output, response by response."""
    for row_rewards, row_native in zip(rewards, native, strict=True):
        assert row_rewards == pytest.approx([n[0] for n in row_native], abs=1e-5)


def test_uses_the_reward_models_own_template(tiny_models, tmp_path):
    """An RM whose template differs from the policy's is scored on its own rendering, never the policy's."""
    rm = tmp_path / "rm-other-template"
    tokenizer = _copy_with_template(tiny_models["reward"], rm, OTHER_TEMPLATE)
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
    _assert_first_head(out["rewards"], want)


def test_without_chat_template_scores_prompt_plus_response_text(tiny_models, tmp_path):
    rm = tmp_path / "rm-no-template"
    tokenizer = _copy_with_template(tiny_models["reward"], rm, None)
    assert not tokenizer.chat_template
    rows = [ROWS[0], ROWS[2]]
    want = _native_scores(str(rm), rows, lambda p, r: tokenizer(p + r)["input_ids"])
    step = RewardAnnotator(model=str(rm))
    _assert_first_head(step(_batch(rows))["rewards"], want)
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
    kept = RewardAnnotator(model=three_head_rm, reward_index=0, objectives=True)(_batch(ROWS))
    assert kept["reward_objectives"] == out["reward_outputs"]  # a k-label head's objectives are its outputs


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


# ---- custom-code reward models (ArmoRM's shape) ---------------------------------------------------


def _own_forward(path, rows, render) -> list[list[object]]:
    """Each conversation alone through the custom model's own forward, as its model card shows."""
    device = select_device(None)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=True, dtype=torch.float32
    )
    model = model.to(device).eval()
    with torch.no_grad():
        return [
            [
                model(input_ids=torch.tensor([render(row["prompt"], r)], device=device))
                for r in row["responses"]
            ]
            for row in rows
        ]


@pytest.mark.parametrize("budget", [1, 64, 4096])
def test_custom_head_scores_equal_its_own_forward(custom_reward_models, budget):
    path = str(custom_reward_models["armo"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    want = _own_forward(path, ROWS, _render_with_template(tokenizer))
    step = RewardAnnotator(model=path, trust_remote_code=True, objectives=True, token_budget=budget)
    assert step.output_columns() == ["rewards", "reward_source", "reward_objectives"]
    out = step(_batch(ROWS))
    scorer = step.resources(None).scorer
    assert isinstance(scorer, CustomHeadScores) and scorer.padded  # right-padded batches agreed with alone
    for i, native in enumerate(want):
        assert out["rewards"][i] == pytest.approx([o.score[0].item() for o in native], abs=1e-5)
        for got, o in zip(out["reward_objectives"][i], native, strict=True):
            assert len(got) == 5 and got == pytest.approx(o.rewards[0].tolist(), abs=1e-5)
            # the score is the gated sum of the transformed objectives, not any one of them
            transformed = o.rewards[0] @ scorer.model.reward_transform_matrix.cpu()
            assert o.score[0].item() == pytest.approx(
                (o.gating_output[0] * transformed).sum().item(), abs=1e-5
            )
    assert out["reward_source"] == [f"{path}@{content_hash(path)}"] * len(ROWS)


def test_a_head_that_misreads_padding_runs_alone(custom_reward_models):
    path = str(custom_reward_models["last-token"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    want = _own_forward(path, ROWS, _render_with_template(tokenizer))
    step = RewardAnnotator(model=path, trust_remote_code=True)
    with pytest.warns(UserWarning, match="reads padded batches differently.*runs alone"):
        out = step(_batch(ROWS))
    assert not step.resources(None).scorer.padded
    for i, native in enumerate(want):
        assert out["rewards"][i] == pytest.approx([o.score[0].item() for o in native], abs=1e-5)


def test_custom_head_batches_are_padded_length_sorted(custom_reward_models):
    path = str(custom_reward_models["armo"])
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    scorer = CustomHeadScores(model, token_budget=40)
    flat = [(0, k, [1] * n) for k, n in enumerate([5, 12, 7, 30, 9])]
    widths = [[len(t) for _, _, t in batch] for batch in scorer._batches(flat)]
    assert widths == [[30], [12, 9, 7], [5]]  # longest first; 12*3 = 36 <= 40 slots, a 4th would be 48


def test_custom_head_selection_over_objectives(custom_reward_models):
    path = str(custom_reward_models["armo"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    want = _own_forward(path, ROWS, _render_with_template(tokenizer))
    weights = [0.5, -1.0, 0.0, 2.0, 1.0]
    by_index = RewardAnnotator(model=path, trust_remote_code=True, reward_index=3)(_batch(ROWS))
    weighted = RewardAnnotator(model=path, trust_remote_code=True, reward_weights=weights)(_batch(ROWS))
    for i, native in enumerate(want):
        objectives = [o.rewards[0].tolist() for o in native]
        assert by_index["reward_outputs"][i] == [pytest.approx(v, abs=1e-5) for v in objectives]
        assert by_index["rewards"][i] == pytest.approx([v[3] for v in objectives], abs=1e-5)
        assert weighted["rewards"][i] == pytest.approx(
            [sum(w * x for w, x in zip(weights, v, strict=True)) for v in objectives], abs=1e-5
        )
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 5 objectives"):
        RewardAnnotator(model=path, trust_remote_code=True, reward_weights=[1.0, 1.0])(_batch(ROWS))


def test_custom_head_with_1d_logits(custom_reward_models):
    path = str(custom_reward_models["logits"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    want = _own_forward(path, ROWS, _render_with_template(tokenizer))
    assert want[0][0].logits.shape == (1,) and "score" not in want[0][0]
    step = RewardAnnotator(model=path, trust_remote_code=True, token_budget=64)
    out = step(_batch(ROWS))
    for i, native in enumerate(want):
        assert out["rewards"][i] == pytest.approx([o.logits[0].item() for o in native], abs=1e-5)
    with pytest.raises(RewardModelError, match="returns no per-objective `rewards`"):
        RewardAnnotator(model=path, trust_remote_code=True, objectives=True)(_batch(ROWS))


def test_custom_code_needs_trust_remote_code(custom_reward_models):
    path = str(custom_reward_models["armo"])
    with pytest.raises(
        RewardModelError,
        match=r"custom-code model.*modeling_tiny_armo\.TinyArmoRewardModel.*trust_remote_code: true",
    ):
        RewardAnnotator(model=path)(_batch(ROWS))
    with pytest.raises(UserError):  # the CLI prints it as one line
        RewardAnnotator(model=path).describe()


def test_describe_records_what_was_scored(custom_reward_models, reward_path, three_head_rm):
    path = str(custom_reward_models["armo"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = "sha256:" + hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
    scored = RewardAnnotator(model=path, trust_remote_code=True, reward_index=2).describe()["scored"]
    assert scored == {
        "model": path,
        "revision": content_hash(path),
        "head": "custom",
        "model_class": "modeling_tiny_armo.TinyArmoRewardModel",
        "reward": "index 2 of the objectives (the head's `rewards`)",
        "chat_template": template,
    }
    plain = RewardAnnotator(model=reward_path).describe()["scored"]
    assert (plain["head"], plain["model_class"]) == (
        "sequence-classification",
        "LlamaForSequenceClassification",
    )
    assert plain["reward"] == "the head's single output" and plain["chat_template"] == template
    weighted = RewardAnnotator(model=three_head_rm, reward_weights=[1.0, 0.0, -1.0]).describe()["scored"]
    assert weighted["reward"] == "weights [1.0, 0.0, -1.0] over the outputs"
    # the fingerprint follows what is scored
    assert RewardAnnotator(model=path, trust_remote_code=True, reward_index=1).fingerprint() != (
        RewardAnnotator(model=path, trust_remote_code=True, reward_index=2).fingerprint()
    )
