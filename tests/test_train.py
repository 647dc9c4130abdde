"""hfpref train dpo: TRL trains the tiny policy on a small pairs release; the card names the data."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpref.cli import main
from hfpref.model_utils import content_hash
from hfpref.train import DCRM_RECIPE, dpo_config, load_pairs, parse_dataset_spec

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
    with pytest.raises(ValueError, match=r"lacks the preference column\(s\) \['rejected'\]"):
        load_pairs(str(broken), config="best_of_n2")


def test_parse_dataset_spec(tmp_path):
    assert parse_dataset_spec("org/pairs@v1.2") == ("org/pairs", "v1.2")
    assert parse_dataset_spec("org/pairs") == ("org/pairs", None)
    folder = tmp_path / "release@2"
    folder.mkdir()
    assert parse_dataset_spec(str(folder)) == (str(folder), None)
    with pytest.raises(ValueError, match="REPO@REVISION"):
        parse_dataset_spec("org/pairs@")
