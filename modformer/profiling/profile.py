"""A latency profile, the artifact: measured block costs as a tidy table, and what they were measured on.

A profile is two files: the table (`profile.csv`), one row per measurement, and the metadata (`profile.json`): the
hardware fingerprint, the date, the grid, the model it was measured on and the validation figures. This module owns
their names and their save/load; `modformer.profiling.cost_model` predicts from the table and
`modformer.profiling.summary` condenses it for display.

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
  encoder layer, its first half, the same three for the decoder, and the whole teacher; timed in the same rounds as
  ``fixed_generate``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modformer import __version__
from modformer.errors import CheckpointError, ConfigError
from modformer.io import atomic_path, read_json, write_json
from modformer.profiling import hardware
from modformer.schemas import FORMAT_VERSION, ProfileMeta, invalid, validate

TABLE_NAME = "profile.csv"
META_NAME = "profile.json"
FORMAT = "modformer-latency-profile/1"
ENGINES_SUFFIX = ".engines.csv"  # beside the table: profile.engines.csv, NAME.engines.csv

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
# stack (None: all of them; HALF: the first ceil(n/2)). Profiles written before the half calls existed lack them.
HALF = "half"
CALIBRATION: dict[str, dict[str, int | str | None]] = {
    "encoder_only": {"encoder": None, "decoder": 0},
    "encoder_first": {"encoder": 1, "decoder": 0},
    "encoder_half": {"encoder": HALF, "decoder": 0},
    "decoder_only": {"encoder": 0, "decoder": None},
    "decoder_first": {"encoder": 0, "decoder": 1},
    "decoder_half": {"encoder": 0, "decoder": HALF},
    "teacher": {"encoder": None, "decoder": None},
}


def kept_layers(keep: int | str | None, depth: int) -> int:
    """How many of a stack's `depth` layers a `CALIBRATION` entry keeps."""
    if keep is None:
        return depth
    if keep == HALF:
        return -(-depth // 2)
    return int(keep)


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


@dataclass(eq=False)  # compared by identity: a table has no single truth value (and the cost model caches per profile)
class LatencyProfile:
    """Measured block costs (`table`, see the module docstring) and what they were measured on (`meta`).

    What they predict: `modformer.profiling.cost_model.predict`."""

    table: pd.DataFrame
    meta: dict = field(default_factory=dict)
    # Whole-model costs in engines that run the model natively (`modformer.profiling.engines`); None: torch only.
    engines: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.table = _conform(self.table, "profile table")

    @property
    def targets(self) -> list[str]:
        """The serving targets this profile predicts: its torch dtype, then every engine target it measured."""
        torch_target = f"torch:{self.fingerprint.get('dtype', self.meta.get('settings', {}).get('dtype', 'fp32'))}"
        engines = [] if self.engines is None else list(dict.fromkeys(self.engines["target"]))
        return [torch_target, *engines]

    def refresh_factor(self, target: str, batch: int) -> float:
        """What predictions of `target` at `batch` are scaled by since `modformer profile refresh` (1.0 without one):
        see `modformer.profiling.refresh`."""
        return refresh_factor(self.meta.get("refresh"), target, batch)

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
            "format_version": FORMAT_VERSION,
            "modformer_version": __version__,
            "table": table_path.name,
            "table_rows": len(self.table),
            "table_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        if self.engines is not None and len(self.engines):
            engines_path = table_path.with_name(table_path.stem + ENGINES_SUFFIX)
            engines_text = self.engines.to_csv(index=False)
            with atomic_path(engines_path) as tmp:
                tmp.write_text(engines_text, encoding="utf-8")
            meta["engines_table"] = engines_path.name
            meta["engines_sha256"] = hashlib.sha256(engines_text.encode()).hexdigest()
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
        validate(ProfileMeta, meta, meta_path)
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
        table = _conform(table, f"{table_path}: profile table")
        _check_measured(table, table_path)
        if meta.get("table_rows") is not None and meta["table_rows"] != len(table):
            raise invalid(meta_path, "table_rows", f"{meta['table_rows']}, but {table_path.name} has {len(table)} rows")
        profile = cls(table, meta, _read_engines(meta_path, meta))
        if expect_fingerprint is not None:
            warn_if_mismatch(profile.fingerprint, expect_fingerprint, str(meta_path))
        return profile


def refresh_factor(refresh: dict | None, target: str, batch: int) -> float:
    """The factor a refresh record (`meta["refresh"]`) holds for `target` at the batch size nearest `batch` (on a log
    scale: a refresh times the profile's own batch sizes); 1.0 where it holds none."""
    factors = (refresh or {}).get("factors", {}).get(target)
    if not factors:
        return 1.0
    nearest = min(factors, key=lambda b: (abs(np.log(int(b)) - np.log(batch)), int(b)))
    return float(factors[nearest])


def _read_engines(meta_path: Path, meta: dict) -> pd.DataFrame | None:
    name = meta.get("engines_table")
    if not name:
        return None
    path = meta_path.with_name(str(name))
    if not path.is_file():
        raise CheckpointError(f"{path}: profile's engine table not found")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != meta.get("engines_sha256"):
        raise CheckpointError(f"{path}: engine table is corrupt or does not belong to {meta_path.name}")
    try:
        return pd.read_csv(io.BytesIO(raw))
    except (ValueError, pd.errors.ParserError) as err:
        raise CheckpointError(f"{path}: engine table cannot be read ({str(err).splitlines()[0]})") from None


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


def mismatch_message(recorded: dict, current: dict, where: str) -> str | None:
    """One line naming what differs between the fingerprint a profile `recorded` and the `current` one, or None."""
    diffs = hardware.compare(recorded, current)
    if not diffs:
        return None
    return f"{where} was measured on other hardware or settings; its numbers may not hold here ({'; '.join(diffs)})"


def warn_if_mismatch(recorded: dict, current: dict, where: str) -> list[str]:
    """Warn (`ProfileMismatchWarning`, the `mismatch_message`) where the fingerprints differ; return the differences."""
    message = mismatch_message(recorded, current, where)
    if message:
        warnings.warn(message, ProfileMismatchWarning, stacklevel=3)
    return hardware.compare(recorded, current)


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


def _check_measured(table: pd.DataFrame, path: Path) -> None:
    """Every row names its kind, every timed row holds a finite latency, every memory row a size: a cell emptied or
    set to NaN by hand would otherwise predict NaN. (Line numbers count the header as line 1.)"""
    empty = table["kind"].isna().to_numpy()
    if empty.any():
        raise CheckpointError(f"{path} line {int(empty.argmax()) + 2}: column 'kind' is empty")
    timed = (table["kind"] != "peak_memory").to_numpy()
    for column, rows in (("latency_ms", timed), ("mem_bytes", ~timed)):
        values = table[column].to_numpy(dtype="float64", na_value=float("nan"))
        bad = rows & ~np.isfinite(values)
        if bad.any():
            row = int(bad.argmax())
            raise CheckpointError(
                f"{path} line {row + 2}: column '{column}' must hold a finite number, got {table.at[row, column]}"
            )


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
# Using a profile here, and the workload it stands for
# --------------------------------------------------------------------------------------------------------------------


def load_profile(path: str | Path) -> tuple[LatencyProfile, list[str]]:
    """Read a saved profile (its folder, its .json or its .csv) and the warnings that come with using it here.

    The warnings (one line each; none when it matches) say what differs between the machine and software the profile
    was measured on and this one, at the profile's own device, dtype and thread count. A CUDA profile is compared
    only where CUDA is available: elsewhere there is no GPU here to compare with.
    """
    profile = LatencyProfile.load(path)
    recorded = profile.fingerprint
    device = recorded.get("device")
    if device == "cpu" or (device == "cuda" and torch.cuda.is_available()):
        here = hardware.fingerprint(device, recorded.get("dtype", "fp32"), recorded.get("torch_threads"))
        message = mismatch_message(recorded, here, str(path))
        if message:
            return profile, [message]
    return profile, []


def default_workload(profile: LatencyProfile) -> Workload:
    """The profile's own reference call: its smallest batch and source length, its longest generation."""
    grid = profile.grid
    try:
        return Workload(min(grid["batch_sizes"]), min(grid["src_lens"]), max(grid["gen_lens"]))
    except (KeyError, ValueError, TypeError):
        raise CheckpointError("the profile's metadata holds no workload grid") from None


def resolve_workload(
    profile: LatencyProfile, batch: int | None = None, src_len: int | None = None, gen_len: int | None = None
) -> dict:
    """The workload a caller asked for, as `Workload` fields: those given, the rest from `default_workload`.

    Empty when none is given: a plan then stands for its profile's default workload. The values are not checked
    here; `Workload(**fields)` checks them where the plan uses them.
    """
    given = {k: v for k, v in (("batch", batch), ("src_len", src_len), ("gen_len", gen_len)) if v is not None}
    if not given:
        return {}
    return {**asdict(default_workload(profile)), **given}


# Transitional: where these lived before the cost model and the summaries left this module. Remove once nothing
# imports them from here (modformer/cli.py, modformer/planner/choice.py at the time of the split).
