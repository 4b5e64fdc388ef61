"""Figures, computed elsewhere and only drawn here: each function takes a table and returns a matplotlib Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # a Figure made directly needs no pyplot backend and no screen

from modformer.modular.assembly import Assembly
from modformer.planner.frontier import frontier_2d

_MARKERS = {"size-first": "o", "speed-first": "s"}
_RULE_COLOURS = {"size-first": "C3", "speed-first": "C1"}


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


_TARGET_MARKERS = ("o", "D", "^", "v", "P", "X")
_TARGET_SHORT = {"torch:fp32": "torch", "ctranslate2:float32": "ct2", "ctranslate2:int8": "ct2-int8"}


def target_label(target: str) -> str:
    """A short name for a serving target on a figure: torch, torch-bf16, ct2, ct2-int8, ..."""
    engine, _, compute = target.partition(":")
    return _TARGET_SHORT.get(target, f"{'ct2' if engine == 'ctranslate2' else engine}-{compute}")


def short_labels(assemblies: pd.Series, shapes: pd.Series | None = None) -> pd.Series:
    """A short name per assembly for a figure: its shape ``E-D`` (block counts), with a letter where two differ
    only in their blocks (``6-5a``, ``6-5b``, in the order given). `shapes`, where the table has them, are used as is.
    """
    if shapes is None:
        shapes = pd.Series([Assembly.parse(a).shape for a in assemblies], index=assemblies.index)
    labels = shapes.astype(str).copy()
    for _, same in shapes.groupby(shapes.astype(str), sort=False):
        distinct = list(dict.fromkeys(assemblies[same.index]))
        if len(distinct) > 1:
            for idx in same.index:
                labels[idx] += "abcdefghijklmnopqrstuvwxyz"[distinct.index(assemblies[idx]) % 26]
    return labels


# Where a label may go around its point: a direction (in units of the marker's radius plus a little) and the
# text's alignment there, tried in this order.
_LABEL_SPOTS = (
    (0.75, 0.75, "left", "bottom"),
    (0.75, -0.75, "left", "top"),
    (-0.75, 0.75, "right", "bottom"),
    (-0.75, -0.75, "right", "top"),
    (0.0, 1.0, "center", "bottom"),
    (0.0, -1.0, "center", "top"),
    (1.1, 0.0, "left", "center"),
    (-1.1, 0.0, "right", "center"),
    (0.75, 2.5, "left", "bottom"),
    (-0.75, -2.5, "right", "top"),
)


def _place_labels(ax, x, y, labels, radii, *, paths=(), fontsize: float = 7.0, force: int = 1) -> list:
    """Annotate each (x, y) with its label at the first spot around it that overlaps no label placed before, no
    marker (`radii`: each point's marker radius, in points) and no line of `paths` (polylines' vertices in data
    coordinates, e.g. the frontier's steps, the budget). A label with no free spot is left off, except the first
    `force` (those are put at the first spot anyway).

    Sizes are estimated (characters x font size), in points, so the layout does not depend on the dpi; call after
    the axes' limits and the figure's layout are final.
    """
    x, y, radii = np.asarray(x, float), np.asarray(y, float), np.asarray(radii, float)
    ax.autoscale_view()
    scale = 72.0 / ax.figure.dpi
    xy = ax.transData.transform(np.column_stack([x, y])) * scale
    box = ax.get_window_extent()
    frame = (box.x0 * scale, box.y0 * scale, box.x1 * scale, box.y1 * scale)
    taken = [(px - r, py - r, px + r, py + r) for (px, py), r in zip(xy, radii, strict=True)]
    for path in paths:
        corners = ax.transData.transform(np.asarray(path, float).reshape(-1, 2)) * scale
        for a, b in zip(corners[:-1], corners[1:], strict=False):
            steps = int(np.hypot(*(b - a)) // 2) + 2  # a small square every 2 points along each segment
            taken += [(px - 1, py - 1, px + 1, py + 1) for px, py in np.linspace(a, b, steps)]
    texts = []
    for n, ((px, py), text) in enumerate(zip(xy, labels, strict=True)):
        width, height = 0.62 * fontsize * len(text), 1.15 * fontsize
        reach = radii[n] + 1.5
        spot = None
        for ux, uy, ha, va in _LABEL_SPOTS:
            dx, dy = ux * reach, uy * reach
            x0 = px + dx - {"left": 0, "center": width / 2, "right": width}[ha]
            y0 = py + dy - {"bottom": 0, "center": height / 2, "top": height}[va]
            rect = (x0, y0, x0 + width, y0 + height)
            inside = rect[0] >= frame[0] and rect[1] >= frame[1] and rect[2] <= frame[2] and rect[3] <= frame[3]
            if inside and not any(_overlap(rect, other) for k, other in enumerate(taken) if k != n):
                spot = (dx, dy, ha, va, rect)
                break
        if spot is None and n < force:
            ux, uy, ha, va = _LABEL_SPOTS[0]
            dx, dy = ux * reach, uy * reach
            spot = (dx, dy, ha, va, (px + dx, py + dy, px + dx + width, py + dy + height))
        if spot is None:
            continue
        dx, dy, ha, va, rect = spot
        taken.append(rect)
        texts.append(
            ax.annotate(
                text,
                (x[n], y[n]),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
                fontweight="bold" if n < force else "normal",
            )
        )
    return texts


def _steps_post(x, y) -> np.ndarray:
    """The corners of the path matplotlib draws for `drawstyle="steps-post"` through (x, y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return np.column_stack([x, y])
    corners = np.empty((2 * len(x) - 1, 2))
    corners[0::2] = np.column_stack([x, y])
    corners[1::2] = np.column_stack([x[1:], y[:-1]])
    return corners


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _chosen_assembly(validated: pd.DataFrame, metric: str) -> str | None:
    """As the planner chooses: the validated, in-budget point with the best metric (ties: lower predicted latency)."""
    ok = validated[validated["within_budget"]] if "within_budget" in validated else validated
    if ok.empty:
        return None
    return str(ok.sort_values([metric, "predicted_latency_ms"], ascending=[False, True]).iloc[0]["assembly"])


def plot_pareto(
    scored: pd.DataFrame,
    frontier: pd.DataFrame,
    rules: pd.DataFrame,
    *,
    metric: str,
    budget_latency_ms: float | None = None,
    chosen: str | None = None,
    chosen_target: str | None = None,
) -> Figure:
    """Two panels for capacity planning.

    Left, the search: proxy loss against predicted latency for every scored assembly (grey), the proxy frontier
    coloured by predicted memory, the size-first and speed-first points overlaid. Right, the validation: the
    metric against measured latency for the validated points, coloured by predicted memory on the same scale; the
    line is their 2-D frontier (`frontier_2d`: quality rises with latency along it), a ring marks the points on the
    frontier of all the plan's objectives (memory included), which need not lie on the line. Points are named by
    shape (``E-D`` blocks; the report's table gives the full assembly); the chosen assembly (`chosen`, by default
    the best validated point within the budget, as the planner picks) is starred. The latency budget is a dashed
    line on both.
    """
    fig = Figure(figsize=(13, 5.2))
    left, right = fig.subplots(1, 2)
    front = frontier[frontier["on_proxy_frontier"]]
    validated = frontier[frontier["validated"]]
    memory = pd.concat([front["memory_mb"], validated["memory_mb"]]).dropna()
    norm = Normalize(float(memory.min()), float(memory.max())) if len(memory) else Normalize()

    left.scatter(scored["latency_ms"], scored["proxy_loss"], s=4, color="0.8", label=f"scored ({len(scored)})")
    points = left.scatter(
        front["predicted_latency_ms"],
        front["proxy_loss"],
        s=14,
        c=front["memory_mb"],
        cmap="viridis",
        norm=norm,
        label=f"proxy frontier ({len(front)})",
    )
    for strategy, group in rules.groupby("strategy", sort=False):
        left.scatter(
            group["latency_ms"],
            group["proxy_loss"],
            marker=_MARKERS.get(strategy, "^"),
            s=30,
            facecolors="none",
            edgecolors=_RULE_COLOURS.get(strategy, "C2"),
            label=strategy,
        )
    left.set_xlabel("predicted latency (ms)")
    left.set_ylabel("proxy: teacher-forced loss (nats, lower is better)")
    left.set_title("Search (proxy)")
    fig.colorbar(points, ax=left, label="predicted peak memory (MB)")

    label = metric.upper() if metric in ("bleu", "chrf") else metric
    shapes = validated.get("shape")
    served = validated["target"] if "target" in validated else pd.Series("torch:fp32", index=validated.index)
    if shapes is None:
        shapes = validated["assembly"].map(lambda a: Assembly.parse(a).shape)
    if served.nunique() > 1:  # name the target beside the shape: "6-6 ct2-int8"
        shapes = shapes.astype(str) + " " + served.map(target_label)
    names = short_labels(validated["assembly"] + " @ " + served, shapes)
    for n, (target, group) in enumerate(validated.groupby(served, sort=False)):
        right.scatter(
            group["measured_latency_ms"],
            group[metric],
            c=group["memory_mb"],
            cmap="viridis",
            norm=norm,
            s=40,
            marker=_TARGET_MARKERS[n % len(_TARGET_MARKERS)],
            zorder=3,
            label=f"{target} ({len(group)})",
        )
    line = frontier_2d(validated, metric, "measured_latency_ms")
    right.plot(
        line["measured_latency_ms"],
        line[metric],
        drawstyle="steps-post",
        color="C0",
        lw=1.2,
        zorder=2,
        label=f"frontier: {label} vs latency ({len(line)})",
    )
    ringed = validated[validated["on_validated_frontier"].astype(bool)]
    if not ringed.empty:
        right.scatter(
            ringed["measured_latency_ms"],
            ringed[metric],
            s=130,
            facecolors="none",
            edgecolors="0.2",
            linewidths=0.8,
            zorder=4,
            label="frontier of all objectives (memory too)",
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
                edgecolors=_RULE_COLOURS[strategy],
                linewidths=1.2,
                zorder=4,
                label=f"{strategy} (best in budget)",
            )
    pick = chosen if chosen is not None else _chosen_assembly(validated, metric)
    best = validated[validated["assembly"] == pick]
    if chosen_target is not None:
        best = best[served[best.index] == chosen_target]
    best = best.head(1)
    if not best.empty:
        right.scatter(
            best["measured_latency_ms"],
            best[metric],
            marker="*",
            s=220,
            color="gold",
            edgecolors="k",
            linewidths=0.7,
            zorder=5,
            label=f"chosen: {names[best.index[0]]}",
        )
    right.set_xlabel("measured latency (ms)")
    right.set_ylabel(f"validated {label} (higher is better)")
    right.set_title("Validation (real generation, measured latency)")
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=right, label="predicted peak memory (MB)")
    for ax in (left, right):
        if budget_latency_ms is not None and budget_latency_ms != float("inf"):
            ax.axvline(budget_latency_ms, ls="--", color="C3", lw=1, label=f"budget {budget_latency_ms:g} ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    right.margins(x=0.08, y=0.1)  # room for the labels of the outermost points
    fig.tight_layout()
    # Labels last, once the layout is fixed: the chosen point first (always named), then the 2-D frontier, the
    # rule points, the rest; a label that would cover another is left off.
    rank = pd.Series(3, index=validated.index)
    rank[validated["rule"] != ""] = 2
    rank[line.index] = 1
    rank[best.index] = 0
    order = rank.sort_values(kind="stable").index
    paths = [_steps_post(line["measured_latency_ms"], line[metric])]
    if budget_latency_ms is not None and budget_latency_ms != float("inf"):
        paths.append([(budget_latency_ms, y) for y in right.get_ylim()])
    radius = pd.Series(np.sqrt(40) / 2, index=validated.index)  # scatter sizes are areas in points squared
    radius[validated["rule"] != ""] = np.sqrt(60) / 2
    radius[ringed.index] = np.sqrt(130) / 2
    radius[best.index] = np.sqrt(220) / 2 * 0.8  # a star fills less than its circle
    _place_labels(
        right,
        validated.loc[order, "measured_latency_ms"],
        validated.loc[order, metric],
        list(names[order]),
        radius[order],
        paths=paths,
        force=len(best),
    )
    return fig
