"""The pairs of a release in the distance / reward-margin plane (the DCRM paper's Figure 1, bottom).

Left panel: every kept pair, one colour per strategy. Right panel: each strategy's mean e_Δ and mean
r_Δ, the location the paper compares datasets by (small distance and large margin is the ideal corner).
Drawn with matplotlib's Agg backend, so it works without a display.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

PLOT_FILE = "pairs_distance_reward_margin.png"


def _label(strategies: str | tuple[str, ...]) -> str:
    if isinstance(strategies, str):
        return strategies
    if len(strategies) == 1:
        return strategies[0]
    return textwrap.fill(" = ".join(strategies), width=48)


def plot_pairs_plane(
    points: Mapping[str | tuple[str, ...], tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    distance_label: str = "e_Δ (edit distance)",
    title: str | None = None,
) -> Path:
    """Save the figure as a PNG at ``path``.

    ``points``: strategy -> (edit distances, reward margins); a tuple of strategies as the key stands for
    strategies that picked exactly the same pairs, drawn once and labelled with all their names.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed; also keeps the figure identical on any machine
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    strategies = list(points)
    labels = [_label(s) for s in strategies]
    colours = plt.get_cmap("tab20" if len(strategies) > 10 else "tab10")
    markers = "os^vD<>pPX*h"
    fig, (ax_all, ax_mean) = plt.subplots(1, 2, figsize=(15, 5.5), constrained_layout=True)
    means_x, means_y = [0.0], [0.0]
    # larger sets first, so a smaller set drawn over it (often its subset) stays visible
    order = sorted(range(len(strategies)), key=lambda k: -len(points[strategies[k]][0]))
    for i in order:
        strategy = strategies[i]
        distances = np.asarray(points[strategy][0], dtype=float)
        margins = np.asarray(points[strategy][1], dtype=float)
        colour = colours(i % colours.N)
        marker = markers[i % len(markers)]
        ax_all.scatter(distances, margins, s=10, alpha=0.35, color=colour, marker=marker)
        if len(distances):
            means_x.append(float(distances.mean()))
            means_y.append(float(margins.mean()))
            ax_mean.scatter(
                distances.mean(),
                margins.mean(),
                s=90,
                color=colour,
                marker=marker,
                edgecolor="black",
                label=f"{labels[i]} (n={len(distances)})",
            )
    for ax in (ax_all, ax_mean):
        ax.set_xlabel(distance_label)
        ax.set_ylabel("r_Δ (reward margin)")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    ax_all.set_title("every kept pair (colours as in the legend)")
    ax_mean.set_title("mean per strategy (ideal: left and high)")
    # the axes include 0 (a zoomed axis would exaggerate small differences) and leave room for the markers
    x_span = max(means_x) - min(means_x) or 1.0
    y_span = max(means_y) - min(means_y) or 1.0
    ax_mean.set_xlim(min(means_x) - 0.08 * x_span, max(means_x) + 0.12 * x_span)
    ax_mean.set_ylim(min(means_y) - 0.12 * y_span, max(means_y) + 0.12 * y_span)
    ax_mean.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=True)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: same bytes on rerun
    plt.close(fig)
    return path
