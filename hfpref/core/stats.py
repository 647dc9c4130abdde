"""Generic statistics and plain-text tables shared by steps and the release layer.

``describe_values`` summarises a list of numbers (skipping unknown and non-finite ones) for manifests and
cards; ``format_table`` lays out the aligned text tables the CLI prints. They live in ``core`` because steps
(``hfpref.steps.margins``, ``hfpref.steps.generator_delta``) and the release layer both use them, and steps
must not import the release layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# a cell that reads as a number (or as "n/a" / "-" in a numeric column): right-aligned by ``format_table``
_NUMERIC = re.compile(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?%?|n/a|-")


def describe_values(values: Sequence[float | None]) -> dict[str, float | int] | None:
    """mean, median, population std, min, max and count of the finite values; None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    import numpy as np  # lazily: importing hfpref stays light

    array = np.asarray(finite, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
        "count": len(finite),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned, text left-aligned)."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            numeric = i > 0 and _NUMERIC.fullmatch(str(cell)) is not None
            cells.append(str(cell).rjust(width) if numeric else str(cell).ljust(width))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


__all__ = ["describe_values", "format_table"]


def largest_remainder(total: int, weights: Mapping[Any, float]) -> dict[Any, int]:
    """``total`` split in proportion to ``weights`` (Hamilton's method): each key gets the floor of its
    share, and the remaining units go to the largest fractional parts, ties to the earlier key. Used for
    contrast mixes (per stratum) and iterate budgets (per round), so both round the same way."""
    whole = sum(weights.values())
    exact = {key: total * w / whole for key, w in weights.items()}
    quotas = {key: math.floor(value) for key, value in exact.items()}
    order = {key: i for i, key in enumerate(weights)}
    by_remainder = sorted(weights, key=lambda key: (-(exact[key] - quotas[key]), order[key]))
    for key in by_remainder[: total - sum(quotas.values())]:
        quotas[key] += 1
    return quotas
