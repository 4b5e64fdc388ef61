"""Figures, computed elsewhere and only drawn here: each function takes a table and returns a matplotlib Figure."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # a Figure made directly needs no pyplot backend and no screen
from matplotlib.ticker import FuncFormatter

from modformer.modular.assembly import Assembly
from modformer.planner.frontier import frontier_2d

_MARKERS = {"size-first": "o", "speed-first": "s"}
_RULE_COLOURS = {"size-first": "C3", "speed-first": "C1"}


def plot_quality_vs_size(table: pd.DataFrame, metric: str = "bleu") -> Figure:
    """Quality against how many times smaller than the teacher each assembly is, one line per strategy.

    `table` needs the columns strategy, size_ratio, shape and `metric` (and assembly, to find the teacher: the row
    whose blocks are all the teacher's own layers; without it, the row of size ratio 1). The quality axis starts at
    0, so that a spread of a point or two reads as what it is, not as a curve; the size axis starts at the teacher
    (1x). The teacher is a star with a dotted line at its score; each point is named by its shape (E-D blocks).
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    label = metric_label(metric)
    for strategy, group in table.groupby("strategy", sort=False):
        group = group.sort_values("size_ratio")
        ax.plot(group["size_ratio"], group[metric], marker=_MARKERS.get(strategy, "^"), label=strategy, zorder=3)
    is_teacher = table["assembly"].map(is_teacher_assembly) if "assembly" in table else table["size_ratio"] == 1
    teacher = table[is_teacher].head(1)
    if not teacher.empty:
        score = float(teacher[metric].iloc[0])
        name = f"teacher {teacher['shape'].iloc[0]}"
        ax.axhline(score, ls=":", color="0.35", lw=1, label=f"{name}: {label} {score:.2f}", zorder=1)
        ax.scatter([1.0], [score], marker="*", s=220, color="gold", edgecolors="k", linewidths=0.7, zorder=5)
    ax.set_xlabel("times smaller than the teacher (its parameters / the assembly's)")
    ax.set_ylabel(f"{label} (higher is better)")
    ax.set_title("Quality as the model shrinks: one modular run, many sizes")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    widest = max(float(table["size_ratio"].max()), 1.0)
    span = max(widest - 1.0, 0.5)
    ax.set_xlim(1.0 - 0.06 * span, widest + 0.12 * span)
    ax.set_ylim(*_from_zero(table[metric]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    points = table.drop_duplicates(subset=["size_ratio", metric, "shape"])
    names = ["teacher" if t else str(s) for s, t in zip(points["shape"], is_teacher[points.index], strict=True)]
    order = np.argsort([n != "teacher" for n in names], kind="stable")  # the teacher first, always named
    _place_labels(
        ax,
        points["size_ratio"].to_numpy()[order],
        points[metric].to_numpy()[order],
        [names[k] for k in order],
        np.full(len(points), 4.0),
        force=int(not teacher.empty),
    )
    return fig


def metric_label(metric: str) -> str:
    """How a metric is named on a figure or in a report: BLEU, chrF, ROUGE-L, ..."""
    names = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
    return {**names, "exact_match": "exact match (%)"}.get(metric, metric)


def is_teacher_assembly(assembly: str) -> bool:
    """Whether every block of `assembly` is one teacher layer: the teacher itself."""
    a = Assembly.parse(assembly)
    return set(a.encoder) == set(a.decoder) == {1}


def _from_zero(values: pd.Series) -> tuple[float, float]:
    """Limits for a score axis that starts at 0: room for labels above the highest value, and a sliver below 0 so
    that a point scoring 0 shows whole (1 is the top when nothing scores above 0)."""
    high = float(np.nanmax(values.to_numpy(dtype=float))) if values.notna().any() else 0.0
    top = high * 1.15 if high > 0 else 1.0
    return -0.02 * top, top


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


@dataclass(frozen=True)
class TeacherReference:
    """The teacher as a plan records it: its shape always; its latency (under torch fp32, timed in the validation
    rounds) and parameters where validated points carry their ratios to it; its score only where the teacher itself
    was among the validated points."""

    shape: str
    latency_ms: float | None = None  # measured
    predicted_latency_ms: float | None = None
    params: float | None = None
    score: float | None = None


def teacher_reference(frontier: pd.DataFrame, metric: str) -> TeacherReference | None:
    """The teacher's figures, read back from the frontier table (None for an empty table)."""
    if frontier.empty:
        return None
    first = Assembly.parse(str(frontier["assembly"].iloc[0]))
    shape = f"{sum(first.encoder)}-{sum(first.decoder)}"
    validated = frontier[frontier["validated"].astype(bool)] if "validated" in frontier else frontier.iloc[0:0]

    def median(values: pd.Series) -> float | None:
        values = values.dropna()
        return float(values.median()) if len(values) else None

    latency = None
    if {"measured_latency_ms", "measured_speed_ratio"} <= set(validated.columns):
        latency = median(validated["measured_latency_ms"] * validated["measured_speed_ratio"])
    predicted = params = None
    if {"predicted_latency_ms", "speed_ratio"} <= set(frontier.columns):  # speed_ratio: the teacher's over this one
        predicted = median(frontier["predicted_latency_ms"] * frontier["speed_ratio"])
    if {"params", "size_ratio"} <= set(frontier.columns):
        params = median(frontier["params"] * frontier["size_ratio"])
    own = validated[validated["assembly"].map(is_teacher_assembly)]
    if "target" in own:
        own = own[own["target"].str.startswith("torch:fp32")]
    score = float(own[metric].iloc[0]) if len(own) and pd.notna(own[metric].iloc[0]) else None
    if len(own) and pd.notna(own["measured_latency_ms"].iloc[0]):
        latency = float(own["measured_latency_ms"].iloc[0])
    return TeacherReference(shape, latency_ms=latency, predicted_latency_ms=predicted, params=params, score=score)


def chosen_row(validated: pd.DataFrame, metric: str, chosen: str | None, target: str | None):
    """The index of the chosen point among `validated`: the named assembly (in `target`, where given), else as the
    planner chooses (`planner.plan.choose`): the in-budget point with the best metric, ties to lower predicted
    latency. None when there is no such point."""
    if chosen is not None:
        rows = validated[validated["assembly"] == chosen]
        if target is not None and "target" in rows:
            rows = rows[rows["target"] == target]
    else:
        rows = validated[validated["within_budget"]] if "within_budget" in validated else validated
        rows = rows.sort_values([metric, "predicted_latency_ms"], ascending=[False, True])
    return rows.index[0] if len(rows) else None


def _has_limit(value: float | None) -> bool:
    return value is not None and not math.isinf(value)


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
    the best validated point within the budget, as the planner picks) is a star named "chosen: ...".

    Both latency axes start at 0 and the metric's at 0, so that distances read as proportions; the teacher's
    measured latency is a dotted line (with its score, where the plan validated the teacher, a cross), and the top
    axis on the right gives latency as a multiple of the teacher's. The latency budget is a dashed line on both.
    """
    fig = Figure(figsize=(12, 5.4))
    left, right = fig.subplots(1, 2)
    front = frontier[frontier["on_proxy_frontier"]]
    validated = frontier[frontier["validated"]]
    memory = pd.concat([front["memory_mb"], validated["memory_mb"]]).dropna()
    norm = Normalize(float(memory.min()), float(memory.max())) if len(memory) else Normalize()
    teacher = teacher_reference(frontier, metric)
    budget = budget_latency_ms if _has_limit(budget_latency_ms) else None

    _draw_search(left, scored, front, rules, norm)
    names, best, line, ringed = _draw_validation(right, validated, metric, norm, chosen, chosen_target, teacher)
    for ax in (left, right):
        fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="predicted peak memory (MB)")
    teacher_ms = (teacher.predicted_latency_ms, teacher.latency_ms) if teacher else (None, None)
    for ax, at in zip((left, right), teacher_ms, strict=True):
        drawn = ax is right and teacher is not None and teacher.score is not None  # its cross marks it there
        if at is not None and not drawn:
            ax.axvline(at, ls=":", color="0.2", lw=1.3, label=f"teacher {teacher.shape} (torch:fp32, {at:.3g} ms)")
        if budget is not None:
            ax.axvline(budget, ls="--", color="C3", lw=1, label=f"budget {budget:.4g} ms")
        ax.grid(alpha=0.3)
        ax.set_xlim(0, _right_limit(ax, [budget, at]))
    right.set_ylim(*_from_zero(pd.concat([validated[metric], pd.Series([teacher.score if teacher else None])])))
    if teacher is not None and teacher.latency_ms:
        t = teacher.latency_ms
        top = right.secondary_xaxis("top", functions=(lambda x: x / t, lambda r: r * t))
        top.set_xlabel(f"latency as a multiple of the teacher's ({t:.3g} ms)", fontsize=8)
        top.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
        top.tick_params(labelsize=8)
    left.legend(fontsize=7.5)
    right.legend(fontsize=7.5)
    fig.tight_layout()
    # Labels last, once the layout is fixed: the chosen point first (always named), then the teacher, the 2-D
    # frontier, the rule points, the rest; a label that would cover another is left off.
    rank = pd.Series(4, index=validated.index)
    rank[validated["rule"] != ""] = 3
    rank[line.index] = 2
    rank[names.str.startswith("teacher")] = 1
    if best is not None:
        rank[best] = 0
        names[best] = f"chosen: {names[best]}"
    order = rank.sort_values(kind="stable").index
    paths = [_steps_post(line["measured_latency_ms"], line[metric])]
    teacher_line = teacher_ms[1] if teacher is not None and teacher.score is None else None
    paths += [[(x, y) for y in right.get_ylim()] for x in (budget, teacher_line) if x is not None]
    radius = pd.Series(np.sqrt(40) / 2, index=validated.index)  # scatter sizes are areas in points squared
    radius[validated["rule"] != ""] = np.sqrt(60) / 2
    radius[ringed.index] = np.sqrt(130) / 2
    if best is not None:
        radius[best] = np.sqrt(220) / 2 * 0.8  # a star fills less than its circle
    _place_labels(
        right,
        validated.loc[order, "measured_latency_ms"],
        validated.loc[order, metric],
        list(names[order]),
        radius[order],
        paths=paths,
        fontsize=8,
        force=int(best is not None),
    )
    return fig


def _right_limit(ax, lines: list[float | None]) -> float:
    """The axis' right end: past its data and every vertical line to draw, with room for a label beside the last."""
    ax.autoscale_view()
    return max([ax.get_xlim()[1], *(1.1 * x for x in lines if x is not None)])


def _draw_search(ax, scored, front, rules, norm) -> None:
    ax.scatter(scored["latency_ms"], scored["proxy_loss"], s=4, color="0.8", label=f"scored ({len(scored)})")
    ax.scatter(
        front["predicted_latency_ms"],
        front["proxy_loss"],
        s=14,
        c=front["memory_mb"],
        cmap="viridis",
        norm=norm,
        label=f"proxy frontier ({len(front)})",
    )
    for strategy, group in rules.groupby("strategy", sort=False):
        ax.scatter(
            group["latency_ms"],
            group["proxy_loss"],
            marker=_MARKERS.get(strategy, "^"),
            s=30,
            facecolors="none",
            edgecolors=_RULE_COLOURS.get(strategy, "C2"),
            label=strategy,
        )
    ax.set_xlabel("predicted latency (ms)")
    # The loss has no useful zero (a perfect model): its axis stays fitted to the points, unlike the right panel's.
    ax.set_ylabel("proxy: teacher-forced loss (nats, lower is better)")
    ax.set_title("Search (proxy)")


def _draw_validation(ax, validated, metric, norm, chosen, chosen_target, teacher):
    """The right panel's points and lines; returns (each point's name, the chosen row's index or None, the 2-D
    frontier rows, the rows ringed as on the frontier of all objectives)."""
    label = metric_label(metric)
    shapes = validated.get("shape")
    served = validated["target"] if "target" in validated else pd.Series("torch:fp32", index=validated.index)
    if shapes is None:
        shapes = validated["assembly"].map(lambda a: Assembly.parse(a).shape)
    shapes = shapes.astype(str).where(~validated["assembly"].map(is_teacher_assembly).astype(bool), "teacher")
    names = shapes.copy()
    for _, group in shapes.groupby(served, sort=False):  # letters for one shape twice in one target: "6-5a", "6-5b"
        names[group.index] = short_labels(validated.loc[group.index, "assembly"], group)
    if served.nunique() > 1:  # name the target beside the shape: "6-6 ct2-int8"
        names = names + " " + served.map(target_label)
    for n, (target, group) in enumerate(validated.groupby(served, sort=False)):
        ax.scatter(
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
    ax.plot(
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
        ax.scatter(
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
            ax.scatter(
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
    if teacher is not None and teacher.score is not None and teacher.latency_ms is not None:
        ax.scatter(
            [teacher.latency_ms],
            [teacher.score],
            marker="X",
            s=90,
            color="0.15",
            zorder=5,
            label=f"teacher {teacher.shape}: {label} {teacher.score:.2f} at {teacher.latency_ms:.3g} ms",
        )
    best = chosen_row(validated, metric, chosen, chosen_target)
    if best is not None:
        ax.scatter(
            validated.loc[[best], "measured_latency_ms"],
            validated.loc[[best], metric],
            marker="*",
            s=220,
            color="gold",
            edgecolors="k",
            linewidths=0.7,
            zorder=6,
            label=f"chosen: {names[best]}",
        )
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel(f"validated {label} (higher is better)")
    ax.set_title("Validation (real generation, measured latency)")
    return names, best, line, ringed
