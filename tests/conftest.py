"""Shared fixtures: tiny models are built once per test session into a temporary folder."""

from __future__ import annotations

import pytest

from tests.tiny_models import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Paths of a tiny causal LM ('policy') and reward model ('reward'), each saved with its tokenizer."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
