"""Pareto frontiers and hypervolume (moocore), over objectives that are all minimised.

Quality objectives that grow with quality (BLEU, ROUGE) are negated by the caller before they come here.
"""

from __future__ import annotations

import moocore
import numpy as np
import pandas as pd


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """True for the rows of `values` (n, m) that no other row dominates (all objectives minimised).

    Exact duplicates both stay on the frontier.
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(values, keep_weakly=True), dtype=bool)


def normaliser(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, span) per objective, so that (values - low) / span lies in [0, 1]; constant objectives get span 1."""
    values = np.asarray(values, dtype=float)
    low, high = values.min(axis=0), values.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return low, span


def hypervolume(values: np.ndarray, low: np.ndarray, span: np.ndarray, reference: float = 1.1) -> float:
    """Hypervolume of `values` after normalising with (low, span), against the point (reference, …, reference).

    Compare two sets only under the same (low, span): take them from the larger set (e.g. the whole space).
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return 0.0
    scaled = (values - low) / span
    return float(moocore.hypervolume(scaled, ref=np.full(scaled.shape[1], reference)))


def frontier_2d(points: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """The rows of `points` on the 2-D Pareto frontier of `quality` (higher is better) against `cost` (lower is better).

    Sorted by cost, along which quality strictly rises: each row costs more than the one before and buys better
    quality, so a line or step drawn through them never zig-zags. A row is left off when another row is at least as
    good on both columns and better on one (of exact duplicates, the first is kept); rows missing either value too.
    Pure: the rows are returned with their index and every column, for a figure to draw.
    """
    rows = points.dropna(subset=[quality, cost])
    if rows.empty:
        return rows.copy()
    order = np.lexsort((-rows[quality].to_numpy(dtype=float), rows[cost].to_numpy(dtype=float)))
    ranked = rows.iloc[order]
    q = ranked[quality].to_numpy(dtype=float)
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(q)[:-1]))
    return ranked[q > best_before].copy()
