"""Generator-level delta ("Decomposing the Delta"): the capability gap between the models that wrote a pair.

``GeneratorDeltaTagger`` tags pairs rows with whether chosen and rejected come from the same model and
with ``generator_delta`` = capability(chosen's generator) − capability(rejected's generator). Capability
is one number per generator: measured on the data by ``measure_capabilities`` (the default,
``capabilities: measured``: IFEval strict accuracy with a Wilson interval when the candidates carry
verdicts, else the mean reward with a bootstrap interval), or given by the user as a table (an arena
rating, a benchmark score, a parameter count — anything where larger means more capable), labelled
"given" in the manifest.

Capability measurement lives in ``hfpref.steps.generator_capability`` (its names import from here too).

Dataset-level helpers: ``filter_by_generator_delta`` keeps pairs by delta range or source, and
``stratified_summary`` / ``format_stratified_summary`` describe pair metrics (reward margin, DCRM, sample
delta, ...) per stratum: same source, and different sources in bins of generator delta.

Columns of ``GeneratorDeltaTagger``:

* input: ``chosen_generator``, ``rejected_generator`` (str, or None when unknown)
* output: ``same_source`` (bool; None when either generator is unknown), ``chosen_capability``,
  ``rejected_capability``, ``generator_delta`` (float; None when either capability is unknown)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import datasets
import numpy as np

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.stats import describe_values, format_table
from hfpref.core.step import Batch, MissingColumnError, RowError, Step, StepConfig, row_label
from hfpref.steps.generator_capability import (
    MEASURED,
    MEASURES,
    column_rows,
    measure_capabilities,
    measure_generator_capabilities,
)

SAME_SOURCE = C.SAME_SOURCE
GENERATOR_DELTA = C.GENERATOR_DELTA
CHOSEN_CAPABILITY = C.CHOSEN_CAPABILITY
REJECTED_CAPABILITY = C.REJECTED_CAPABILITY
UNKNOWN_POLICIES = ("error", "missing")


@dataclasses.dataclass
class GeneratorDeltaConfig(StepConfig):
    """Capability per generator name (larger = more capable) and what to do with an unlisted generator.

    ``capabilities``: a table ``{generator: number}`` *given* by the user (an arena rating, a benchmark
    score, a parameter count), or ``"measured"`` (the default): measured on the candidates the pairs come
    from by ``measure_capabilities`` (``measure``: ``auto`` = IFEval strict prompt-level accuracy when the
    candidates carry verdicts, else the mean reward). A measured config is resolved before it runs, with
    ``GeneratorDeltaTagger.measured(candidates)`` (a recipe's sweeps do this themselves); the resolved
    config keeps ``capability_source = "measured"`` and the table with its intervals for the manifest.
    ``capability_name`` says what the numbers are (e.g. ``"arena_elo"``, ``"params_b"``,
    ``"mean_reward"``). ``on_unknown``: ``"error"`` (default: a generator missing from the table is
    usually a typo) or ``"missing"`` (its delta is None). A None generator (source not recorded) always
    gives None.
    """

    capabilities: dict[str, float] | str = MEASURED
    capability_name: str = "capability"
    on_unknown: str = "error"
    measure: str = "auto"
    capability_source: str | None = None  # "given" or "measured"; set from ``capabilities`` when None
    intervals: dict[str, list[float]] | None = None  # measured: generator -> [low, high]

    def __post_init__(self) -> None:
        if self.capabilities == MEASURED:
            self.capability_source = MEASURED
        elif isinstance(self.capabilities, str):
            raise ValueError(
                f"GeneratorDeltaConfig.capabilities must be {MEASURED!r} or a table {{generator: number}}, "
                f"got {self.capabilities!r}"
            )
        elif not self.capabilities:
            raise ValueError(
                "GeneratorDeltaConfig.capabilities must give at least one generator's capability "
                f"(or be {MEASURED!r})"
            )
        else:
            for name, value in self.capabilities.items():
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    raise ValueError(
                        f"capability of generator {name!r} must be a finite number, got {value!r}"
                    )
            self.capability_source = self.capability_source or "given"
        if self.on_unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"on_unknown {self.on_unknown!r} is not one of {UNKNOWN_POLICIES}")
        if self.measure not in MEASURES:
            raise ValueError(f"measure {self.measure!r} is not one of {MEASURES}")


class GeneratorDeltaTagger(Step):
    """Tag pairs with their generators' capability gap.

    Input columns: ``chosen_generator``, ``rejected_generator``. Output columns: ``same_source``,
    ``chosen_capability``, ``rejected_capability``, ``generator_delta`` (see the module notes).
    """

    config_class: ClassVar[type[StepConfig]] = GeneratorDeltaConfig
    version: ClassVar[str] = (
        "2"  # 2: capabilities "measured" (the default) or given, with source and intervals
    )
    config: GeneratorDeltaConfig

    @classmethod
    def measured(cls, candidates: Any, **config: Any) -> GeneratorDeltaTagger:
        """A tagger whose capabilities are measured on ``candidates`` (``measure_capabilities`` with
        ``config["measure"]``, default auto), labelled "measured", with the intervals kept in its config."""
        table = measure_capabilities(candidates, measure=config.pop("measure", "auto"))
        return cls(capabilities_config(table, **config))

    def input_columns(self) -> list[str]:
        return [C.CHOSEN_GENERATOR, C.REJECTED_GENERATOR]

    def output_columns(self) -> list[str]:
        return [SAME_SOURCE, CHOSEN_CAPABILITY, REJECTED_CAPABILITY, GENERATOR_DELTA]

    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The input's features plus the tags', fixed so a batch of unknown generators keeps its types."""
        real = datasets.Value("float64")
        return datasets.Features(
            {
                **input_features,
                SAME_SOURCE: datasets.Value("bool"),
                CHOSEN_CAPABILITY: real,
                REJECTED_CAPABILITY: real,
                GENERATOR_DELTA: real,
            }
        )

    def capability(self, generator: Any, column: str, batch: Batch, i: int, indices: list[int] | None):
        if generator is None:
            return None
        if not isinstance(generator, str):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must be a string or None, "
                f"got {generator!r}"
            )
        if generator in self.config.capabilities:
            return float(self.config.capabilities[generator])
        if self.config.on_unknown == "missing":
            return None
        raise RowError(
            f"{self.name}: {row_label(batch, i, indices)} column {column!r} names generator {generator!r}, "
            f"which has no capability; known: {sorted(self.config.capabilities)} "
            "(set on_unknown='missing' to leave its delta empty)"
        )

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        if self.config.capabilities == MEASURED:
            raise UserError(
                f"{self.name}: capabilities 'measured' must be measured on the candidates before the step runs: "
                "build it with GeneratorDeltaTagger.measured(candidates), or give a table {generator: number}"
            )
        out: Batch = {name: [] for name in self.output_columns()}
        pairs = zip(batch[C.CHOSEN_GENERATOR], batch[C.REJECTED_GENERATOR], strict=True)
        for i, (chosen, rejected) in enumerate(pairs):
            a = self.capability(chosen, C.CHOSEN_GENERATOR, batch, i, indices)
            b = self.capability(rejected, C.REJECTED_GENERATOR, batch, i, indices)
            out[SAME_SOURCE].append(None if chosen is None or rejected is None else chosen == rejected)
            out[CHOSEN_CAPABILITY].append(a)
            out[REJECTED_CAPABILITY].append(b)
            out[GENERATOR_DELTA].append(None if a is None or b is None else a - b)
        return out


def capabilities_config(table: Mapping[str, Any], **config: Any) -> GeneratorDeltaConfig:
    """A ``GeneratorDeltaConfig`` holding a measured table (``measure_capabilities``), labelled as measured."""
    return GeneratorDeltaConfig(
        capabilities=dict(table["capabilities"]),
        capability_name=config.pop("capability_name", table["capability_name"]),
        measure=table["measure"],
        capability_source=MEASURED,
        intervals={g: list(v) for g, v in table["intervals"].items()},
        **config,
    )


# ---- dataset-level filters and summaries -----------------------------------------------------------


def filter_by_generator_delta(
    pairs: datasets.Dataset,
    *,
    min_delta: float | None = None,
    max_delta: float | None = None,
    same_source: bool | None = None,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tagged pairs with ``min_delta <= generator_delta <= max_delta`` and/or the given ``same_source``.

    Returns the kept pairs (original order) and counts of rows dropped by each reason, checked in this
    order: ``source_mismatch`` (``same_source`` given and different, or unknown), ``missing_delta`` (a
    delta bound given and no delta), ``delta_out_of_range``.
    """
    if min_delta is None and max_delta is None and same_source is None:
        raise ValueError("give min_delta, max_delta or same_source")
    for column in (SAME_SOURCE, GENERATOR_DELTA):
        if column not in pairs.column_names:
            raise MissingColumnError(
                f"column {column!r} is missing (run GeneratorDeltaTagger first); columns present: "
                f"{sorted(pairs.column_names)}"
            )
    reasons: dict[str, int] = {"source_mismatch": 0, "missing_delta": 0, "delta_out_of_range": 0}
    kept = []
    for i, (same, delta) in enumerate(column_rows(pairs, SAME_SOURCE, GENERATOR_DELTA)):
        if same_source is not None and same is not same_source:
            reasons["source_mismatch"] += 1
        elif (min_delta is not None or max_delta is not None) and delta is None:
            reasons["missing_delta"] += 1
        elif (min_delta is not None and delta < min_delta) or (max_delta is not None and delta > max_delta):
            reasons["delta_out_of_range"] += 1
        else:
            kept.append(i)
    return pairs.select(kept), {"kept": len(kept), **reasons}


DEFAULT_SUMMARY_METRICS = (C.REWARD_MARGIN, C.DCRM, "sample_delta", "f_des")


def delta_bin_edges(deltas: Sequence[float], bins: int) -> list[float]:
    """``bins`` quantile bins of the deltas: their edges, from the smallest delta to the largest (repeats merged)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not deltas:
        return []
    edges = np.quantile(np.asarray(deltas, dtype=np.float64), np.linspace(0, 1, bins + 1))
    return sorted(set(edges.tolist()))


def stratified_summary(
    pairs: datasets.Dataset | Mapping[str, Sequence],
    *,
    metrics: Sequence[str] | None = None,
    bins: int | Sequence[float] = 4,
) -> list[dict[str, Any]]:
    """Statistics (``hfpref.core.stats.describe_values``) of pair metrics per generator-delta stratum.

    Strata, in order: ``same source``; for pairs from different sources, one per bin of
    ``generator_delta`` — ``bins`` quantile bins (int) or these edges (a sorted list: bins
    ``[e0, e1), [e1, e2), ... [e_k-1, e_k]``, plus ``< e0`` and ``> e_k`` for deltas outside them);
    ``different source, no delta`` and ``unknown source``. Empty strata are left out. ``metrics``:
    columns to describe, by default those of ``reward_margin``, ``dcrm``, ``sample_delta``, ``f_des``
    that the pairs have. Each stratum: {"stratum", "rows", "generator_delta": stats, "metrics": {name:
    stats}}.
    """
    names = pairs.column_names if hasattr(pairs, "column_names") else list(pairs)
    metrics = _summary_metrics(names, metrics)
    same = list(pairs[SAME_SOURCE])
    deltas = list(pairs[GENERATOR_DELTA])
    values = {m: list(pairs[m]) for m in metrics}
    cross = [d for s, d in zip(same, deltas, strict=True) if s is False and d is not None]
    edges, open_ends = _strata_edges(cross, bins)
    labels = _bin_labels(edges, open_ends)
    members: dict[str, list[int]] = defaultdict(list)
    for i, (s, d) in enumerate(zip(same, deltas, strict=True)):
        if s is None:
            members["unknown source"].append(i)
        elif s:
            members["same source"].append(i)
        elif d is None:
            members["different source, no delta"].append(i)
        else:
            members[labels[_bin_of(d, edges, open_ends)]].append(i)
    order = ["same source", *labels, "different source, no delta", "unknown source"]
    return [
        {
            "stratum": stratum,
            "rows": len(members[stratum]),
            GENERATOR_DELTA: describe_values([deltas[i] for i in members[stratum]]),
            "metrics": {m: describe_values([values[m][i] for i in members[stratum]]) for m in metrics},
        }
        for stratum in order
        if members.get(stratum)
    ]


def _summary_metrics(names: Sequence[str], metrics: Sequence[str] | None) -> Sequence[str]:
    """The metric columns to describe (by default those of ``DEFAULT_SUMMARY_METRICS`` present), after
    checking that the tags and the metrics are there."""
    for column in (SAME_SOURCE, GENERATOR_DELTA):
        if column not in names:
            raise MissingColumnError(
                f"column {column!r} is missing (run GeneratorDeltaTagger first); columns present: {sorted(names)}"
            )
    if metrics is None:
        metrics = [m for m in DEFAULT_SUMMARY_METRICS if m in names]
    absent = [m for m in metrics if m not in names]
    if absent:
        raise MissingColumnError(f"metric column(s) {absent} are missing; columns present: {sorted(names)}")
    return metrics


def _strata_edges(cross: list[float], bins: int | Sequence[float]) -> tuple[list[float], bool]:
    """(bin edges, whether deltas outside them get open-ended bins): quantile edges of the cross-source
    deltas for an int, else the given edges (checked)."""
    if isinstance(bins, int):
        return delta_bin_edges(cross, bins), False
    edges = [float(e) for e in bins]
    if not edges or edges != sorted(edges) or len(set(edges)) != len(edges):
        raise ValueError(f"bin edges must be a strictly increasing, non-empty list, got {list(bins)}")
    return edges, True


def _bin_labels(edges: list[float], open_ends: bool) -> list[str]:
    if not edges:
        return []
    if len(edges) == 1:
        inner = [f"different source, Δ = {edges[0]:.4g}"]
    else:
        inner = [
            f"different source, Δ in [{lo:.4g}, {hi:.4g}{']' if k == len(edges) - 2 else ')'}"
            for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
        ]
    if open_ends:
        return [f"different source, Δ < {edges[0]:.4g}", *inner, f"different source, Δ > {edges[-1]:.4g}"]
    return inner


def _bin_of(delta: float, edges: list[float], open_ends: bool) -> int:
    """Index into ``_bin_labels``: bins are closed on the left, the last inner bin on both sides."""
    inner = max(len(edges) - 1, 1)
    if open_ends:
        if delta < edges[0]:
            return 0
        if delta > edges[-1]:
            return inner + 1
    position = int(np.searchsorted(np.asarray(edges), delta, side="right")) - 1
    return min(max(position, 0), inner - 1) + (1 if open_ends else 0)


def format_stratified_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of ``stratified_summary``: rows and the mean of each metric per stratum."""
    metrics = list(summary[0]["metrics"]) if summary else []
    headers = ["stratum", "rows", "mean Δ gen", *[f"mean {m}" for m in metrics]]
    rows = []
    for stratum in summary:
        cells = [stratum["stratum"], str(stratum["rows"]), _mean(stratum[GENERATOR_DELTA])]
        cells += [_mean(stratum["metrics"][m]) for m in metrics]
        rows.append(cells)
    return format_table(headers, rows)


def _mean(stats: Mapping[str, Any] | None) -> str:
    return "n/a" if not stats else f"{stats['mean']:.4g}"


__all__ = [
    "MEASURED",
    "GeneratorDeltaConfig",
    "GeneratorDeltaTagger",
    "filter_by_generator_delta",
    "format_stratified_summary",
    "capabilities_config",
    "measure_capabilities",
    "measure_generator_capabilities",
    "stratified_summary",
]
