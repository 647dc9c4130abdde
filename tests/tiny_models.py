"""Tiny, seeded models and a tokenizer built offline, for tests (no weights can be downloaded here).

``build_tiny_models(folder)`` trains a byte-level BPE tokenizer in-process on a small corpus, wraps it
with a chat template, and saves a 2-layer Llama causal LM and a 2-layer Llama reward model (a
sequence-classification head with one label) next to it. Everything is deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CORPUS = [
    "Write a short poem about the sea. The sea is wide and blue.",
    "Answer in exactly three sentences. Do not use any commas.",
    "The quick brown fox jumps over the lazy dog.",
    "List the planets of the solar system in order from the sun.",
    "Explain why the sky is blue, in simple words, for a child.",
    "Respond in JSON format with the keys name and age.",
    "Highlight at least two sections with markdown, *like this*.",
] * 20


def build_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def build_tiny_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Save a tiny causal LM and reward model (each with the tokenizer) under ``folder``."""
    folder = Path(folder)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(_config(tokenizer))
    torch.manual_seed(seed + 1)
    reward = LlamaForSequenceClassification(_config(tokenizer, num_labels=1))
    paths = {"policy": folder / "tiny-llama", "reward": folder / "tiny-llama-rm"}
    for key, model in (("policy", policy), ("reward", reward)):
        model.save_pretrained(paths[key])
        tokenizer.save_pretrained(paths[key])
    return paths


def build_custom_reward_model(
    folder: str | Path,
    *,
    num_objectives: int = 5,
    armo_output: bool = True,
    pool_at_last_token: bool = False,
    seed: int = 3,
) -> Path:
    """Save a tiny ArmoRM-shaped custom-code reward model (``tests/modeling_tiny_armo.py``) under ``folder``.

    The folder holds config.json with ``auto_map`` (AutoModelForSequenceClassification ->
    ``modeling_tiny_armo.TinyArmoRewardModel``), the modeling file itself, the weights and the tiny
    tokenizer, as ArmoRM's repository does; ``armo_output=False`` makes it return 1-D ``logits`` only,
    ``pool_at_last_token=True`` makes its head read the last position even when it is padding.
    The reward transformation matrix is a random one (ArmoRM's is learned), so it matters.
    """
    from tests.modeling_tiny_armo import TinyArmoRewardModel

    folder = Path(folder)
    tokenizer = build_tokenizer()
    config = _config(
        tokenizer,
        num_labels=num_objectives,  # ArmoRM's config also counts its objectives in num_labels
        num_objectives=num_objectives,
        gating_temperature=2.0,
        gating_hidden_dim=16,
        gating_token_id=tokenizer.convert_tokens_to_ids("<|assistant|>"),
        armo_output=armo_output,
        pool_at_last_token=pool_at_last_token,
        architectures=["TinyArmoRewardModel"],
    )
    torch.manual_seed(seed)
    model = TinyArmoRewardModel(config)
    with torch.no_grad():
        model.reward_transform_matrix.copy_(torch.randn(num_objectives, num_objectives))
        model.gating.layers[1].weight.normal_(std=2.0)  # gates far from uniform, so the gating matters
    # save_pretrained copies the class's module next to the weights and writes auto_map
    TinyArmoRewardModel.register_for_auto_class("AutoModelForSequenceClassification")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
