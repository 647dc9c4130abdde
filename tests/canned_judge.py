"""Helpers of the tests that run judge steps on an in-process backend with canned replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def judge_config(backend: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A judge config for ``backend`` (``"module:Class"``), its reply cache under ``tmp_path``."""
    return {
        "model": "canned-judge",
        "backend": backend,
        "cache_dir": str(tmp_path / "judge-cache"),
        **overrides,
    }


def pair_batch(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Pairs rows as one batch of their ``prompt``, ``chosen`` and ``rejected`` columns."""
    return {key: [row[key] for row in rows] for key in ("prompt", "chosen", "rejected")}
