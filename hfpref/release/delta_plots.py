"""The generator-delta plots of a release: the sweep analysis and the sample-delta distributions.

Drawn by ``write_release`` when the recipe ran delta sweeps (``hfpref.steps.delta_sweep``) or a judge scored
the sample delta of some config; their file names go into the manifest's ``delta_plots`` for the card.
matplotlib's Agg backend, as ``hfpref.release.plots``, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hfpref.steps.delta_sweep import SAMPLE_DELTA

SWEEP_PLOT_FILE = "delta_sweep.png"
SAMPLE_DELTA_PLOT_FILE = "sample_delta_distributions.png"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display; the same figure on any machine)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Any) -> Any:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_sweeps(sweeps: Mapping[str, Mapping[str, Any]], path: Any, title: str | None = None) -> Any:
    """Per sweep, one panel: x = each level's generator delta, y = its mean reward margin (and mean sample
    delta on a second axis when a judge scored the pairs), a point per level labelled by its rejected
    generator. ``sweeps``: the manifest's ``delta_sweeps``."""
    names = list(sweeps)
    figure, axes = _pyplot().subplots(
        1, max(len(names), 1), figsize=(5.5 * max(len(names), 1), 4.2), squeeze=False
    )
    for axis, name in zip(axes[0], names, strict=False):
        rows = [r for r in sweeps[name]["analysis"]["levels"] if r["generator_delta"] is not None]
        x = [r["generator_delta"] for r in rows]
        margin = [r["reward_margin_mean"] for r in rows]
        axis.plot(x, margin, "o-", color="tab:blue", label="mean reward margin")
        for r, xv, yv in zip(rows, x, margin, strict=True):
            if yv is not None:
                axis.annotate(r["rejected_generator"] or r["config"], (xv, yv), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")  # fmt: skip
        sample = [r["sample_delta_mean"] for r in rows]
        if any(v is not None for v in sample):
            twin = axis.twinx()
            twin.plot(x, sample, "s--", color="tab:orange", label="mean sample delta (judge)")
            twin.set_ylabel("mean sample delta (judge)", color="tab:orange")
        axis.set_xlabel(
            f"generator delta ({sweeps[name]['capabilities'].get('capability_name', 'capability')})"
        )
        axis.set_ylabel("mean reward margin", color="tab:blue")
        axis.set_title(f"{name}: chosen {sweeps[name]['chosen']}", fontsize=9)
        axis.axhline(0, color="grey", linewidth=0.5)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def sample_delta_values(
    pairs_by_config: Mapping[str, Any], column: str = SAMPLE_DELTA
) -> dict[str, list[float]]:
    """config -> its known sample deltas, for the configs that have the column (a judge ran on them)."""
    out = {}
    for name, pairs in pairs_by_config.items():
        if column in pairs.column_names:
            values = [float(v) for v in pairs[column] if v is not None and math.isfinite(v)]
            if values:
                out[name] = values
    return out


def plot_sample_deltas(values: Mapping[str, Sequence[float]], path: Any, title: str | None = None) -> Any:
    """One box per config: the distribution of its pairs' sample deltas (judge score of chosen − rejected)."""
    names = list(values)
    figure, axis = _pyplot().subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    axis.boxplot([values[n] for n in names], showmeans=True)
    axis.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("sample delta (judge)")
    axis.axhline(0, color="grey", linewidth=0.5)
    if title:
        axis.set_title(title, fontsize=9)
    return _save(figure, path)
