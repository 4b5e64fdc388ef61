"""Figures, computed elsewhere and only drawn here: each function takes a table and returns a matplotlib Figure."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure  # a Figure made directly needs no pyplot backend and no screen

_MARKERS = {"size-first": "o", "speed-first": "s"}


def plot_quality_vs_size(table: pd.DataFrame, metric: str = "bleu") -> Figure:
    """Quality against size ratio, one line per strategy; each point labelled with its shape (E-D blocks).

    `table` needs the columns strategy, size_ratio, shape and `metric`.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for strategy, group in table.groupby("strategy", sort=False):
        group = group.sort_values("size_ratio")
        ax.plot(group["size_ratio"], group[metric], marker=_MARKERS.get(strategy, "^"), label=strategy)
        for row in group.itertuples():
            ax.annotate(
                row.shape, (row.size_ratio, getattr(row, metric)), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("size ratio (teacher parameters / assembly parameters)")
    ax.set_ylabel(metric.upper() if metric in ("bleu", "chrf") else metric)
    ax.set_title("One modular run, many model sizes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_pareto(
    scored: pd.DataFrame,
    frontier: pd.DataFrame,
    rules: pd.DataFrame,
    *,
    metric: str,
    budget_latency_ms: float | None = None,
) -> Figure:
    """Two panels for capacity planning.

    Left, the search: proxy loss against predicted latency for every scored assembly (grey), the proxy frontier
    coloured by predicted memory, the size-first and speed-first points overlaid. Right, the validation: the
    metric against measured latency for the validated points (coloured by memory, each named), the validated
    frontier joined by a line, rule points marked. The latency budget is a dashed line on both.
    """
    fig = Figure(figsize=(13, 5.2))
    left, right = fig.subplots(1, 2)
    left.scatter(scored["latency_ms"], scored["proxy_loss"], s=4, color="0.8", label=f"scored ({len(scored)})")
    front = frontier[frontier["on_proxy_frontier"]]
    points = left.scatter(
        front["predicted_latency_ms"],
        front["proxy_loss"],
        s=14,
        c=front["memory_mb"],
        cmap="viridis",
        label=f"proxy frontier ({len(front)})",
    )
    for strategy, group in rules.groupby("strategy", sort=False):
        left.scatter(
            group["latency_ms"],
            group["proxy_loss"],
            marker=_MARKERS.get(strategy, "^"),
            s=30,
            facecolors="none",
            edgecolors="C3" if strategy == "size-first" else "C1",
            label=strategy,
        )
    left.set_xlabel("predicted latency (ms)")
    left.set_ylabel("proxy: teacher-forced loss (nats, lower is better)")
    left.set_title("Search (proxy)")
    fig.colorbar(points, ax=left, label="predicted peak memory (MB)")

    label = metric.upper() if metric in ("bleu", "chrf") else metric
    validated = frontier[frontier["validated"]]
    search_pts = validated[validated["rule"] == ""]
    right.scatter(
        search_pts["measured_latency_ms"],
        search_pts[metric],
        c=search_pts["memory_mb"],
        cmap="viridis",
        s=40,
        label="validated (search)",
    )
    for strategy in ("size-first", "speed-first"):
        group = validated[validated["rule"].str.contains(strategy, regex=False)]
        if not group.empty:
            right.scatter(
                group["measured_latency_ms"],
                group[metric],
                marker=_MARKERS[strategy],
                s=60,
                facecolors="none",
                edgecolors="C3" if strategy == "size-first" else "C1",
                label=f"{strategy} (best in budget)",
            )
    line = validated[validated["on_validated_frontier"]].sort_values("measured_latency_ms")
    right.plot(line["measured_latency_ms"], line[metric], color="C0", lw=1, label="validated frontier")
    for row in validated.itertuples():
        right.annotate(
            row.assembly,
            (row.measured_latency_ms, getattr(row, metric)),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    right.set_xlabel("measured latency (ms)")
    right.set_ylabel(f"validated {label} (higher is better)")
    right.set_title("Validation (real generation, measured latency)")
    for ax in (left, right):
        if budget_latency_ms is not None and budget_latency_ms != float("inf"):
            ax.axvline(budget_latency_ms, ls="--", color="C3", lw=1, label=f"budget {budget_latency_ms:g} ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
