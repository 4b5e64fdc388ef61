"""A latency profile: measured block costs as a tidy table, and the predictor that sums them for any assembly.

The table (`profile.csv`) has one row per measurement; the metadata (`profile.json`) holds the hardware
fingerprint, the date, the grid, the model it was measured on and the validation figures.

Row kinds (``kind``), all times in milliseconds:

- ``enc_forward``: what one encoder block adds to one encoder pass over ``batch`` x ``src_len`` tokens;
- ``dec_step``: what one decoder block adds to one generation step of ``batch`` rows whose self-attention cache
  holds ``cache_len`` tokens (cross-attention keys/values already computed);
- ``dec_first_extra``: what the block adds to the *first* step beyond a later step at cache length 0: the
  cross-attention key/value projection of the encoder output and the cache set-up;
- ``fixed_generate``: a real ``generate`` of ``gen_len`` new tokens by the model with *no* layers in either stack:
  embeddings, final norms, LM head, masks and the generation loop's own per-step work (logits processing, stopping
  criteria, concatenating ids);
- ``peak_memory``: peak memory (``mem_bytes``) of loading and running the zero-layer model (``block``
  ``zero_layers``) and the teacher (``teacher``), see `modformer.profiling.memory` for what the figure is.

A block in the first place of its stack (``position`` ``first``: ``start`` 0) is measured alone against an empty
stack, so it also carries what the stack does once per pass (T5's position bias, masks that grow with the cache);
any other block is measured above the teacher's first layer, against that layer alone.

- ``calibration_generate``: a real ``generate`` of ``gen_len`` new tokens by the teacher with some of its layers taken
  out (``block`` names which, see ``CALIBRATION``): all its encoder layers and no decoder layer, only its first
  encoder layer, the same two for the decoder, and the whole teacher; timed in the same rounds as ``fixed_generate``.

Prediction for a workload (batch B, source length S, G new tokens)::

    latency = fixed(B, S, G) + o_enc + a sum_enc c_enc(b, B, S)
              + o_dec + b sum_dec [ first_extra(b, B, S) + sum_{t < G} c_dec(b, B, S, L=t) ]

with a per-stack calibration (offset ``o``, factor ``a`` or ``b``, each at the workload) fitted so that the teacher's own
block sums match what its layers add to real calls (a calibration call minus the zero-layer one): one layer and all
of them give the two points of a line (see `_calibration`). Blocks measured one at a time miss what a stack does
inside ``generate`` once it has any layer at all (the offset: cache set-up, masks) and per layer (the factor: cache
bookkeeping, the loop's per-layer work); since every block of a stack is a layer of the same shape, one line per
stack serves all its blocks. The calibration calls are the teacher and partial models that are not valid assemblies,
so no assembly the validation measures has been fitted on. (A prediction's breakdown has the offsets in its
``fixed`` row and, in ``block_ms``, each block's cost before the factor.)
    memory  = peak_zero(B, S, G) + alpha(B, S, G) * sum_b [ param_bytes(b) + B (G kv_self(b) + S kv_cross(b)) ]

with ``alpha`` the teacher's measured peak over the zero-layer model's, per byte of its blocks (about 1 when the
weights are loaded once; more where loading holds a transient copy). Every quantity is interpolated linearly
between grid points in B, S, L and G, and extrapolated linearly beyond them with ``extrapolated`` set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from modformer import __version__
from modformer.errors import AssemblyError, CheckpointError, ConfigError
from modformer.io import atomic_path, read_json, write_json
from modformer.modular.assembly import SHORT_NAMES, STACKS, Assembly
from modformer.modular.model import module_key

TABLE_NAME = "profile.csv"
META_NAME = "profile.json"
FORMAT = "modformer-latency-profile/1"

# Column -> dtype. Nullable integers where a column does not apply to every kind of row.
COLUMNS: dict[str, str] = {
    "kind": "string",
    "stack": "string",  # encoder, decoder, or model (fixed costs)
    "block": "string",  # {stack}_k{size}_s{start}; k1 is the teacher's own layer
    "start": "Int64",
    "size": "Int64",
    "position": "string",  # first: measured alone; above: measured above the teacher's first layer
    "batch": "int64",
    "src_len": "int64",
    "cache_len": "Int64",  # dec_step only
    "gen_len": "Int64",  # fixed_generate and peak_memory only
    "latency_ms": "float64",  # median of (with block) minus the median of the baseline
    "p10_ms": "float64",
    "p90_ms": "float64",
    "base_ms": "float64",  # median of the baseline the block was compared against
    "repeats": "Int64",
    "param_bytes": "Int64",
    "kv_self_bytes_per_token": "Int64",  # per generated token and batch row
    "kv_cross_bytes_per_token": "Int64",  # per source token and batch row
    "act_bytes_per_token": "Int64",  # the block's largest single intermediate tensor, per token
    "mem_bytes": "Int64",  # peak_memory only
}
KINDS = ("enc_forward", "dec_step", "dec_first_extra", "fixed_generate", "calibration_generate", "peak_memory")
# Calibration calls (``calibration_generate`` rows): a real `generate` by the teacher keeping this many layers of each
# stack (None: all of them).
CALIBRATION: dict[str, dict[str, int | None]] = {
    "encoder_only": {"encoder": None, "decoder": 0},
    "encoder_first": {"encoder": 1, "decoder": 0},
    "decoder_only": {"encoder": 0, "decoder": None},
    "decoder_first": {"encoder": 0, "decoder": 1},
    "teacher": {"encoder": None, "decoder": None},
}


class ProfileMismatchWarning(UserWarning):
    """A profile measured on other hardware, software or settings than the ones it is used with."""


@dataclass(frozen=True)
class Workload:
    """One call: `batch` sequences of `src_len` source tokens, `gen_len` new tokens each (greedy)."""

    batch: int
    src_len: int
    gen_len: int

    def __post_init__(self) -> None:
        for name in ("batch", "src_len", "gen_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"workload {name} must be a whole number >= 1, got {value!r}")

    def __str__(self) -> str:
        return f"batch {self.batch}, src_len {self.src_len}, gen_len {self.gen_len}"


@dataclass
class Prediction:
    """Predicted cost of one assembly on one workload, with where it comes from."""

    latency_ms: float
    memory_bytes: float | None  # None when the profile holds no memory measurements
    breakdown: pd.DataFrame  # one row per block plus one `fixed` row; columns sum to the totals
    extrapolated: bool = False
    reason: str = ""  # what lies outside the measured grid, when extrapolated


@dataclass
class LatencyProfile:
    """Measured block costs (`table`, see the module docstring) and what they were measured on (`meta`)."""

    table: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.table = _conform(self.table, "profile table")
        self._costs: dict[Workload, _WorkloadCosts] = {}

    # --- grid and blocks ------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        return self.meta.get("fingerprint", {})

    @property
    def grid(self) -> dict:
        return self.meta.get("grid", {})

    @property
    def statistic(self) -> str:
        """What the rounds were summarised by (`timer.STATISTICS`); profiles from before the setting: median."""
        return self.meta.get("settings", {}).get("statistic", "median")

    def blocks(self) -> pd.DataFrame:
        """One row per measured block: stack, block, start, size, position, param_bytes and cache bytes."""
        rows = self.table[self.table["kind"].isin(["enc_forward", "dec_step"])]
        cols = [
            "stack",
            "block",
            "start",
            "size",
            "position",
            "param_bytes",
            "kv_self_bytes_per_token",
            "kv_cross_bytes_per_token",
            "act_bytes_per_token",
        ]
        return rows[cols].drop_duplicates("block").set_index("block")

    def costs(self, workload: Workload) -> _WorkloadCosts:
        """Per-block totals for one call of `workload` (cached: the planner asks for many assemblies)."""
        if workload not in self._costs:
            self._costs[workload] = _workload_costs(self.table, workload)
        return self._costs[workload]

    # --- save / load ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the table and the metadata: into a folder (`profile.csv`, `profile.json`) or beside a file name
        ending in .json or .csv (`NAME.csv`, `NAME.json`). Each file is written atomically, the table first."""
        table_path, meta_path = profile_paths(path)
        buffer = io.StringIO()
        self.table.to_csv(buffer, index=False)
        text = buffer.getvalue()
        with atomic_path(table_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        meta = {
            **self.meta,
            "format": FORMAT,
            "modformer_version": __version__,
            "table": table_path.name,
            "table_rows": len(self.table),
            "table_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        write_json(meta_path, meta)
        self.meta = meta
        return table_path, meta_path

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: dict | None = None) -> LatencyProfile:
        """Read a saved profile (its folder, its .json or its .csv); one-line `CheckpointError`s for missing or
        corrupt files; a `ProfileMismatchWarning` naming what differs from `expect_fingerprint`, if given."""
        table_path, meta_path = profile_paths(path, reading=True)
        meta = read_json(meta_path, "profile metadata")
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: not a modformer latency profile (format {meta.get('format')!r})")
        table_path = meta_path.with_name(str(meta.get("table", table_path.name)))
        if not table_path.is_file():
            raise CheckpointError(f"{table_path}: profile table not found")
        raw = table_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta.get("table_sha256"):
            raise CheckpointError(f"{table_path}: profile table is corrupt or does not belong to {meta_path.name}")
        try:
            table = pd.read_csv(io.BytesIO(raw), dtype={k: v for k, v in COLUMNS.items()})
        except (ValueError, TypeError, pd.errors.ParserError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{table_path}: profile table cannot be read ({first})") from None
        profile = cls(table, meta)
        if expect_fingerprint is not None:
            warn_if_mismatch(profile.fingerprint, expect_fingerprint, str(meta_path))
        return profile


def profile_paths(path: str | Path, *, reading: bool = False) -> tuple[Path, Path]:
    """(table, metadata) paths for a folder or a file name ending in .json/.csv."""
    path = Path(path)
    if path.suffix.lower() in (".json", ".csv"):
        return path.with_suffix(".csv"), path.with_suffix(".json")
    if reading and not path.exists():
        raise CheckpointError(f"{path}: profile not found")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: expected a profile folder or a .json/.csv file name")
    return path / TABLE_NAME, path / META_NAME


def warn_if_mismatch(recorded: dict, current: dict, where: str) -> list[str]:
    from modformer.profiling.hardware import compare

    diffs = compare(recorded, current)
    if diffs:
        warnings.warn(
            f"{where} was measured on other hardware or settings; its numbers may not hold here ({'; '.join(diffs)})",
            ProfileMismatchWarning,
            stacklevel=3,
        )
    return diffs


def _conform(table: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise CheckpointError(f"{what} lacks the column(s) {', '.join(missing)}")
    bad = sorted(set(table["kind"].dropna()) - set(KINDS))
    if bad:
        raise CheckpointError(f"{what} has an unknown row kind {bad[0]!r}")
    try:
        return table[list(COLUMNS)].astype(COLUMNS).reset_index(drop=True)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{what} has a malformed column ({str(err).splitlines()[0]})") from None


def new_meta(*, fingerprint: dict, grid: dict, model: dict, settings: dict) -> dict:
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "grid": grid,
        "model": model,
        "settings": settings,
    }


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


# --------------------------------------------------------------------------------------------------------------------
# Per-workload costs and the predictor
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _WorkloadCosts:
    """Everything `predict` needs for one workload, per block (indexed by block key)."""

    blocks: pd.DataFrame  # stack, start, size, position, latency_ms (per call, calibrated), block_ms (as measured), ...
    fixed_ms: float  # the zero-layer call plus the calibration offsets
    zero_ms: float  # the zero-layer call alone
    scales: dict[str, float]  # per stack: the calibration factor applied to its blocks (1.0 without calibration rows)
    offsets: dict[str, float]  # per stack: what having any layer adds to a call (in fixed_ms; 0.0 without calibration)
    mem_zero_bytes: float | None
    mem_alpha: float | None
    reasons: list[str]


def _sorted_unique(series: pd.Series) -> list[int]:
    return sorted(int(x) for x in series.dropna().unique())


def _grid_reason(name: str, points: list[int], x: int) -> str | None:
    if points and (x < points[0] or x > points[-1]):
        return f"{name} {x} is outside the measured {points[0]}-{points[-1]}"
    return None


def _workload_costs(table: pd.DataFrame, w: Workload) -> _WorkloadCosts:
    B, S, G = w.batch, w.src_len, w.gen_len
    reasons: list[str] = []
    enc = table[table["kind"] == "enc_forward"]
    step = table[table["kind"] == "dec_step"]
    first = table[table["kind"] == "dec_first_extra"]
    fixed = table[table["kind"] == "fixed_generate"]
    if enc.empty or step.empty or fixed.empty:
        raise CheckpointError("the profile holds no block or fixed-cost measurements")
    b_axis, s_axis = _sorted_unique(table["batch"]), _sorted_unique(table["src_len"])
    l_axis, g_axis = _sorted_unique(step["cache_len"]), _sorted_unique(fixed["gen_len"])
    for name, axis, x in (("batch", b_axis, B), ("src_len", s_axis, S), ("gen_len", g_axis, G)):
        reason = _grid_reason(name, axis, x)
        if reason:
            reasons.append(reason)
    if l_axis[-1] < G - 1:
        reasons.append(f"{G} steps need cache lengths up to {G - 1}, measured up to {l_axis[-1]}")

    def bs_value(rows: pd.DataFrame) -> float:
        values = {(int(r.batch), int(r.src_len)): float(r.latency_ms) for r in rows.itertuples()}
        return interpolate(values, (b_axis, s_axis), (B, S))

    steps = np.arange(G, dtype=float)
    records = []
    for key, rows in enc.groupby("block", sort=False):
        records.append(_block_record(key, rows.iloc[0], bs_value(rows), w))
    for key, rows in step.groupby("block", sort=False):
        per_l = np.array([bs_value(rows[rows["cache_len"] == L]) for L in l_axis])
        total = float(_line(np.array(l_axis, dtype=float), per_l, steps).sum())
        extra_rows = first[first["block"] == key]
        total += bs_value(extra_rows) if not extra_rows.empty else 0.0
        records.append(_block_record(key, rows.iloc[0], total, w))
    blocks = pd.DataFrame(records).set_index("block")

    fixed_ms = _interpolate_bsg(fixed, b_axis, s_axis, g_axis, w)
    blocks["block_ms"] = blocks["latency_ms"]
    calibration = table[table["kind"] == "calibration_generate"]
    scales, offsets = {"encoder": 1.0, "decoder": 1.0}, {"encoder": 0.0, "decoder": 0.0}
    if not calibration.empty:

        def added(name: str, gen_len: int) -> float:  # what the call's layers add to the zero-layer call
            at = Workload(B, S, gen_len)
            calls = calibration[calibration["block"] == name]
            if calls.empty:
                raise CheckpointError(f"the profile lacks the calibration call {name!r}; profile again")
            return _interpolate_bsg(calls, b_axis, s_axis, g_axis, at) - _interpolate_bsg(
                fixed, b_axis, s_axis, g_axis, at
            )

        # The encoder runs once per call: its line comes from the shortest calls, where it weighs most.
        short = g_axis[0]
        scales, offsets = _calibration(
            blocks,
            {
                "encoder": (added("encoder_first", short), [added("encoder_only", short)]),
                "decoder": (added("decoder_first", G), [added("decoder_only", G), added("teacher", G)]),
            },
        )
    blocks["latency_ms"] = blocks["block_ms"] * blocks["stack"].map(scales)
    zero_ms, fixed_ms = fixed_ms, fixed_ms + sum(offsets.values())

    mem_zero = mem_alpha = None
    memory = table[table["kind"] == "peak_memory"]
    if not memory.empty:
        mem_zero, mem_alpha = _memory_terms(memory, blocks, w, reasons)
    return _WorkloadCosts(blocks, fixed_ms, zero_ms, scales, offsets, mem_zero, mem_alpha, reasons)


def _interpolate_bsg(rows: pd.DataFrame, b_axis, s_axis, g_axis, w: Workload) -> float:
    values = {(int(r.batch), int(r.src_len), int(r.gen_len)): float(r.latency_ms) for r in rows.itertuples()}
    return interpolate(values, (b_axis, s_axis, g_axis), (w.batch, w.src_len, w.gen_len))


def _calibration(
    blocks: pd.DataFrame, measured: dict[str, tuple[float, list[float]]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-stack (factor, offset) lines through what the teacher's first layer and all its layers add to real calls.

    `measured[stack]` = (what the stack's first teacher layer alone adds, [what all its layers add, ...]); for the
    decoder the whole teacher gives a second figure for all layers, once the encoder's own line is taken off it. With
    F and T the first layer's and all layers' block sums, the line through (F, first) and (T, mean of all) gives the
    factor (slope) and offset. Where the blocks are too cheap to tell apart from the noise (T <= F, or a
    non-positive slope) the blocks stay as measured: factor 1, offset 0.
    """
    scales, offsets = {}, {}
    for stack in ("encoder", "decoder"):
        layers = blocks[(blocks["size"] == 1) & (blocks["stack"] == stack)]
        first = float(layers.loc[layers["start"] == 0, "block_ms"].sum())
        total = float(layers["block_ms"].sum())
        one, alls = measured[stack]
        if stack == "decoder" and len(alls) > 1:  # the whole teacher: take the encoder's line off
            enc = blocks[(blocks["size"] == 1) & (blocks["stack"] == "encoder")]["block_ms"].sum()
            alls = [alls[0], alls[1] - (offsets["encoder"] + scales["encoder"] * float(enc))]
        everything = float(np.mean(alls))
        slope = (everything - one) / (total - first) if total > first else 0.0
        if slope > 0:
            scales[stack], offsets[stack] = slope, one - slope * first
        else:
            scales[stack], offsets[stack] = 1.0, 0.0
    return scales, offsets


def _block_record(key: str, m: pd.Series, latency_ms: float, w: Workload) -> dict:
    facts = {
        c: int(m[c]) for c in ("start", "size", "param_bytes", "kv_self_bytes_per_token", "kv_cross_bytes_per_token")
    }
    return {
        "block": key,
        "stack": m["stack"],
        "position": m["position"],
        "latency_ms": latency_ms,
        **facts,
        "cache_bytes": _cache_bytes(m, w.batch, w.src_len, w.gen_len),
    }


def _memory_terms(memory: pd.DataFrame, blocks: pd.DataFrame, w: Workload, reasons: list[str]) -> tuple[float, float]:
    """Zero-layer peak and bytes of peak per byte of blocks, interpolated at `w` (see the module docstring)."""
    b_axis, s_axis, g_axis = (_sorted_unique(memory[c]) for c in ("batch", "src_len", "gen_len"))
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


def assembly_blocks(assembly: Assembly) -> list[tuple[str, str, int, int]]:
    """(stack, block key, start, size) of every block of `assembly`, bottom-up, encoder first."""
    return [(s, module_key(s, start, size), start, size) for s in STACKS for start, size in assembly.spans(s)]


def predict(profile: LatencyProfile, assembly: Assembly, workload: Workload) -> Prediction:
    """Latency and peak memory of one `generate` call of `assembly` (see the module docstring for the sums)."""
    costs = profile.costs(workload)
    keys = []
    for stack, key, start, size in assembly_blocks(assembly):
        if key not in costs.blocks.index:
            what = "teacher layer" if size == 1 else f"{size}-module at layer"
            raise AssemblyError(
                f"the profile has no measurements for {SHORT_NAMES[stack]} {what} {start} (block {key}); "
                f"profile the modular checkpoint this assembly comes from"
            )
        keys.append(key)
    columns = ["stack", "start", "size", "position", "latency_ms", "block_ms", "param_bytes", "cache_bytes"]
    parts = costs.blocks.loc[keys, columns].reset_index()
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
    memory = float(breakdown["memory_bytes"].sum()) if alpha is not None else None
    return Prediction(
        latency_ms=float(breakdown["latency_ms"].sum()),
        memory_bytes=memory,
        breakdown=breakdown,
        extrapolated=bool(costs.reasons),
        reason="; ".join(costs.reasons),
    )


# --------------------------------------------------------------------------------------------------------------------
# Summaries (computed here, printed by the CLI)
# --------------------------------------------------------------------------------------------------------------------


def block_summary(profile: LatencyProfile, stack: str) -> pd.DataFrame:
    """One row per block of `stack`: position, parameter bytes and its cost at each (batch, source length).

    Encoder: ms per encoder pass. Decoder: ms per generation step at the middle measured cache length, and the
    first step's extra.
    """
    t = profile.table
    kind = "enc_forward" if stack == "encoder" else "dec_step"
    rows = t[(t["kind"] == kind) & (t["stack"] == stack)]
    if stack == "decoder" and not rows.empty:
        lens = _sorted_unique(rows["cache_len"])
        mid = lens[len(lens) // 2]
        rows = rows[rows["cache_len"] == mid]
        label = f"step L={mid}"
    else:
        label = "pass"
    frames = [_pivot(rows, label)]
    if stack == "decoder":
        frames.append(_pivot(t[t["kind"] == "dec_first_extra"], "first extra"))
    info = rows.drop_duplicates("block").set_index("block")[["position", "param_bytes"]]
    return pd.concat([info, *frames], axis=1)


def _pivot(rows: pd.DataFrame, label: str) -> pd.DataFrame:
    wide = rows.pivot_table(index="block", columns=["batch", "src_len"], values="latency_ms", sort=False)
    wide.columns = [f"{label} B={b} S={s} (ms)" for b, s in wide.columns]
    return wide


def fixed_summary(profile: LatencyProfile) -> pd.DataFrame:
    """Fixed costs per grid point: the zero-layer generate (ms), where measured the calibration calls (ms) and the
    factors they give each stack, and the two peak-memory runs."""
    t = profile.table
    fixed = t[t["kind"] == "fixed_generate"][["batch", "src_len", "gen_len", "latency_ms"]]
    fixed = fixed.rename(columns={"latency_ms": "fixed_generate_ms"})
    calibration = t[t["kind"] == "calibration_generate"]
    if not calibration.empty:
        wide = calibration.pivot_table(index=["batch", "src_len", "gen_len"], columns="block", values="latency_ms")
        wide.columns = [f"{c}_ms" for c in wide.columns]
        fixed = fixed.merge(wide.reset_index(), on=["batch", "src_len", "gen_len"], how="left")
        costs = [profile.costs(Workload(int(r.batch), int(r.src_len), int(r.gen_len))) for r in fixed.itertuples()]
        for stack in ("encoder", "decoder"):
            fixed[f"{stack}_factor"] = [c.scales[stack] for c in costs]
            fixed[f"{stack}_offset_ms"] = [c.offsets[stack] for c in costs]
    memory = t[t["kind"] == "peak_memory"]
    if not memory.empty:
        wide = memory.pivot_table(index=["batch", "src_len", "gen_len"], columns="block", values="mem_bytes")
        wide.columns = [f"peak_{c}_bytes" for c in wide.columns]
        fixed = fixed.merge(wide.reset_index(), on=["batch", "src_len", "gen_len"], how="left")
    return fixed.sort_values(["batch", "src_len", "gen_len"]).reset_index(drop=True)


def default_workload(profile: LatencyProfile) -> Workload:
    """The profile's own reference call: its smallest batch and source length, its longest generation."""
    grid = profile.grid
    try:
        return Workload(min(grid["batch_sizes"]), min(grid["src_lens"]), max(grid["gen_lens"]))
    except (KeyError, ValueError, TypeError):
        raise CheckpointError("the profile's metadata holds no workload grid") from None


def speed_ratio_predictor(profile: LatencyProfile, teacher: Assembly, workload: Workload):
    """A function assembly -> predicted speed-up over `teacher` on `workload`, for the speed-first strategy."""
    base = predict(profile, teacher, workload).latency_ms

    def speed_ratio(assembly: Assembly) -> float:
        return base / predict(profile, assembly, workload).latency_ms

    return speed_ratio
