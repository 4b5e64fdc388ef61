"""Figures, computed elsewhere and only drawn here: each function takes a table and returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen needed; callers save the figure
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_MARKERS = {"size-first": "o", "speed-first": "s"}


def plot_quality_vs_size(table: pd.DataFrame, metric: str = "bleu") -> Figure:
    """Quality against size ratio, one line per strategy; each point labelled with its shape (E-D blocks).

    `table` needs the columns strategy, size_ratio, shape and `metric`.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, group in table.groupby("strategy", sort=False):
        group = group.sort_values("size_ratio")
        ax.plot(group["size_ratio"], group[metric], marker=_MARKERS.get(strategy, "^"), label=strategy)
        for row in group.itertuples():
            ax.annotate(row.shape, (row.size_ratio, getattr(row, metric)), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("size ratio (teacher parameters / assembly parameters)")
    ax.set_ylabel(metric.upper() if metric in ("bleu", "chrf") else metric)
    ax.set_title("One modular run, many model sizes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
