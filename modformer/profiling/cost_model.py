"""The cost model: what a latency profile predicts for any assembly on any workload.

Prediction for a workload (batch B, source length S, G new tokens), from the rows of the profile's table (see
`modformer.profiling.profile` for the row kinds)::

    latency = fixed(B, S, G) + o_enc + a sum_enc c_enc(b, B, S)
              + o_dec + b sum_dec [ first_extra(b, B, S) + sum_{t < G} c_dec(b, B, S, L=t) ]

with a per-stack calibration (offset ``o``, factor ``a`` and curvature ``q``, each at the workload) fitted so that the
teacher's own block sums match what its layers add to real calls (a calibration call minus the zero-layer one): its
first layer, its first half and all of its layers give three points of a quadratic in the block sum X of the stack,
``o + a X + q X^2`` (see `fit_calibration`). Blocks measured one at a time miss what a stack does inside ``generate``
once it has any layer at all (the offset: cache set-up, masks), per layer (the factor: cache bookkeeping, the loop's
per-layer work) and what a deeper stack adds per layer as its weights outgrow the processor's caches (the curvature:
without it, the line through one layer and all of them over-predicted half-depth assemblies of the 12+12 teacher by
7-9 % on a 2-core AMD EPYC). Every block of a stack is a layer of the same shape, so one curve per stack serves all
its blocks. The calibration calls are the teacher and partial models that are not valid assemblies, so no assembly
the validation measures has been fitted on. (A prediction's breakdown has the offsets in its ``fixed`` row and, in
``block_ms``, each block's cost before calibration; each block's ``latency_ms`` is its share ``block_ms (a + q X)``.)
    memory  = peak_zero(B, S, G) + alpha(B, S, G) * sum_b [ param_bytes(b) + B (G kv_self(b) + S kv_cross(b)) ]

with ``alpha`` the teacher's measured peak over the zero-layer model's, per byte of its blocks (about 1 when the
weights are loaded once; more where loading holds a transient copy). Every quantity is interpolated linearly
between grid points in B, S, L and G, and extrapolated linearly beyond them with ``extrapolated`` set.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from modformer.errors import AssemblyError, CheckpointError, ConfigError
from modformer.modular.assembly import SHORT_NAMES, STACKS, Assembly
from modformer.modular.model import module_key
from modformer.profiling.profile import KINDS, LatencyProfile, Workload


@dataclass
class Prediction:
    """Predicted cost of one assembly on one workload, with where it comes from."""

    latency_ms: float
    memory_bytes: float | None  # None when the profile holds no memory measurements
    breakdown: pd.DataFrame  # one row per block plus one `fixed` row; columns sum to the totals
    extrapolated: bool = False
    reason: str = ""  # what lies outside the measured grid, when extrapolated


@dataclass
class WorkloadCosts:
    """Everything `predict` needs for one workload, per block (indexed by block key)."""

    blocks: pd.DataFrame  # stack, start, size, position, block_ms (per call, as measured), param_bytes, ...
    fixed_ms: float  # the zero-layer call plus the calibration offsets
    zero_ms: float  # the zero-layer call alone
    scales: dict[str, float]  # per stack: the calibration factor applied to its blocks (1.0 without calibration rows)
    offsets: dict[str, float]  # per stack: what having any layer adds to a call (in fixed_ms; 0.0 without calibration)
    curvatures: dict[str, float]  # per stack: q in o + a X + q X^2, per ms of block sum (0.0 without half-depth calls)
    mem_zero_bytes: float | None
    mem_alpha: float | None
    reasons: list[str]  # what lies outside the measured grid


# --------------------------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------------------------


def predict(profile: LatencyProfile, assembly: Assembly, workload: Workload) -> Prediction:
    """Latency and peak memory of one `generate` call of `assembly` (see the module docstring for the sums).

    The latency is never below the zero-layer call's (`zero_floor_ms`): no assembly runs faster than the model with no
    layers, and a calibration fitted to a noisy machine's timings could otherwise predict less than that, even less
    than nothing, for the smallest assemblies."""
    costs = workload_costs(profile, workload)
    keys = []
    for stack, key, start, size in assembly_blocks(assembly):
        if key not in costs.blocks.index:
            what = "teacher layer" if size == 1 else f"{size}-module at layer"
            raise AssemblyError(
                f"the profile has no measurements for {SHORT_NAMES[stack]} {what} {start} (block {key}); "
                f"profile the modular checkpoint this assembly comes from"
            )
        keys.append(key)
    columns = ["stack", "start", "size", "position", "block_ms", "param_bytes", "cache_bytes"]
    parts = costs.blocks.loc[keys, columns].reset_index()
    sums = parts.groupby("stack")["block_ms"].transform("sum")
    factor = parts["stack"].map(costs.scales) + parts["stack"].map(costs.curvatures) * sums
    parts.insert(parts.columns.get_loc("block_ms"), "latency_ms", parts["block_ms"] * factor)
    alpha = costs.mem_alpha
    parts["memory_bytes"] = (parts["param_bytes"] + parts["cache_bytes"]) * alpha if alpha is not None else np.nan
    fixed = pd.DataFrame(
        [
            {
                "block": "fixed",
                "stack": "model",
                "start": pd.NA,
                "size": pd.NA,
                "position": "",
                "latency_ms": costs.fixed_ms,
                "block_ms": costs.zero_ms,
                "param_bytes": pd.NA,
                "cache_bytes": pd.NA,
                "memory_bytes": costs.mem_zero_bytes if alpha is not None else np.nan,
            }
        ]
    )
    breakdown = pd.concat([fixed, parts], ignore_index=True)
    # a refreshed profile: every part scaled by how much faster or slower the machine runs now (1.0 without one)
    refresh = profile.refresh_factor(profile.targets[0], workload.batch)
    breakdown["latency_ms"] *= refresh
    memory = float(breakdown["memory_bytes"].sum()) if alpha is not None else None
    return Prediction(
        latency_ms=max(float(breakdown["latency_ms"].sum()), costs.zero_ms * refresh),
        memory_bytes=memory,
        breakdown=breakdown,
        extrapolated=bool(costs.reasons),
        reason="; ".join(costs.reasons),
    )


def zero_floor_ms(profile: LatencyProfile, workload: Workload) -> float:
    """The least latency `predict` gives: the zero-layer call at `workload` (refreshed like every prediction)."""
    return workload_costs(profile, workload).zero_ms * profile.refresh_factor(profile.targets[0], workload.batch)


def speed_ratio_predictor(
    profile: LatencyProfile, teacher: Assembly, workload: Workload
) -> Callable[[Assembly], float]:
    """A function assembly -> predicted speed-up over `teacher` on `workload`, for the speed-first strategy."""
    base = predict(profile, teacher, workload).latency_ms

    def speed_ratio(assembly: Assembly) -> float:
        return base / predict(profile, assembly, workload).latency_ms

    return speed_ratio


def assembly_blocks(assembly: Assembly) -> list[tuple[str, str, int, int]]:
    """(stack, block key, start, size) of every block of `assembly`, bottom-up, encoder first."""
    return [(s, module_key(s, start, size), start, size) for s in STACKS for start, size in assembly.spans(s)]


# Per profile (by identity, dropped with it): the costs of each workload asked for. The planner predicts thousands of
# assemblies on one workload, and every prediction needs the same per-block totals.
_COSTS: weakref.WeakKeyDictionary[LatencyProfile, dict[Workload, WorkloadCosts]] = weakref.WeakKeyDictionary()


def workload_costs(profile: LatencyProfile, workload: Workload) -> WorkloadCosts:
    """Per-block totals for one call of `workload` (computed once per profile and workload)."""
    cached = _COSTS.setdefault(profile, {})
    if workload not in cached:
        cached[workload] = _compute_costs(profile.table, workload)
    return cached[workload]


# --------------------------------------------------------------------------------------------------------------------
# Interpolation on the measured grid
# --------------------------------------------------------------------------------------------------------------------


def axis_weights(points: Sequence[float], x: float) -> tuple[list[tuple[int, float]], bool]:
    """Linear weights of the grid `points` (sorted, distinct) for `x`, and whether `x` lies outside them.

    Between two points: the usual linear weights; outside: linear extrapolation from the two nearest points; one
    point only: that point's value (flagged as extrapolated when `x` differs).
    """
    n = len(points)
    if n == 0:
        raise ConfigError("no grid points to interpolate between")
    outside = x < points[0] or x > points[-1]
    if n == 1:
        return [(0, 1.0)], outside
    i = int(np.searchsorted(points, x, side="right")) - 1
    i = min(max(i, 0), n - 2)
    w = (x - points[i]) / (points[i + 1] - points[i])
    return [(i, 1.0 - w), (i + 1, w)], outside


def interpolate(values: dict[tuple, float], axes: Sequence[Sequence[float]], query: Sequence[float]) -> float:
    """Multilinear interpolation of grid `values` (keyed by a point on each axis) at `query`."""
    per_axis = [axis_weights(points, x)[0] for points, x in zip(axes, query, strict=True)]
    total = 0.0
    for combo in itertools.product(*per_axis):
        key = tuple(axes[a][i] for a, (i, _) in enumerate(combo))
        if key not in values:
            raise CheckpointError(f"the profile lacks the grid point {key}; profile again with a full grid")
        weight = float(np.prod([w for _, w in combo]))
        if weight:
            total += weight * values[key]
    return total


def _line(points: np.ndarray, values: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Piecewise-linear function through (points, values) at xs, extended linearly beyond both ends."""
    if len(points) == 1:
        return np.full(xs.shape, float(values[0]))
    idx = np.clip(np.searchsorted(points, xs, side="right") - 1, 0, len(points) - 2)
    x0, x1, y0, y1 = points[idx], points[idx + 1], values[idx], values[idx + 1]
    return y0 + (y1 - y0) * (xs - x0) / (x1 - x0)


def sorted_unique(series: pd.Series) -> list[int]:
    """The distinct values of a grid column, as sorted ints (missing values left out)."""
    return sorted(int(x) for x in series.dropna().unique())


@dataclass(frozen=True)
class _Grid:
    """The measured points on each axis of a profile's table, and interpolation on them."""

    batch: list[int]
    src_len: list[int]
    cache_len: list[int]  # of the decoder steps
    gen_len: list[int]  # of the fixed-cost calls

    @classmethod
    def of(cls, table: pd.DataFrame, rows: dict[str, pd.DataFrame]) -> _Grid:
        """The grid of `table`, whose `rows` of each kind are given too."""
        return cls(
            batch=sorted_unique(table["batch"]),
            src_len=sorted_unique(table["src_len"]),
            cache_len=sorted_unique(rows["dec_step"]["cache_len"]),
            gen_len=sorted_unique(rows["fixed_generate"]["gen_len"]),
        )

    def at_bs(self, rows: pd.DataFrame, w: Workload) -> float:
        """`latency_ms` of `rows` (one per batch and source length) at `w`'s batch and source length."""
        values = {(int(r.batch), int(r.src_len)): float(r.latency_ms) for r in rows.itertuples()}
        return interpolate(values, (self.batch, self.src_len), (w.batch, w.src_len))

    def at_bsg(self, rows: pd.DataFrame, w: Workload) -> float:
        """`latency_ms` of `rows` (one per batch, source length and generation length) at `w`."""
        values = {(int(r.batch), int(r.src_len), int(r.gen_len)): float(r.latency_ms) for r in rows.itertuples()}
        return interpolate(values, (self.batch, self.src_len, self.gen_len), (w.batch, w.src_len, w.gen_len))

    def reasons(self, w: Workload) -> list[str]:
        """What of `w` lies outside the measured grid (empty when nothing is extrapolated)."""
        reasons = [
            reason
            for reason in (
                _grid_reason("batch", self.batch, w.batch),
                _grid_reason("src_len", self.src_len, w.src_len),
                _grid_reason("gen_len", self.gen_len, w.gen_len),
            )
            if reason
        ]
        if self.cache_len[-1] < w.gen_len - 1:
            reasons.append(
                f"{w.gen_len} steps need cache lengths up to {w.gen_len - 1}, measured up to {self.cache_len[-1]}"
            )
        return reasons


def _grid_reason(name: str, points: list[int], x: int) -> str | None:
    if points and (x < points[0] or x > points[-1]):
        return f"{name} {x} is outside the measured {points[0]}-{points[-1]}"
    return None


# --------------------------------------------------------------------------------------------------------------------
# Per-workload costs
# --------------------------------------------------------------------------------------------------------------------


def _compute_costs(table: pd.DataFrame, w: Workload) -> WorkloadCosts:
    rows = {kind: table[table["kind"] == kind] for kind in KINDS}
    if rows["enc_forward"].empty or rows["dec_step"].empty or rows["fixed_generate"].empty:
        raise CheckpointError("the profile holds no block or fixed-cost measurements")
    grid = _Grid.of(table, rows)
    reasons = grid.reasons(w)
    blocks = _block_costs(rows, grid, w)
    scales, offsets, curvatures = _calibration_curves(rows, grid, blocks, w)
    zero_ms = grid.at_bsg(rows["fixed_generate"], w)
    mem_zero = mem_alpha = None
    if not rows["peak_memory"].empty:
        mem_zero, mem_alpha = _memory_terms(rows["peak_memory"], blocks, w, reasons)
    return WorkloadCosts(
        blocks=blocks,
        fixed_ms=zero_ms + sum(offsets.values()),
        zero_ms=zero_ms,
        scales=scales,
        offsets=offsets,
        curvatures=curvatures,
        mem_zero_bytes=mem_zero,
        mem_alpha=mem_alpha,
        reasons=reasons,
    )


def _block_costs(rows: dict[str, pd.DataFrame], grid: _Grid, w: Workload) -> pd.DataFrame:
    """One row per block: what it adds to one call of `w` as measured (`block_ms`). Encoder blocks: one pass. Decoder blocks: every step's cost at its cache length, plus the first
    step's extra."""
    records = []
    for key, block_rows in rows["enc_forward"].groupby("block", sort=False):
        records.append(_block_record(key, block_rows.iloc[0], grid.at_bs(block_rows, w), w))
    steps = np.arange(w.gen_len, dtype=float)
    cache_lens = np.array(grid.cache_len, dtype=float)
    first = rows["dec_first_extra"]
    for key, block_rows in rows["dec_step"].groupby("block", sort=False):
        per_l = np.array([grid.at_bs(block_rows[block_rows["cache_len"] == L], w) for L in grid.cache_len])
        total = float(_line(cache_lens, per_l, steps).sum())
        extra_rows = first[first["block"] == key]
        total += grid.at_bs(extra_rows, w) if not extra_rows.empty else 0.0
        records.append(_block_record(key, block_rows.iloc[0], total, w))
    return pd.DataFrame(records).set_index("block")


def _block_record(key: str, m: pd.Series, latency_ms: float, w: Workload) -> dict:
    facts = {
        c: int(m[c]) for c in ("start", "size", "param_bytes", "kv_self_bytes_per_token", "kv_cross_bytes_per_token")
    }
    return {
        "block": key,
        "stack": m["stack"],
        "position": m["position"],
        "block_ms": latency_ms,
        **facts,
        "cache_bytes": _cache_bytes(m, w.batch, w.src_len, w.gen_len),
    }


def _calibration_curves(
    rows: dict[str, pd.DataFrame], grid: _Grid, blocks: pd.DataFrame, w: Workload
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per-stack (factors, offsets, curvatures) at `w` from the calibration calls; identity without calibration
    rows."""
    if rows["calibration_generate"].empty:
        return {"encoder": 1.0, "decoder": 1.0}, {"encoder": 0.0, "decoder": 0.0}, {"encoder": 0.0, "decoder": 0.0}
    # The encoder runs once per call: its curve comes from the shortest calls, where it weighs most.
    short = dataclasses.replace(w, gen_len=grid.gen_len[0])
    measured = {
        "encoder": Calls(
            first=_added_by_layers(rows, grid, "encoder_first", short),
            half=_added_by_layers(rows, grid, "encoder_half", short, required=False),
            alls=[_added_by_layers(rows, grid, "encoder_only", short)],
        ),
        "decoder": Calls(
            first=_added_by_layers(rows, grid, "decoder_first", w),
            half=_added_by_layers(rows, grid, "decoder_half", w, required=False),
            alls=[_added_by_layers(rows, grid, "decoder_only", w), _added_by_layers(rows, grid, "teacher", w)],
        ),
    }
    return fit_calibration(blocks, measured)


def _added_by_layers(
    rows: dict[str, pd.DataFrame], grid: _Grid, name: str, w: Workload, *, required: bool = True
) -> float | None:
    """What the layers of calibration call `name` add to the zero-layer call, at `w` (None: an optional call that
    this profile, written by an older version, lacks)."""
    calibration = rows["calibration_generate"]
    calls = calibration[calibration["block"] == name]
    if calls.empty:
        if not required:
            return None
        raise CheckpointError(f"the profile lacks the calibration call {name!r}; profile again")
    return grid.at_bsg(calls, w) - grid.at_bsg(rows["fixed_generate"], w)


@dataclass(frozen=True)
class Calls:
    """What a stack's layers add to real calls: its first teacher layer alone, its first half (None where not
    measured), and all of them (one figure per call that says it)."""

    first: float
    half: float | None
    alls: list[float]


def fit_calibration(
    blocks: pd.DataFrame, measured: dict[str, Calls]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per-stack (factor a, offset o, curvature q): the curve o + a X + q X^2 through what the teacher's first layer,
    its first half and all its layers add to real calls, X being their block sums.

    For the decoder the whole teacher gives a second figure for all layers, once the encoder's own curve is taken off
    it; the figures for all layers are averaged. With F, H and T the block sums of the first layer, the first half and
    all layers, the quadratic goes through the three points. Without a half-depth figure (older profiles, or a stack
    of two layers, where the half is the first layer) or where the quadratic would not rise from F to T, the line
    through the first and last point serves (q = 0). Where the blocks are too cheap to tell apart from the noise
    (T <= F, or a non-positive slope) the blocks stay as measured: factor 1, offset 0.
    """
    scales, offsets, curvatures = {}, {}, {}
    for stack in ("encoder", "decoder"):
        layers = blocks[(blocks["size"] == 1) & (blocks["stack"] == stack)].sort_values("start")
        calls = measured[stack]
        first = float(layers["block_ms"].iloc[:1].sum())
        half = float(layers["block_ms"].iloc[: -(-len(layers) // 2)].sum())
        total = float(layers["block_ms"].sum())
        alls = calls.alls
        if stack == "decoder" and len(alls) > 1:  # the whole teacher: take the encoder's curve off
            enc = float(blocks[(blocks["size"] == 1) & (blocks["stack"] == "encoder")]["block_ms"].sum())
            alls = [alls[0], alls[1] - (offsets["encoder"] + scales["encoder"] * enc + curvatures["encoder"] * enc**2)]
        everything = float(np.mean(alls))
        o, a, q = 0.0, 1.0, 0.0
        slope = (everything - calls.first) / (total - first) if total > first else 0.0
        if slope > 0:
            o, a = calls.first - slope * first, slope
            if calls.half is not None and first < half < total:
                c, b, a2 = np.polyfit([first, half, total], [calls.first, calls.half, everything], 2)[::-1]
                # rising from F to T (the derivative b + 2 q X is positive at both ends): the quadratic serves
                if b + 2 * a2 * first > 0 and b + 2 * a2 * total > 0:
                    o, a, q = float(c), float(b), float(a2)
        scales[stack], offsets[stack], curvatures[stack] = a, o, q
    return scales, offsets, curvatures


def _memory_terms(memory: pd.DataFrame, blocks: pd.DataFrame, w: Workload, reasons: list[str]) -> tuple[float, float]:
    """Zero-layer peak and bytes of peak per byte of blocks, interpolated at `w` (see the module docstring)."""
    b_axis, s_axis, g_axis = (sorted_unique(memory[c]) for c in ("batch", "src_len", "gen_len"))
    reason = _grid_reason("memory gen_len", g_axis, w.gen_len)
    if reason:
        reasons.append(reason)
    teacher_blocks = blocks[blocks["size"] == 1]
    zero, alpha = {}, {}
    for r in memory[memory["block"] == "zero_layers"].itertuples():
        key = (int(r.batch), int(r.src_len), int(r.gen_len))
        zero[key] = float(r.mem_bytes)
    for r in memory[memory["block"] == "teacher"].itertuples():
        key = (int(r.batch), int(r.src_len), int(r.gen_len))
        kv = teacher_blocks.apply(lambda m, k=key: _cache_bytes(m, *k), axis=1).sum()
        alpha[key] = (float(r.mem_bytes) - zero[key]) / float(teacher_blocks["param_bytes"].sum() + kv)
    axes, query = (b_axis, s_axis, g_axis), (w.batch, w.src_len, w.gen_len)
    return interpolate(zero, axes, query), interpolate(alpha, axes, query)


def _cache_bytes(block: pd.Series, batch: int, src_len: int, gen_len: int) -> int:
    """Key/value cache a decoder block holds at the end of a call (0 for encoder blocks)."""
    if block["stack"] != "decoder":
        return 0
    return batch * (gen_len * int(block["kv_self_bytes_per_token"]) + src_len * int(block["kv_cross_bytes_per_token"]))
