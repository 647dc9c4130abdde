"""``evaluate`` metric modules shipped with hfpref; load one with ``evaluate.load(metric_path(name))``."""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """The folder of a packaged metric module (``evaluate.load`` finds ``<name>/<name>.py`` in it)."""
    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no packaged metric {name!r}; known metrics: {known}")
    return str(folder)
