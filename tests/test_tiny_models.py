"""The tiny test models reload from disk and behave deterministically."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def test_tiny_models_reload_and_are_seeded(tiny_models, tmp_path):
    from tests.tiny_models import build_tiny_models

    tok = AutoTokenizer.from_pretrained(tiny_models["policy"])
    ids = tok.apply_chat_template([{"role": "user", "content": "Write a poem."}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert tok.decode(ids).endswith("<|assistant|>")
    again = build_tiny_models(tmp_path)
    a = AutoModelForCausalLM.from_pretrained(tiny_models["policy"])
    b = AutoModelForCausalLM.from_pretrained(again["policy"])
    x = torch.tensor([ids])
    assert torch.equal(a(x).logits, b(x).logits)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_models["reward"])
    assert rm(x).logits.shape == (1, 1)
