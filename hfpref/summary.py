"""Per-strategy summary numbers of a curated release, and the table ``hfpref curate`` prints.

Computed from the pairs columns (``edit_distance``, ``logp_diff``, ``reward_margin``, ``dcrm``,
``chosen_generator``, ``rejected_generator``) and the drop-reason counts; the same numbers go into the
dataset card and the manifest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hfpref import columns as C

# the pair metrics summarised, with the names the card uses for them
METRICS = {C.EDIT_DISTANCE: "e_Δ", C.LOGP_DIFF: "p_Δ", C.REWARD_MARGIN: "r_Δ", C.DCRM: "DCRM"}


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


def stronger_generator_share(
    chosen: Sequence[str | None], rejected: Sequence[str | None], ranking: Sequence[str] | None
) -> dict[str, Any] | None:
    """How often the chosen response comes from the higher-ranked generator (``ranking``: strongest first).

    Counts only pairs whose two generators differ and are both ranked; None without a ranking.
    """
    if not ranking:
        return None
    rank = {name: i for i, name in enumerate(ranking)}
    compared = stronger = same = unranked = 0
    for c, r in zip(chosen, rejected, strict=True):
        if c is None or r is None or c not in rank or r not in rank:
            unranked += 1
        elif c == r:
            same += 1
        else:
            compared += 1
            stronger += rank[c] < rank[r]
    return {
        "stronger_chosen": stronger,
        "compared": compared,
        "same_generator": same,
        "unranked": unranked,
        "fraction": stronger / compared if compared else None,
    }


def strategy_summary(
    pairs, dropped: Mapping[str, int], generator_ranking: Sequence[str] | None = None
) -> dict[str, Any]:
    """Row counts, drop reasons, metric statistics and stronger-generator share of one strategy's pairs.

    ``pairs``: a ``datasets.Dataset`` (or a dict of columns) of kept pairs rows.
    """
    columns = pairs.column_names if hasattr(pairs, "column_names") else list(pairs)
    kept = len(pairs) if hasattr(pairs, "column_names") else len(next(iter(pairs.values()), []))
    stats = {}
    for column in METRICS:
        stats[column] = describe_values(pairs[column]) if column in columns and kept else None
    share = None
    if C.CHOSEN_GENERATOR in columns and C.REJECTED_GENERATOR in columns:
        share = stronger_generator_share(
            pairs[C.CHOSEN_GENERATOR], pairs[C.REJECTED_GENERATOR], generator_ranking
        )
    dropped_counts = dict(sorted(Counter(dropped).items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "rows": kept,
        "dropped": dropped_counts,
        "dropped_total": sum(dropped_counts.values()),
        "input_rows": kept + sum(dropped_counts.values()),
        "stats": stats,
        "stronger_generator": share,
    }


def _fmt(value: float | None) -> str:
    """Four significant digits: DCRM values are small, distances large."""
    return "n/a" if value is None else f"{value:.4g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            cells.append(str(cell).ljust(width) if i == 0 else str(cell).rjust(width))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def summary_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The table ``hfpref curate`` prints: kept rows, dropped rows per reason, mean e_Δ, r_Δ, DCRM (and p_Δ
    when known), the share of pairs chosen from the stronger generator, and which strategy picked the
    very same pairs (``same_pairs_as``, when the summaries carry it)."""
    reasons = sorted({reason for s in summaries.values() for reason in s["dropped"]})
    show_logp = any(s["stats"].get(C.LOGP_DIFF) for s in summaries.values())
    metric_columns = [C.EDIT_DISTANCE, *([C.LOGP_DIFF] if show_logp else []), C.REWARD_MARGIN, C.DCRM]
    headers = ["strategy", "kept", *reasons, *[f"mean {METRICS[c]}" for c in metric_columns]]
    headers += ["stronger chosen", "same pairs as"]
    rows = []
    for strategy, s in summaries.items():
        row = [strategy, str(s["rows"]), *[str(s["dropped"].get(r, 0)) for r in reasons]]
        for column in metric_columns:
            stat = s["stats"].get(column)
            row.append(_fmt(stat["mean"] if stat else None))
        share = s.get("stronger_generator")
        fraction = share["fraction"] if share else None
        row.append("n/a" if fraction is None else f"{100 * fraction:.1f}%")
        row.append(s.get("same_pairs_as") or "-")
        rows.append(row)
    table = format_table(headers, rows)
    if reasons:
        table = f"rows kept, then rows dropped by reason ({', '.join(reasons)}):\n" + table
    return table


def candidates_summary(candidates) -> dict[str, int | None]:
    """What the candidates rows lacked, for the card and manifest ("N responses missing").

    ``candidates``: a ``datasets.Dataset`` or a dict of columns with ``responses`` and, after
    ``IFEvalVerifier``, ``ifeval_invented_args``. Returns ``candidate_rows``; ``responses`` (all entries,
    missing ones included); ``missing_responses`` (None entries: failed generations, never paired) and
    ``rows_with_missing_responses``; ``ifeval_invented_args`` (instruction arguments lm-eval's checks drew
    at random, graded but flagged) and ``rows_with_ifeval_invented_args`` — both None when the column is
    absent (unknown, not zero).
    """
    columns = candidates.column_names if hasattr(candidates, "column_names") else list(candidates)
    responses = candidates[C.RESPONSES] if C.RESPONSES in columns else []
    missing = [sum(text is None for text in row or []) for row in responses]
    summary: dict[str, int | None] = {
        "candidate_rows": len(responses),
        "responses": sum(len(row or []) for row in responses),
        "missing_responses": sum(missing),
        "rows_with_missing_responses": sum(count > 0 for count in missing),
        "ifeval_invented_args": None,
        "rows_with_ifeval_invented_args": None,
    }
    if C.IFEVAL_INVENTED_ARGS in columns:
        invented = [len(row or []) for row in candidates[C.IFEVAL_INVENTED_ARGS]]
        summary["ifeval_invented_args"] = sum(invented)
        summary["rows_with_ifeval_invented_args"] = sum(count > 0 for count in invented)
    return summary
