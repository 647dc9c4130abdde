"""The pairs of a release in the distance / reward-margin plane (the DCRM paper's Figure 1, bottom).

One panel per strategy (strategies that picked exactly the same pairs share a panel): its kept pairs in
colour over every other strategy's pairs in grey, and its mean (e_Δ, r_Δ) as a large marker, so how
best-of-N² (small distance, positive margin), max_margin (large margin, any distance) and random differ is
visible at a glance. A last panel puts every strategy's mean side by side, the location the paper compares
datasets by (small distance and large margin is the ideal corner). Drawn with matplotlib's Agg backend, so
it works without a display.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PLOT_FILE = "pairs_distance_reward_margin.png"
PANEL_COLUMNS = 4
MARKERS = "os^vD<>pPX*h"


def _label(strategies: str | tuple[str, ...], width: int = 48) -> str:
    if isinstance(strategies, str):
        return strategies
    if len(strategies) == 1:
        return strategies[0]
    return textwrap.fill(" = ".join(strategies), width=width)


def plot_pairs_plane(
    points: Mapping[str | tuple[str, ...], tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    distance_label: str = "e_Δ (edit distance)",
    title: str | None = None,
) -> Path:
    """Save the figure as a PNG at ``path``.

    ``points``: strategy -> (edit distances, reward margins); a tuple of strategies as the key stands for
    strategies that picked exactly the same pairs, drawn once and labelled with all their names. None
    values (a maker that writes no metric) are left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed; also keeps the figure identical on any machine
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    strategies = list(points)
    arrays = [_finite_points(points[strategy]) for strategy in strategies]
    panels = len(strategies) + 1  # one per strategy, then the means
    columns = min(PANEL_COLUMNS, panels)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), constrained_layout=True)
    axes = np.atleast_1d(axes).ravel()
    all_x = np.concatenate([a[0] for a in arrays]) if arrays else np.zeros(0)
    all_y = np.concatenate([a[1] for a in arrays]) if arrays else np.zeros(0)
    means_ax = axes[len(strategies)]
    colours = plt.get_cmap("tab20" if len(strategies) > 10 else "tab10")
    for i, strategy in enumerate(strategies):
        style = {"color": colours(i % colours.N), "marker": MARKERS[i % len(MARKERS)]}
        _draw_strategy(axes[i], means_ax, arrays[i], (all_x, all_y), _label(strategy, width=36), style)
    for ax in axes[: len(strategies) + 1]:
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(distance_label, fontsize=8)
        ax.set_ylabel("r_Δ (reward margin)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(strategies) + 1 :]:
        ax.set_visible(False)
    if len(all_x):  # the strategy panels share one scale (set by hand: the means panel has its own)
        _share_scale(axes[: len(strategies)], all_x, all_y)
    means_ax.margins(0.15)
    means_ax.set_title("mean per strategy (ideal: left and high)", fontsize=9)
    if strategies:
        means_ax.legend(fontsize=6, loc="best", frameon=True)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same bytes on rerun
    plt.close(fig)
    return path


def _finite_points(points: tuple[Sequence[float | None], Sequence[float | None]]):
    """(x, y) as float arrays, without the points where either is None or not finite."""
    import numpy as np

    x = np.asarray([np.nan if v is None else v for v in points[0]], dtype=float)
    y = np.asarray([np.nan if v is None else v for v in points[1]], dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    return x[finite], y[finite]


def _draw_strategy(ax, means_ax, points, everything, label: str, style: Mapping[str, Any]) -> None:
    """One strategy's panel (its pairs in colour over all pairs in grey, its mean large) and its mean on
    the means panel."""
    x, y = points
    ax.scatter(*everything, s=6, color="0.85", marker=".", rasterized=True)
    ax.scatter(x, y, s=9, alpha=0.45, **style)
    if len(x):
        ax.scatter(x.mean(), y.mean(), s=120, edgecolor="black", zorder=3, **style)
        means_ax.scatter(x.mean(), y.mean(), s=90, edgecolor="black", label=f"{label} (n={len(x)})", **style)
    ax.set_title(f"{label} (n={len(x)})", fontsize=9)


def _share_scale(axes, all_x, all_y) -> None:
    """One scale for the strategy panels, spanning every pair, with 0 in view on both axes."""
    x_pad = 0.03 * (all_x.max() - all_x.min() or 1.0)
    y_pad = 0.06 * (all_y.max() - all_y.min() or 1.0)
    for ax in axes:
        ax.set_xlim(min(0.0, all_x.min()) - x_pad, all_x.max() + x_pad)
        ax.set_ylim(min(0.0, all_y.min()) - y_pad, max(0.0, all_y.max()) + y_pad)
