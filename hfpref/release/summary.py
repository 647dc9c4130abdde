"""Per-strategy summary numbers of a curated release, and the table ``hfpref curate`` prints.

Computed from the pairs columns (``edit_distance``, ``logp_diff``, ``reward_margin``, ``dcrm``,
``chosen_generator``, ``rejected_generator``) and the drop-reason counts; the same numbers go into the
dataset card and the manifest. ``pair_agreement`` says how often two strategies chose the very same pair
for a prompt, ``generator_mix`` which generators the chosen and rejected responses come from, and
``candidates_summary`` what screening removed and how many responses were missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hfpref.core import columns as C
from hfpref.core.stats import describe_values, format_table

# rows per batch when a summary reads a dataset's columns (Arrow-backed; never a whole column as a list)
SUMMARY_BATCH_ROWS = 1000

# the pair metrics summarised, with the names the card uses for them
METRICS = {C.EDIT_DISTANCE: "e_Δ", C.LOGP_DIFF: "p_Δ", C.REWARD_MARGIN: "r_Δ", C.DCRM: "DCRM"}


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
        stats[column] = describe_values(column_values(pairs, column)) if column in columns and kept else None
    share = None
    if C.CHOSEN_GENERATOR in columns and C.REJECTED_GENERATOR in columns:
        share = stronger_generator_share(
            column_values(pairs, C.CHOSEN_GENERATOR),
            column_values(pairs, C.REJECTED_GENERATOR),
            generator_ranking,
        )
    dropped_counts = dict(sorted(Counter(dropped).items(), key=lambda kv: (-kv[1], kv[0])))
    mix = {}
    for side, column in (("chosen", C.CHOSEN_GENERATOR), ("rejected", C.REJECTED_GENERATOR)):
        if column in columns:
            mix[side] = generator_mix(column_values(pairs, column))
    return {
        "rows": kept,
        "dropped": dropped_counts,
        "dropped_total": sum(dropped_counts.values()),
        "input_rows": kept + sum(dropped_counts.values()),
        "stats": stats,
        "stronger_generator": share,
        "generator_mix": mix,
    }


def generator_mix(generators: Sequence[str | None]) -> dict[str, Any]:
    """How many pairs each generator wrote a side of, most first (ties by name), and the top one's share."""
    counts = Counter("unknown" if g is None else str(g) for g in generators)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(ordered.values())
    top = next(iter(ordered), None)
    return {
        "counts": ordered,
        "top": top,
        "top_share": ordered[top] / total if top is not None else None,
    }


def column_batches(data, columns: Sequence[str], batch_size: int | None = None) -> Iterator[dict[str, list]]:
    """``columns`` of a ``datasets.Dataset`` in batches of ``batch_size`` rows (default ``SUMMARY_BATCH_ROWS``; a dict of lists each), so a
    summary over a large dataset never holds a whole text column as Python objects; a dict of columns
    (already in memory) is yielded as it is."""
    if not hasattr(data, "column_names"):
        yield {c: data[c] for c in columns if c in data}
        return
    if not columns or len(data) == 0:
        yield {c: [] for c in columns}
        return
    yield from data.select_columns(list(columns)).iter(batch_size=batch_size or SUMMARY_BATCH_ROWS)


def column_values(data, column: str) -> list:
    """One column as a list, read through Arrow for a ``datasets.Dataset``: for the pairs' short columns
    (numbers, generator names). ``dataset[column]`` is a lazy ``Column`` in datasets 5 whose iteration
    formats one row at a time (~25 us a row: 4 s of the release summary at 2k prompts)."""
    if hasattr(data, "column_names"):
        return data.with_format("arrow")[column].to_pylist()
    return list(data[column])


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _pair_keys(pairs) -> dict[bytes, bytes]:
    """hash of the prompt (as JSON) -> hash of (chosen, rejected) as JSON, for comparing the pairs of two
    strategies: 16-byte digests instead of the texts, so every config's keys fit in memory at any size."""
    out = {}
    for batch in column_batches(pairs, [C.PROMPT, C.CHOSEN, C.REJECTED]):
        for prompt, chosen, rejected in zip(batch[C.PROMPT], batch[C.CHOSEN], batch[C.REJECTED], strict=True):
            key = _digest(json.dumps(prompt, sort_keys=True, ensure_ascii=False))
            out[key] = _digest(
                json.dumps(chosen, ensure_ascii=False) + "\0" + json.dumps(rejected, ensure_ascii=False)
            )
    return out


def pair_agreement(pairs_by_config: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """For every two configs a, b: over the prompts both kept, how many got the same (chosen, rejected).

    Returns ``{a: {b: {"shared_prompts": n, "same_pairs": k, "fraction": k / n or None}}}``; configs with
    several pairs for one prompt (pair makers) are compared on the last pair kept per prompt.
    """
    keyed = {name: _pair_keys(pairs) for name, pairs in pairs_by_config.items()}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a, pairs_a in keyed.items():
        out[a] = {}
        for b, pairs_b in keyed.items():
            shared = pairs_a.keys() & pairs_b.keys()
            same = sum(pairs_a[k] == pairs_b[k] for k in shared)
            out[a][b] = {
                "shared_prompts": len(shared),
                "same_pairs": same,
                "fraction": same / len(shared) if shared else None,
            }
    return out


def reference_config(names: Sequence[str]) -> str | None:
    """The config others are compared with in the printed table: best_of_n2 when present, else the first."""
    return "best_of_n2" if "best_of_n2" in names else next(iter(names), None)


def candidates_summary(candidates) -> dict[str, Any]:
    """What the candidates say beyond the pairs, for the manifest, the card and ``hfpref curate``'s summary.

    ``candidates``: a ``datasets.Dataset`` or a dict of columns with ``responses`` (and optionally
    ``generators``, ``screened_out``, ``ifeval_invented_args``). Returns ``candidate_rows``; ``responses``
    (all entries, missing ones included) and ``responses_per_generator``; ``missing_responses`` (None entries:
    failed generations, never paired), ``missing_responses_per_generator`` and
    ``rows_with_missing_responses``; ``ifeval_invented_args`` (instruction arguments lm-eval's checks drew at
    random, graded but flagged) and ``rows_with_ifeval_invented_args``, both None when the column is absent
    (unknown, not zero); and ``screened_out`` (``hfpref.steps.screening.screening_counts``) when screening ran.
    """
    columns = candidates.column_names if hasattr(candidates, "column_names") else list(candidates)
    per_generator: Counter = Counter()
    missing: Counter = Counter()
    rows = rows_missing = 0
    has_invented, has_screening = C.IFEVAL_INVENTED_ARGS in columns, C.SCREENED_OUT in columns
    invented = rows_invented = 0
    screened: list = []
    wanted = [c for c in (C.RESPONSES, C.GENERATORS, C.IFEVAL_INVENTED_ARGS) if c in columns]
    for batch in column_batches(candidates, wanted):
        responses = batch.get(C.RESPONSES, [])
        generators = batch.get(C.GENERATORS)
        rows += len(responses)
        for i, row in enumerate(responses):
            names = generators[i] if generators is not None else None
            row_missing = 0
            for k, text in enumerate(row or []):
                name = str(names[k]) if names else "unknown"
                per_generator[name] += 1
                if text is None:
                    missing[name] += 1
                    row_missing += 1
            rows_missing += row_missing > 0
        if has_invented:
            counts = [len(row or []) for row in batch[C.IFEVAL_INVENTED_ARGS]]
            invented += sum(counts)
            rows_invented += sum(count > 0 for count in counts)
    if has_screening:
        # only the rows screening touched are kept (a few), not the whole column
        screened = [
            removed
            for batch in column_batches(candidates, [C.SCREENED_OUT])
            for removed in batch[C.SCREENED_OUT]
            if removed
        ]
    out: dict[str, Any] = {
        "candidate_rows": rows,
        "responses": sum(per_generator.values()),
        "responses_per_generator": dict(sorted(per_generator.items())),
        "missing_responses": sum(missing.values()),
        "missing_responses_per_generator": dict(sorted(missing.items())),
        "rows_with_missing_responses": rows_missing,
        "ifeval_invented_args": invented if has_invented else None,
        "rows_with_ifeval_invented_args": rows_invented if has_invented else None,
    }
    if has_screening:
        from hfpref.steps.screening import screening_counts

        out["screened_out"] = screening_counts(screened)
    return out


def short_generator(name: str | None) -> str:
    """A generator name short enough for the printed table: no "-instruct", date or "-001" suffix."""
    if name is None:
        return "n/a"
    return re.sub(r"-\d{8}$|-\d{3}$", "", name.replace("-instruct", ""))


def _fmt(value: float | None) -> str:
    """Four significant digits: DCRM values are small, distances large."""
    return "n/a" if value is None else f"{value:.4g}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The tables ``hfpref curate`` prints (each under 110 columns).

    First: kept and dropped rows, mean e_Δ, r_Δ, DCRM (and p_Δ when known), the share of pairs chosen from
    the stronger generator, and the share of prompts on which the strategy chose the same pair as the
    reference strategy (``same_pair_as_reference``, when the summaries carry it). Second: the generator
    that wrote most chosen and most rejected responses, with its share, and the drop reasons.
    """
    show_logp = any(s["stats"].get(C.LOGP_DIFF) for s in summaries.values())
    metric_columns = [C.EDIT_DISTANCE, *([C.LOGP_DIFF] if show_logp else []), C.REWARD_MARGIN, C.DCRM]
    reference = next(
        (
            s["same_pair_as_reference"]["reference"]
            for s in summaries.values()
            if s.get("same_pair_as_reference")
        ),
        None,
    )
    headers = ["strategy", "kept", "dropped", *[f"mean {METRICS[c]}" for c in metric_columns]]
    headers += ["stronger chosen", f"same pair as {reference}" if reference else "same pair as"]
    rows, mix_rows = [], []
    for strategy, s in summaries.items():
        row = [strategy, str(s["rows"]), str(s["dropped_total"])]
        for column in metric_columns:
            stat = s["stats"].get(column)
            row.append(_fmt(stat["mean"] if stat else None))
        share = s.get("stronger_generator")
        row.append(_share(share["fraction"] if share else None))
        same = s.get("same_pair_as_reference")
        row.append(_share(same["fraction"]) if same else "-")
        rows.append(row)
        mix = s.get("generator_mix") or {}
        cells = []
        for side in ("chosen", "rejected"):
            m = mix.get(side)
            cells.append(f"{short_generator(m['top'])} {_share(m['top_share'])}" if m and m["top"] else "n/a")
        reasons = ", ".join(f"{reason} {n}" for reason, n in s["dropped"].items()) or "none"
        mix_rows.append([strategy, *cells, reasons])
    table = format_table(headers, rows)
    mix_table = format_table(["strategy", "top chosen", "top rejected", "dropped by reason"], mix_rows)
    return table + "\n\n" + mix_table


def _interval(value: float | None, bounds: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    if not bounds or any(b is None or not math.isfinite(b) for b in bounds):
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def ranking_text(manifest: Mapping[str, Any]) -> str:
    """What ``hfpref curate`` prints about the generator ranking "stronger chosen" and ds_fix used:
    the measured accuracy table (strongest first), or the given order; empty without a ranking."""
    ranking = manifest.get("generator_ranking")
    if not ranking:
        return ""
    accuracy = manifest.get("generator_accuracy")
    if not accuracy:
        order = " > ".join(short_generator(g) for g in ranking)
        return (
            f"stronger chosen: chosen from the higher-ranked generator, ranking given by the recipe: {order}"
        )
    level = round(100 * accuracy[0]["confidence"])
    rows = [
        [
            str(rank),
            a["generator"],
            str(a["responses"]),
            _interval(a["prompt_level"], a["prompt_level_ci"]),
            _interval(a["instruction_level"], a["instruction_level_ci"]),
        ]
        for rank, a in enumerate(accuracy, start=1)
    ]
    headers = [
        "#",
        "generator",
        "graded",
        f"prompt-level strict % [{level}% CI]",
        "instruction-level strict % [CI]",
    ]
    return (
        'generator ranking measured on these candidates (used by ds_fix and "stronger chosen"):\n'
        + format_table(headers, rows)
    )


def candidates_text(manifest: Mapping[str, Any]) -> str:
    """Lines for ``hfpref curate`` on what screening removed, how many responses were missing and how many
    IFEval arguments the checks invented (one fact a line, so the summary stays within 110 columns)."""
    summary = manifest.get("candidates_summary") or {}
    parts = []
    screened = summary.get("screened_out")
    if screened is not None:
        reasons = ", ".join(f"{reason} {n}" for reason, n in screened["by_reason"].items()) or "none"
        parts.append(f"screened out {screened['removed']} responses ({reasons})")
    if summary.get("missing_responses"):
        parts.append(f"{summary['missing_responses']} missing (None) responses")
    if summary.get("ifeval_invented_args"):
        parts.append(
            f"{summary['ifeval_invented_args']} IFEval arguments invented by lm-eval's checks "
            "(graded, flagged in ifeval_invented_args)"
        )
    if not parts:
        return ""
    return "\n".join(
        [f"candidates: {summary.get('responses', 0)} responses kept", *(f"  {p}" for p in parts)]
    )
