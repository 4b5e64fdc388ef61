"""The plan's Pareto figure, on small hand-made tables with the planner's columns (see planner/plan.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from modformer.planner.frontier import frontier_2d, pareto_mask
from modformer.plots import plot_pareto, plot_quality_vs_size, short_labels

BUDGET_MS = 18.0

# assembly, measured latency (ms), BLEU, predicted memory (MB), rule
VALIDATED = [
    ("enc=6,6 dec=6,6", 5.0, 10.0, 50.0, ""),
    ("enc=6,2,2,2 dec=6,6", 7.0, 12.0, 65.0, ""),
    ("enc=3,3,3,3 dec=6,6", 8.0, 15.0, 70.0, "size-first"),
    # Least memory of all: on the 3-objective frontier, yet 4-2 above is faster and better: not on the 2-D line.
    ("enc=3,3,6 dec=3,3,3,3", 9.0, 13.0, 40.0, ""),
    ("enc=2,2,2,2,2,2 dec=6,6", 12.0, 20.0, 90.0, "speed-first"),
    ("enc=2,2,2,2,2,2 dec=2,2,2,2,2,2", 14.0, 21.0, 100.0, ""),
    ("enc=6,3,3 dec=2,2,2,2,1,3", 15.0, 19.0, 95.0, ""),
    ("enc=1,1,1,1,1,1,1,1,1,1,1,1 dec=1,1,1,1,1,1,1,1,1,1,1,1", 20.0, 24.0, 120.0, "size-first/speed-first"),
]
ON_2D = ["enc=6,6 dec=6,6", "enc=6,2,2,2 dec=6,6", "enc=3,3,3,3 dec=6,6", "enc=2,2,2,2,2,2 dec=6,6"]
ON_2D += ["enc=2,2,2,2,2,2 dec=2,2,2,2,2,2", "enc=1,1,1,1,1,1,1,1,1,1,1,1 dec=1,1,1,1,1,1,1,1,1,1,1,1"]
MEMORY_ONLY = "enc=3,3,6 dec=3,3,3,3"


@pytest.fixture
def tables():
    rows = pd.DataFrame(VALIDATED, columns=["assembly", "measured_latency_ms", "bleu", "memory_mb", "rule"])
    validated = rows.assign(
        source=np.where(rows["rule"] == "", "search", "rule"),
        predicted_latency_ms=rows["measured_latency_ms"] * 0.95,
        proxy_loss=5.0 - rows["bleu"] / 10,
        validated=True,
    )
    unvalidated = pd.DataFrame(
        {
            "assembly": ["enc=6,6 dec=3,3,3,3", "enc=3,3,3,3 dec=3,3,3,3"],
            "measured_latency_ms": np.nan,
            "bleu": np.nan,
            "memory_mb": [55.0, 80.0],
            "rule": "",
            "source": "search",
            "predicted_latency_ms": [6.0, 10.0],
            "proxy_loss": [3.7, 3.4],
            "validated": False,
        }
    )
    frontier = pd.concat([validated, unvalidated], ignore_index=True)
    frontier["on_proxy_frontier"] = frontier["source"] == "search"
    frontier["violation"] = frontier["predicted_latency_ms"] - BUDGET_MS
    frontier["within_budget"] = frontier["violation"] <= 0
    v = frontier[frontier["validated"]]
    objectives = np.column_stack([-v["bleu"], v["measured_latency_ms"], v["memory_mb"]])
    frontier["on_validated_frontier"] = False
    frontier.loc[v.index[pareto_mask(objectives)], "on_validated_frontier"] = True
    frontier = frontier.sort_values("predicted_latency_ms").reset_index(drop=True)

    scored = frontier[["assembly", "proxy_loss", "memory_mb"]].assign(
        latency_ms=frontier["predicted_latency_ms"], violation=frontier["violation"]
    )
    rules = pd.DataFrame(
        {
            "strategy": ["size-first", "size-first", "speed-first", "speed-first"],
            "assembly": [VALIDATED[2][0], VALIDATED[7][0], VALIDATED[4][0], VALIDATED[7][0]],
            "latency_ms": [7.2, 18.0, 10.8, 18.0],
            "memory_mb": [70.0, 120.0, 90.0, 120.0],
            "proxy_loss": [3.5, 2.6, 3.0, 2.6],
        }
    )
    return scored, frontier, rules


def test_frontier_2d_is_monotone_and_leaves_out_a_memory_only_point(tables):
    _, frontier, _ = tables
    validated = frontier[frontier["validated"]]
    assert validated.loc[validated["assembly"] == MEMORY_ONLY, "on_validated_frontier"].item()  # on the 3-D one

    line = frontier_2d(validated, "bleu", "measured_latency_ms")
    assert list(line["assembly"]) == ON_2D
    assert MEMORY_ONLY not in set(line["assembly"])
    assert (np.diff(line["measured_latency_ms"]) > 0).all() and (np.diff(line["bleu"]) > 0).all()
    assert set(line.index) <= set(validated.index) and list(line.columns) == list(validated.columns)


def test_frontier_2d_edges():
    table = pd.DataFrame({"q": [1.0, 3.0, 3.0, 2.0, np.nan, 3.0], "c": [1.0, 2.0, 2.0, 2.0, 0.5, 5.0]})
    line = frontier_2d(table, "q", "c")
    assert list(line.index) == [0, 1]  # of the exact duplicates the first; ties in cost: the best quality only
    assert frontier_2d(table.iloc[:0], "q", "c").empty


def test_short_labels_tell_apart_assemblies_of_one_shape():
    assemblies = pd.Series(["enc=3,3,3,3 dec=6,6", "enc=6,6 dec=6,6", "enc=6,2,2,2 dec=6,6", "enc=3,3,3,3 dec=6,6"])
    assert list(short_labels(assemblies)) == ["4-2a", "2-2", "4-2b", "4-2a"]


def _right_panel(fig):
    (right,) = [ax for ax in fig.axes if ax.get_title().startswith("Validation")]
    return right


def test_plot_pareto_draws_a_monotone_2d_frontier(tables):
    scored, frontier, rules = tables
    fig = plot_pareto(scored, frontier, rules, metric="bleu", budget_latency_ms=BUDGET_MS)
    right = _right_panel(fig)
    (line,) = [ln for ln in right.get_lines() if ln.get_label().startswith("frontier")]
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    assert (np.diff(x) > 0).all() and (np.diff(y) > 0).all()
    expected = frontier[frontier["assembly"].isin(ON_2D)].sort_values("measured_latency_ms")
    assert np.allclose(x, expected["measured_latency_ms"]) and np.allclose(y, expected["bleu"])
    memory_only = frontier.loc[frontier["assembly"] == MEMORY_ONLY].iloc[0]
    assert (memory_only["measured_latency_ms"], memory_only["bleu"]) not in set(zip(x, y, strict=True))
    # The budget line stays, on both panels; memory has a colour bar on both.
    budget = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == f"budget {BUDGET_MS:g} ms"]
    assert len(budget) == 2
    assert sum(ax.get_ylabel() == "predicted peak memory (MB)" for ax in fig.axes) == 2
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert "chosen: 6-6" in legend  # best validated BLEU within the budget (12-12 is past it)
    assert {"size-first (best in budget)", "speed-first (best in budget)"} <= set(legend)


def test_plot_pareto_labels_are_short_and_do_not_overlap(tables):
    scored, frontier, rules = tables
    fig = plot_pareto(scored, frontier, rules, metric="bleu", budget_latency_ms=BUDGET_MS)
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert not [t for t in texts if "enc=" in t or "dec=" in t]
    right = _right_panel(fig)
    labels = {t.get_text(): t for t in right.texts}
    assert labels["chosen: 6-6"].get_fontweight() == "bold"  # the chosen point is named as such
    assert set(labels) <= {"2-2", "4-2a", "4-2b", "3-4", "6-2", "chosen: 6-6", "3-6", "teacher"}
    assert {"2-2", "4-2a", "4-2b", "6-2", "teacher"} <= set(labels)  # the 2-D frontier is named, the teacher as such
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in right.texts]
    for n, a in enumerate(boxes):
        for b in boxes[n + 1 :]:
            assert not a.overlaps(b)


def test_plot_pareto_without_budget_or_validated_points(tables):
    scored, frontier, rules = tables
    fig = plot_pareto(scored, frontier.assign(validated=False), rules, metric="bleu")
    assert not _right_panel(fig).texts
    fig = plot_pareto(scored, frontier, rules, metric="bleu", budget_latency_ms=float("inf"), chosen=MEMORY_ONLY)
    legend = [t.get_text() for t in _right_panel(fig).get_legend().get_texts()]
    assert "chosen: 3-4" in legend and not [t for t in legend if t.startswith("budget")]


def _collection(ax, prefix: str):
    (found,) = [c for c in ax.collections if c.get_label().startswith(prefix)]
    return found


def test_plot_pareto_marks_the_teacher_the_budget_and_the_choice_on_axes_from_zero(tables):
    scored, frontier, rules = tables
    fig = plot_pareto(scored, frontier, rules, metric="bleu", budget_latency_ms=BUDGET_MS)
    left, right = fig.axes[0], _right_panel(fig)
    # the teacher (12-12, validated here): a cross at its measured latency and score
    teacher = _collection(right, "teacher 12-12: BLEU 24.00 at 20 ms")
    assert np.allclose(teacher.get_offsets(), [[20.0, 24.0]])
    assert not [ln for ln in right.get_lines() if ln.get_label().startswith("teacher")]  # the cross is enough
    # the budget: a vertical line at 18 ms on both panels
    for ax in (left, right):
        (budget,) = [ln for ln in ax.get_lines() if ln.get_label() == "budget 18 ms"]
        assert np.allclose(budget.get_xdata(), BUDGET_MS)
    # the choice: a star, and its name beside it
    assert np.allclose(_collection(right, "chosen: 6-6").get_offsets(), [[14.0, 21.0]])
    (label,) = [t for t in right.texts if t.get_text() == "chosen: 6-6"]
    assert label.xy == (14.0, 21.0)
    # latency from 0 on both panels, the score from 0 (less a sliver, so that a point at 0 shows whole)
    assert left.get_xlim()[0] == 0 and right.get_xlim()[0] == 0
    bottom, top = right.get_ylim()
    assert -0.05 * top < bottom <= 0 and top > 24.0
    # a second latency axis, in multiples of the teacher's
    (multiple,) = right.child_axes
    assert multiple.get_xlabel() == "latency as a multiple of the teacher's (20 ms)"


def test_plot_pareto_draws_the_teachers_latency_where_it_was_not_validated(tables):
    scored, frontier, rules = tables
    teacher = VALIDATED[-1][0]
    frontier = frontier[frontier["assembly"] != teacher].assign(
        measured_speed_ratio=lambda f: 20.0 / f["measured_latency_ms"],
        speed_ratio=lambda f: 19.0 / f["predicted_latency_ms"],
    )
    fig = plot_pareto(scored, frontier, rules, metric="bleu")
    left, right = fig.axes[0], _right_panel(fig)
    (measured,) = [ln for ln in right.get_lines() if ln.get_label() == "teacher 12-12 (torch:fp32, 20 ms)"]
    (predicted,) = [ln for ln in left.get_lines() if ln.get_label() == "teacher 12-12 (torch:fp32, 19 ms)"]
    assert np.allclose(measured.get_xdata(), 20.0) and np.allclose(predicted.get_xdata(), 19.0)
    assert not [c for c in right.collections if c.get_label().startswith("teacher")]  # no score to mark
    assert right.get_xlim()[1] > 20.0 and left.get_xlim()[1] > 19.0


def test_plot_quality_vs_size_falls_from_the_teacher_on_axes_from_zero():
    rows = [  # strategy, assembly, shape, size ratio, BLEU: the teacher first in each strategy, as the demo's table
        ("size-first", "enc=1,1,1,1 dec=1,1,1,1", "4-4", 1.0, 7.2),
        ("size-first", "enc=2,2 dec=1,1,1,1", "2-4", 1.3, 6.9),
        ("size-first", "enc=2,2 dec=2,2", "2-2", 2.0, 6.2),
        ("speed-first", "enc=1,1,1,1 dec=1,1,1,1", "4-4", 1.0, 7.2),
        ("speed-first", "enc=2,2 dec=2,2", "2-2", 2.0, 6.2),
    ]
    table = pd.DataFrame(rows, columns=["strategy", "assembly", "shape", "size_ratio", "bleu"])
    fig = plot_quality_vs_size(table)
    (ax,) = fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["size-first"].get_ydata()) == [7.2, 6.9, 6.2]  # falling as the size ratio grows
    assert np.allclose(lines["teacher 4-4: BLEU 7.20"].get_ydata(), 7.2)
    (star,) = ax.collections
    assert np.allclose(star.get_offsets(), [[1.0, 7.2]])
    bottom, top = ax.get_ylim()
    assert -0.05 * top < bottom <= 0 and top > 7.2
    assert 0.8 < ax.get_xlim()[0] < 1.0
    assert ax.xaxis.get_major_formatter()(2.0, 0) == "2x"
    labels = {t.get_text(): t for t in ax.texts}
    assert set(labels) == {"teacher", "2-4", "2-2"} and labels["teacher"].get_fontweight() == "bold"
