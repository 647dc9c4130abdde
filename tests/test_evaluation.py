"""Evaluation: the ifeval_accuracy metric module, `hfpref eval ifeval` and `hfpref eval winrate`."""

from __future__ import annotations

import json

import evaluate
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hfpref.cli.main import main
from hfpref.pipeline import default_data
from hfpref.pipeline.default_data import data_dir
from hfpref.training.evaluation import IFEVAL_METRIC_PATH, judge, load_prompts, win_rate
from tests.tiny_models import build_tiny_models


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(IFEVAL_METRIC_PATH)


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory) -> str:
    """A second tiny policy (another seed), to compare against the fixture's."""
    return str(build_tiny_models(tmp_path_factory.mktemp("other-models"), seed=5)["policy"])


def read_jsonl(name: str) -> list[dict]:
    with (data_dir() / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_metric_aggregates_strict_and_loose_verdicts(metric):
    both = ["punctuation:no_comma", "detectable_format:title"]
    references = [
        {"key": 1, "prompt": "Give it a title; no commas.", "instruction_id_list": both, "kwargs": [{}, {}]},
        {"key": 2, "prompt": "Give it a title; no commas.", "instruction_id_list": both, "kwargs": [{}, {}]},
        {"key": 3, "prompt": "No commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {
            "key": 4,
            "prompt": "Highlight two sections; no commas.",
            "instruction_id_list": ["detectable_format:number_highlighted_sections", "punctuation:no_comma"],
            # Arrow-style kwargs: every key in every dict, None meaning "not given"
            "kwargs": [{"num_highlights": 2}, {"num_highlights": None}],
        },
    ]
    predictions = [
        "<<Sea>>\nThe sea is wide and blue.",  # title, no comma: both followed
        "Sure, here it is:\nno title at all",  # comma only in the first line: loose passes it, strict not
        "one, two",  # a comma: fails both ways
        "Sure, here:\n*one* and *two*",  # highlights; the comma is in the first line again
    ]
    result = metric.compute(predictions=predictions, references=references, details=True)
    assert result["strict"] == [[True, True], [False, False], [False], [True, False]]
    assert result["loose"] == [[True, True], [True, False], [False], [True, True]]
    assert result["prompt_level_strict_acc"] == 1 / 4
    assert result["inst_level_strict_acc"] == 3 / 7
    assert result["prompt_level_loose_acc"] == 2 / 4
    assert result["inst_level_loose_acc"] == 5 / 7


def test_metric_reproduces_published_gpt4_accuracies(metric):
    prompts = {row["key"]: row for row in read_jsonl("prompts.jsonl")}
    responses = default_data.response_records("gpt-4")
    result = metric.compute(
        predictions=[r["response"] for r in responses], references=[prompts[r["key"]] for r in responses]
    )
    # Published (IFEval paper, Table 2): 76.89 / 83.57 / 79.30 / 85.37, over 541 prompts and 834
    # instructions. We grade 540 prompts (832 instructions): key 2785 has no GPT-4 response. Ours:
    # 415/540 = 76.85, 695/832 = 83.53, 429/540 = 79.44, 711/832 = 85.46. Adding or removing one prompt
    # with two instructions moves a prompt-level accuracy by at most 1/541 (0.185 points) and an
    # instruction-level one by at most 2/834 (0.240 points); the published numbers are rounded to 0.005.
    published = {
        "prompt_level_strict_acc": (76.89, 0.185),
        "inst_level_strict_acc": (83.57, 0.240),
        "prompt_level_loose_acc": (79.30, 0.185),
        "inst_level_loose_acc": (85.37, 0.240),
    }
    assert len(responses) == 540
    for name, (value, bound) in published.items():
        assert abs(100 * result[name] - value) <= bound + 0.005, (name, result[name])


def test_metric_rejects_incomplete_references(metric):
    with pytest.raises(ValueError, match=r"references\[0\] lacks \['kwargs'\]"):
        metric.compute(
            predictions=["hi"], references=[{"prompt": "p", "instruction_id_list": ["punctuation:no_comma"]}]
        )


def test_eval_ifeval_cli_on_tiny_model(tiny_models, tmp_path, capsys):
    output = tmp_path / "ifeval.json"
    policy = str(tiny_models["policy"])
    code = main(
        [
            "eval",
            "ifeval",
            "--model",
            policy,
            "--limit",
            "3",
            "--max-new-tokens",
            "8",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads(output.read_text())
    assert "records" not in printed and printed["metrics"] == result["metrics"]
    assert result["num_prompts"] == 3 and result["sampling"]["temperature"] == 0.0
    first_prompts = read_jsonl("prompts.jsonl")[:3]
    assert [r["key"] for r in result["records"]] == [p["key"] for p in first_prompts]
    # the response is the greedy continuation of the chat-templated prompt
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    messages = [{"role": "user", "content": first_prompts[0]["prompt"]}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")[
        "input_ids"
    ]
    with torch.inference_mode():
        greedy = model.generate(ids, do_sample=False, max_new_tokens=8)
    assert result["records"][0]["response"] == tokenizer.decode(
        greedy[0, ids.shape[1] :], skip_special_tokens=True
    )
    # the four numbers aggregate the per-prompt verdicts
    strict = [r["strict"] for r in result["records"]]
    loose = [r["loose"] for r in result["records"]]
    assert result["metrics"]["prompt_level_strict_acc"] == sum(all(v) for v in strict) / 3
    assert result["metrics"]["inst_level_loose_acc"] == sum(map(sum, loose)) / sum(map(len, loose))


def test_win_rate_of_a_model_against_itself_is_one_half(tiny_models):
    policy, rm = str(tiny_models["policy"]), str(tiny_models["reward"])
    result = win_rate(policy, policy, rm, limit=3, max_new_tokens=8, temperature=1.0, seed=3)
    assert result["win_rate"] == 0.5
    assert (result["win"], result["tie"], result["loss"]) == (0, 3, 0)


def test_win_rate_swaps_to_its_complement_and_uses_the_rm_template(tiny_models, other_policy, tmp_path):
    policy, rm = str(tiny_models["policy"]), str(tiny_models["reward"])
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "a", "prompt": "Write a short poem about the sea."},
        {"id": "b", "prompt": [{"role": "user", "content": "List the planets."}]},
        {"id": "c", "prompt": "Explain why the sky is blue."},
        {"id": "d", "prompt": "Respond in JSON format."},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "winrate.json"
    argv = ["eval", "winrate", "--model", policy, "--baseline", other_policy, "--reward-model", rm]
    argv += [
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "8",
        "--temperature",
        "1",
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    forward = json.loads(output.read_text())
    swapped = win_rate(other_policy, policy, rm, prompts=prompts, max_new_tokens=8, temperature=1.0)
    assert forward["num_prompts"] == swapped["num_prompts"] == 4
    assert [r["id"] for r in forward["records"]] == ["a", "b", "c", "d"]
    assert {"win", "loss"} <= {r["outcome"] for r in forward["records"]}  # not a vacuous all-ties run
    assert forward["win_rate"] + swapped["win_rate"] == 1.0
    assert (forward["win"], forward["loss"]) == (swapped["loss"], swapped["win"])
    # win rate = (wins + ties / 2) / prompts, with outcomes from the rewards
    outcomes = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    assert forward["win_rate"] == sum(outcomes[r["outcome"]] for r in forward["records"]) / 4
    # rewards are the RM's scores of its own chat-templated conversation, from a plain forward pass
    tokenizer = AutoTokenizer.from_pretrained(rm)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    for row, record in zip(rows, forward["records"], strict=True):
        user = (
            [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
        )
        for response, reward in ((record["response_model"], record["reward_model"]),
                                 (record["response_baseline"], record["reward_baseline"])):  # fmt: skip
            conversation = [*user, {"role": "assistant", "content": response}]
            ids = tokenizer.apply_chat_template(conversation, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                expected = reward_model(ids).logits[0, 0].item()
            assert reward == pytest.approx(expected, abs=1e-5)
        sign = (record["reward_model"] > record["reward_baseline"]) - (
            record["reward_model"] < record["reward_baseline"]
        )
        assert record["outcome"] == {1: "win", 0: "tie", -1: "loss"}[sign]


def test_win_rate_with_a_custom_code_reward_model_needs_the_flag(
    tiny_models, other_policy, custom_reward_models, tmp_path, capsys
):
    from hfpref.steps.rewards import RewardAnnotator, RewardModelError

    policy, armo = str(tiny_models["policy"]), str(custom_reward_models["armo"])
    argv = ["eval", "winrate", "--model", policy, "--baseline", other_policy, "--reward-model", armo]
    argv += ["--limit", "2", "--max-new-tokens", "6", "--temperature", "1"]
    # without it: refused in one line that names the flag (exit 2), before any model samples
    with pytest.raises(RewardModelError, match=r"custom-code model.*--trust-remote-code"):
        win_rate(policy, other_policy, armo, limit=2, max_new_tokens=6)
    assert main(argv) == 2
    assert "--trust-remote-code" in capsys.readouterr().err.strip().splitlines()[-1]
    # with it: the ArmoRM-shaped head judges (its `score`), as RewardAnnotator scores the same pair
    output = tmp_path / "winrate.json"
    assert main([*argv, "--trust-remote-code", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["num_prompts"] == 2
    scorer = RewardAnnotator(model=armo, trust_remote_code=True)
    scored = scorer(
        {
            "prompt": [r["prompt"] for r in result["records"]],
            "responses": [[r["response_model"], r["response_baseline"]] for r in result["records"]],
        }
    )
    for record, rewards in zip(result["records"], scored["rewards"], strict=True):
        assert [record["reward_model"], record["reward_baseline"]] == pytest.approx(rewards, abs=1e-6)


def test_judge_ties_identical_texts_whatever_their_rewards():
    assert judge("same", "same", 1.0, 1.0 + 1e-9) == "tie"
    assert judge("a", "b", 2.0, 1.0) == "win"
    assert judge("a", "b", 1.0, 2.0) == "loss"
    assert judge("a", "b", 1.0, 1.0) == "tie"


def test_load_prompts_default_and_errors(tmp_path):
    default = load_prompts(None, limit=2)
    assert [row["key"] for row in default] == [p["key"] for p in read_jsonl("prompts.jsonl")[:2]]
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompts(bad)
    with pytest.raises(ValueError, match="expected one of"):
        load_prompts(tmp_path / "prompts.txt")
