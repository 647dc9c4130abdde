"""Plain statistics and text tables that steps, summaries and cards share.

``describe_values`` gives the summary numbers of a metric column (None and non-finite values left out);
``format_table`` lays rows out as the aligned plain-text tables the CLI prints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_NUMERIC = re.compile(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?%?|n/a|-")


def describe_values(values: Sequence[float | None]) -> dict[str, float | int] | None:
    """mean, median, population std, min, max and count of the finite values; None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    import numpy as np

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
