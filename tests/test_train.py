"""hfpref train dpo: TRL trains the tiny policy on a small pairs release; the card names the data."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.cli.main import main
from hfpref.core.errors import UserError
from hfpref.models.utils import content_hash
from hfpref.training.dpo import (
    DCRM_RECIPE,
    KEEP_DEFAULT,
    PRESETS,
    Setting,
    TrainError,
    dpo_config,
    load_pairs,
    parse_dataset_spec,
    resolve_hyperparameters,
    train_dpo,
)

PAIRS = {
    "prompt": [
        "Write a short poem about the sea.",
        "List the planets of the solar system.",
        "Explain why the sky is blue.",
        "Respond in JSON format with the keys name and age.",
    ],
    "chosen": [
        "The sea is wide and blue.",
        "Mercury, Venus, Earth, Mars.",
        "Light scatters, and blue scatters most.",
        '{"name": "Ada", "age": 36}',
    ],
    "rejected": [
        "The quick brown fox jumps.",
        "Do not use any commas.",
        "Write a poem about a dog.",
        "Highlight at least two sections.",
    ],
    # our metadata columns, which TRL must ignore
    "chosen_index": [0, 2, 1, 3],
    "rejected_index": [1, 0, 3, 2],
    "reward_margin": [1.5, 0.4, 0.9, 2.0],
    "dcrm": [0.12, 0.03, 0.05, 0.2],
    "pair_strategy": ["best_of_n2"] * 4,
    "key": [1000, 1001, 1005, 1012],
}
CARD = """---
configs:
- config_name: best_of_n2
  data_files:
  - split: train
    path: data/best_of_n2/train-*.parquet
---
# A tiny pairs release
"""


def write_release(folder: Path, version: str = "0.3.1") -> Path:
    (folder / "data" / "best_of_n2").mkdir(parents=True)
    datasets.Dataset.from_dict(PAIRS).to_parquet(str(folder / "data/best_of_n2/train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(CARD)
    (folder / "hfpref_manifest.json").write_text(json.dumps({"version": version, "recipe": {"steps": []}}))
    return folder


def summed_logps(model, tokenizer, prompt: str, completion: str) -> float:
    """log π(completion + EOS | prompt), summed over completion tokens, from one plain forward pass."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    token_logps = logps.gather(-1, targets[:, None])[:, 0]
    return token_logps[len(prompt_ids) - 1 :].sum().item()


def implicit_margins(policy, reference, tokenizer) -> list[float]:
    """Per pair: (log π/π_ref)(chosen) - (log π/π_ref)(rejected), the DPO implicit reward margin / β."""
    margins = []
    for prompt, chosen, rejected in zip(PAIRS["prompt"], PAIRS["chosen"], PAIRS["rejected"], strict=True):
        chosen_ratio = summed_logps(policy, tokenizer, prompt, chosen) - summed_logps(
            reference, tokenizer, prompt, chosen
        )
        rejected_ratio = summed_logps(policy, tokenizer, prompt, rejected) - summed_logps(
            reference, tokenizer, prompt, rejected
        )
        margins.append(chosen_ratio - rejected_ratio)
    return margins


def test_cli_trains_towards_chosen_and_card_names_the_data(tiny_models, tmp_path):
    release = write_release(tmp_path / "release")
    out = tmp_path / "trained"
    code = main(
        [
            "train", "dpo", "--dataset", str(release), "--config", "best_of_n2",
            "--model", str(tiny_models["policy"]), "--output-dir", str(out),
            "--learning-rate", "1e-3", "--max-steps", "8", "--batch-size", "2",
            "--no-bf16", "--use-cpu", "--save-strategy", "no", "--set", "gradient_checkpointing=false",
        ]
    )  # fmt: skip
    assert code == 0

    # the policy moved towards the chosen responses, measured independently of TRL
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    reference = AutoModelForCausalLM.from_pretrained(tiny_models["policy"]).eval()
    trained = AutoModelForCausalLM.from_pretrained(out).eval()
    margins = implicit_margins(trained, reference, tokenizer)
    assert implicit_margins(reference, reference, tokenizer) == [0.0] * 4
    assert sum(margins) / len(margins) > 1.0, margins
    assert all(m > 0 for m in margins), margins

    # flags reached DPOConfig; what was not given kept the DCRM recipe
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert (args.learning_rate, args.max_steps, args.per_device_train_batch_size) == (1e-3, 8, 2)
    assert (args.bf16, args.use_cpu, args.gradient_checkpointing) == (False, True, False)
    assert args.beta == 0.1 and args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.1

    # the model card names the release: config, manifest version, content hash
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    data = header["hfpref"]["training_data"]
    assert data["dataset"] == str(release)
    assert (data["config"], data["split"], data["rows"]) == ("best_of_n2", "train", 4)
    assert data["manifest_version"] == "0.3.1"
    assert data["content_hash"] == content_hash(release)
    assert "hfpref" in header["tags"] and "dpo" in header["tags"]
    assert f"manifest version `0.3.1`, content hash `{data['content_hash']}`" in text
    assert header["hfpref"]["base_model_revision"] == content_hash(tiny_models["policy"])


def test_dpo_config_defaults_are_the_dcrm_recipe(tmp_path):
    # DCRM paper, appendix B: beta 0.1, 2 epochs, lr 5e-7, warmup ratio 0.1, cosine schedule
    config = dpo_config(tmp_path, use_cpu=True)
    assert config.beta == 0.1
    assert config.num_train_epochs == 2
    assert config.learning_rate == 5e-7
    assert config.warmup_steps == 0.1 and config.get_warmup_steps(1000) == 100
    assert config.lr_scheduler_type == "cosine"
    assert config.weight_decay == 0.0  # AdamW without weight decay: the paper's Adam
    assert DCRM_RECIPE["beta"] == 0.1
    assert dpo_config(tmp_path, beta=0.5, use_cpu=True).beta == 0.5


def test_load_pairs_checks_preference_columns(tmp_path):
    release = write_release(tmp_path / "release")
    rows, source = load_pairs(str(release), config="best_of_n2")
    assert rows.num_rows == 4 and source.manifest_version == "0.3.1" and source.rows == 4
    assert rows.column_names == list(PAIRS)
    broken = tmp_path / "broken"
    (broken / "data" / "best_of_n2").mkdir(parents=True)
    datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["c"]}).to_parquet(
        str(broken / "data/best_of_n2/train-00000-of-00001.parquet")
    )
    (broken / "README.md").write_text(CARD)
    with pytest.raises(UserError, match=r"lacks the preference column\(s\) \['rejected'\]"):
        load_pairs(str(broken), config="best_of_n2")


def test_training_on_a_candidates_config_names_the_pairs_configs(tiny_models, tmp_path, capsys):
    # a release with a candidates config (responses, no pairs) and one pairs config
    release = write_release(tmp_path / "release")
    (release / "data" / "candidates").mkdir()
    datasets.Dataset.from_dict({"prompt": ["p"], "responses": [["a", "b"]]}).to_parquet(
        str(release / "data/candidates/train-00000-of-00001.parquet")
    )
    card = CARD.replace(
        "configs:\n",
        "configs:\n- config_name: candidates\n  data_files:\n  - split: train\n"
        "    path: data/candidates/train-*.parquet\n",
    )
    (release / "README.md").write_text(card)
    configs = {"best_of_n2": {"kind": "pairs"}, "candidates": {"kind": "candidates"}}
    (release / "hfpref_manifest.json").write_text(json.dumps({"version": "0.3.1", "configs": configs}))
    with pytest.raises(UserError) as err:
        load_pairs(str(release), config="candidates")
    message = str(err.value)
    assert "config 'candidates'" in message and "['chosen', 'rejected']" in message
    assert "columns present: ['prompt', 'responses']" in message and "--config: ['best_of_n2']" in message
    argv = ["train", "dpo", "--dataset", str(release), "--config", "candidates"]
    assert main([*argv, "--model", str(tiny_models["policy"]), "--output-dir", str(tmp_path / "out")]) == 2
    assert "--config: ['best_of_n2']" in capsys.readouterr().err.strip().splitlines()[-1]


def test_parse_dataset_spec(tmp_path):
    assert parse_dataset_spec("org/pairs@v1.2") == ("org/pairs", "v1.2")
    assert parse_dataset_spec("org/pairs") == ("org/pairs", None)
    folder = tmp_path / "release@2"
    folder.mkdir()
    assert parse_dataset_spec(str(folder)) == (str(folder), None)
    with pytest.raises(ValueError, match="REPO@REVISION"):
        parse_dataset_spec("org/pairs@")


# ---- presets and best-checkpoint selection ------------------------------------------------------------

# CARD with a validation split after the train split
VALIDATION_CARD = CARD.replace(
    "---\n#",
    "  - split: validation\n    path: data/best_of_n2/validation-*.parquet\n---\n#",
).replace("# A tiny pairs release", "# A tiny pairs release with held-out pairs")


def write_release_with_validation(folder: Path) -> Path:
    """The tiny release plus a validation split holding the training pairs with chosen and rejected swapped,
    so training on the train split makes the held-out DPO loss worse step after step."""
    write_release(folder)
    swapped = {**PAIRS, "chosen": PAIRS["rejected"], "rejected": PAIRS["chosen"]}
    datasets.Dataset.from_dict(swapped).to_parquet(
        str(folder / "data/best_of_n2/validation-00000-of-00001.parquet")
    )
    (folder / "README.md").write_text(VALIDATION_CARD)
    return folder


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _final_state(out: Path) -> dict:
    """trainer_state.json of the latest checkpoint: its log history holds every evaluation."""
    latest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((latest / "trainer_state.json").read_text())


def test_keeps_the_checkpoint_with_the_best_held_out_loss(tiny_models, tmp_path):
    release = write_release_with_validation(tmp_path / "release")
    out = tmp_path / "trained"
    code = main(
        [
            "train", "dpo", "--dataset", str(release), "--config", "best_of_n2", "--preset", "dcrm",
            "--eval-split", "validation", "--eval-steps", "2",
            "--model", str(tiny_models["policy"]), "--output-dir", str(out),
            "--learning-rate", "1e-3", "--max-steps", "8", "--batch-size", "2",
            "--no-bf16", "--use-cpu", "--set", "gradient_checkpointing=false",
        ]
    )  # fmt: skip
    assert code == 0
    state = _final_state(out)
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert sorted(evals) == [2, 4, 6, 8]
    best_step = min(evals, key=evals.get)
    assert best_step != 8, evals  # training on the swapped pairs' mirror: the last model is not the best
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert state["best_metric"] == evals[best_step]
    # the saved model is that checkpoint's weights, not the last step's
    assert _same(_weights(out), _weights(out / f"checkpoint-{best_step}"))
    assert not _same(_weights(out), _weights(out / "checkpoint-8"))
    # and its held-out DPO loss, computed here from log-probs, is the logged best: mean -log σ(β·margin)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["policy"])
    reference = AutoModelForCausalLM.from_pretrained(tiny_models["policy"]).eval()
    kept = AutoModelForCausalLM.from_pretrained(out).eval()
    swapped_margins = [-m for m in implicit_margins(kept, reference, tokenizer)]
    loss = torch.nn.functional.logsigmoid(0.1 * torch.tensor(swapped_margins)).neg().mean().item()
    assert loss == pytest.approx(evals[best_step], abs=1e-4)

    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])["hfpref"]
    assert header["preset"] == "dcrm"
    assert header["best_checkpoint"] == {
        "metric": "eval_loss",
        "value": pytest.approx(evals[best_step]),
        "step": best_step,
        "checkpoint": f"checkpoint-{best_step}",
    }
    assert header["held_out"]["split"] == "validation" and header["held_out"]["rows"] == 4
    params = header["hyperparameters"]
    assert params["beta"] == {"value": 0.1, "source": "DCRM paper, appendix B"}
    assert params["learning_rate"] == {"value": 1e-3, "source": "set by the user"}
    assert params["metric_for_best_model"]["source"].startswith("DCRM paper, section 4")
    assert params["eval_steps"] == {"value": 2, "source": "set by the user"}
    assert params["optim"]["source"] == "TRL's default (trl.DPOConfig)"
    assert params["per_device_train_batch_size"] == {"value": 2, "source": "set by the user"}
    assert params["gradient_accumulation_steps"] == {"value": 1, "source": "TRL's default (trl.DPOConfig)"}


def test_preset_with_a_held_out_ratio_and_reward_accuracy(tiny_models, tmp_path):
    release = write_release(tmp_path / "release")
    out = tmp_path / "trained"
    code = main(
        [
            "train", "dpo", "--dataset", str(release), "--config", "best_of_n2",
            "--preset", "instruction-following", "--eval-split-ratio", "0.5", "--best-metric", "accuracy",
            "--model", str(tiny_models["policy"]), "--output-dir", str(out),
            "--learning-rate", "1e-3", "--max-steps", "4", "--batch-size", "2", "--eval-steps", "1",
            "--no-bf16", "--use-cpu", "--set", "gradient_checkpointing=false",
        ]
    )  # fmt: skip
    assert code == 0
    args = torch.load(out / "training_args.bin", weights_only=False)
    # the paper's batch of 32: 2 per device x 16 accumulation steps on one device
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 16)
    assert (args.num_train_epochs, args.learning_rate, args.beta) == (1, 1e-3, 0.1)
    assert (args.metric_for_best_model, args.greater_is_better) == ("eval_rewards/accuracies", True)
    state = _final_state(out)
    evals = [(e["step"], e["eval_rewards/accuracies"]) for e in state["log_history"] if "eval_loss" in e]
    assert [s for s, _ in evals] == [1, 2, 3, 4]
    best_step, best = max(evals, key=lambda e: e[1])  # the first of equals, as transformers keeps it
    assert best_step != evals[-1][0], evals  # so keeping the last checkpoint would fail below
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert _same(_weights(out), _weights(out / f"checkpoint-{best_step}"))

    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])["hfpref"]
    assert header["preset"] == "instruction-following"
    assert header["held_out"] == {"held_out_of": "the training split", "ratio": 0.5, "seed": 42, "rows": 2}
    params = header["hyperparameters"]
    assert params["num_train_epochs"]["source"].startswith("arXiv 2412.15282")
    assert "total batch 32 = 2 per device x 16 x 1 devices" in params["gradient_accumulation_steps"]["source"]
    assert "silent" in params["beta"]["source"] and "silent" in params["lr_scheduler_type"]["source"]
    assert params["metric_for_best_model"] == {
        "value": "eval_rewards/accuracies",
        "source": "set by the user",
    }
    text = (out / "README.md").read_text()
    assert "- Preset: `instruction-following`" in text
    assert f"- Kept checkpoint: `checkpoint-{best_step}` (step {best_step})" in text


def test_presets_carry_each_papers_values_and_sources():
    dcrm, metric = resolve_hyperparameters("dcrm", {})
    assert metric == "loss"
    assert {k: s.value for k, s in dcrm.items()} == {
        "beta": 0.1,
        "learning_rate": 5e-7,
        "num_train_epochs": 2,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.0,
        "per_device_train_batch_size": KEEP_DEFAULT,  # the paper gives no batch size: TRL's, with that source
    }
    assert all(s.source.startswith("DCRM paper") for s in dcrm.values())
    assert "silent" in dcrm["per_device_train_batch_size"].source
    follow, _ = resolve_hyperparameters("instruction-following", {}, world_size=4)
    assert (follow["per_device_train_batch_size"].value, follow["gradient_accumulation_steps"].value) == (
        8,
        1,
    )
    assert (follow["num_train_epochs"].value, follow["learning_rate"].value) == (1, 5e-7)
    follow, _ = resolve_hyperparameters("instruction-following", {"per_device_train_batch_size": 4})
    assert (
        follow["gradient_accumulation_steps"].value == 8
        and follow["per_device_train_batch_size"].source == "set by the user"
    )
    margins, _ = resolve_hyperparameters("margins", {"beta": 0.3})
    assert margins["beta"] == Setting(0.3, "set by the user")
    assert all("2406.17312" in s.source for name, s in margins.items() if name != "beta")
    none, metric = resolve_hyperparameters(None, {"beta": 0.2})
    assert (
        metric is None
        and none["beta"].value == 0.2
        and none["learning_rate"].value == DCRM_RECIPE["learning_rate"]
    )
    with pytest.raises(TrainError, match="total batch of 32, which 5 per device on 1 device"):
        resolve_hyperparameters("instruction-following", {"per_device_train_batch_size": 5})
    with pytest.raises(TrainError, match="unknown preset 'dpo'; choose one of"):
        resolve_hyperparameters("dpo", {})
    assert set(PRESETS) == {"dcrm", "instruction-following", "margins"}


def test_held_out_options_that_cannot_work(tiny_models, tmp_path):
    release = write_release_with_validation(tmp_path / "release")
    policy, out = str(tiny_models["policy"]), tmp_path / "out"
    common = dict(config="best_of_n2", use_cpu=True, bf16=False)
    with pytest.raises(TrainError, match="needs saved checkpoints, but --save-strategy is 'no'"):
        train_dpo(str(release), policy, out, eval_split="validation", save_strategy="no", **common)
    with pytest.raises(TrainError, match="need held-out pairs"):
        train_dpo(str(release), policy, out, best_metric="accuracy", **common)
    with pytest.raises(TrainError, match="are the training pairs"):
        train_dpo(str(release), policy, out, eval_split="train", **common)
    with pytest.raises(TrainError, match="holds out 0"):
        train_dpo(str(release), policy, out, eval_split_ratio=0.1, **common)
    with pytest.raises(TrainError, match="not both"):
        train_dpo(str(release), policy, out, eval_split_ratio=0.5, eval_split="validation", **common)
    assert not out.exists()
