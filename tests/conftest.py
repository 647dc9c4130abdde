"""Shared fixtures: tiny models are built once per test session into a temporary folder."""

from __future__ import annotations

import pytest

from tests.tiny_models import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Paths of a tiny causal LM ('policy') and reward model ('reward'), each saved with its tokenizer."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def policy(tiny_models) -> str:
    """The tiny causal LM's folder, as a model id string."""
    return str(tiny_models["policy"])


@pytest.fixture(scope="session")
def custom_reward_models(tmp_path_factory) -> dict:
    """Tiny custom-code (trust_remote_code) reward models: 'armo' (ArmoRM's output: score, rewards,
    gating_output), 'logits' (1-D logits only) and 'last-token' (pools the last position, padding or not), each a folder with auto_map and its modeling file."""
    from tests.tiny_models import build_custom_reward_model

    folder = tmp_path_factory.mktemp("custom-rms")
    return {
        "armo": build_custom_reward_model(folder / "tiny-armo"),
        "logits": build_custom_reward_model(folder / "tiny-logits-rm", armo_output=False),
        "last-token": build_custom_reward_model(folder / "tiny-last-token-rm", pool_at_last_token=True),
    }
