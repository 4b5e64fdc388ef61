"""The declared schema of every artifact's metadata, checked when the artifact is read (`validate`).

Each JSON file an artifact holds (and the trainer state beside a checkpoint) has one pydantic model here. Reading
one goes through `validate`, which turns the first thing wrong into one line naming the file and the field
(`/runs/t/teacher.json: field 'teacher.steps': Input should be greater than 0, got -5`), a `CheckpointError` the
CLI prints as is. Rules every schema shares (`Record`):

* keys a schema does not name are kept and ignored: a file written by a newer modformer with more keys still reads;
* numbers are strict and finite: `"6"`, `true` or `6.5` is not a step count, NaN and infinity are not a loss;
* `format_version` (an integer) says which version of the format a file is in. Writers add `FORMAT_VERSION`; a file
  without it is version 1 (every file written before versions were recorded); a newer version is refused with
  "upgrade modformer", an older one than this modformer reads is refused naming the versions it reads.

Values that must agree with each other (layer counts and granularities, a step and its trainer state) are checked
by the schema where both are in the file, else by the loader with `invalid`, which words the error the same way.
`docs/artifacts.md` lists every schema's fields (generated from these models by `tests/test_schemas.py`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modformer.errors import CheckpointError

FORMAT_VERSION = 1  # what this modformer writes; a file without `format_version` is version 1
OLDEST_FORMAT = 1  # the oldest version this modformer still reads

PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1)]


class Inconsistent(ValueError):
    """Raised inside a schema's cross-check: names the field that disagrees with the rest of the file."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Record(BaseModel):
    """What every artifact's metadata shares: unknown keys kept, numbers strict and finite, a format version."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    WHAT: ClassVar[str] = "metadata"  # what the file is, in words
    FILE: ClassVar[str] = ""  # its name inside the artifact, for the docs
    READ_BY: ClassVar[str] = ""  # the loader that checks it, for the docs

    format_version: int = Field(1, description="version of this file's format; absent: 1")


def _granularities_fit(granularities: list[int], depths: dict[str, int]) -> None:
    if len(set(granularities)) != len(granularities):
        raise Inconsistent("granularities", f"lists a size twice: {granularities}")
    for stack, depth in depths.items():
        too_big = [k for k in granularities if k > depth]
        if too_big:
            raise Inconsistent("granularities", f"granularity {too_big[0]} is larger than the {depth}-layer {stack}")


# --- modules (modformer/modular/model.py) -----------------------------------------------------------------------
class TrainingRecord(BaseModel):
    """`training` in `modular_config.json`: the TrainConfig used and how far the run got (more keys are kept)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    steps: PositiveInt | None = Field(None, description="optimizer steps the run was set to")
    completed_steps: Count | None = Field(None, description="steps done when the modules were saved")
    wall_s: Seconds | None = Field(None, description="training wall time, over all sessions")
    threads: PositiveInt | None = Field(None, description="torch threads the run used")

    @model_validator(mode="after")
    def _within_steps(self) -> TrainingRecord:
        if self.steps is not None and self.completed_steps is not None and self.completed_steps > self.steps:
            raise Inconsistent("completed_steps", f"{self.completed_steps} is past steps {self.steps}")
        return self


class Span(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    stack: Literal["encoder", "decoder"]
    start: Count
    size: PositiveInt


class ModularConfigRecord(Record):
    """`modular_config.json`: what a modular checkpoint holds and what it was made from."""

    WHAT: ClassVar[str] = "modular config"
    FILE: ClassVar[str] = "modular_config.json"
    READ_BY: ClassVar[str] = "`ModularModel.from_pretrained` (`ModularConfig.from_json`)"

    teacher: Name = Field(description="path of the teacher checkpoint the modules replace layers of")
    model_type: Name = Field(description="model family, e.g. t5 or bart")
    encoder_layers: PositiveInt = Field(description="the teacher's encoder depth")
    decoder_layers: PositiveInt = Field(description="the teacher's decoder depth")
    granularities: list[Annotated[int, Field(ge=2)]] = Field(
        min_length=1, description="trained module sizes (each >= 2, none deeper than a stack)"
    )
    teacher_config_fingerprint: Name = Field(description="hash of the teacher's architecture config")
    teacher_weights_fingerprint: Name = Field(description="hash of the teacher's embedding matrix")
    init: str = Field("bottom", description="which teacher layer of its span a module starts from")
    training: TrainingRecord = Field(default_factory=TrainingRecord, description="the TrainConfig used, progress")
    modformer_version: str = Field("", description="the modformer that wrote it")
    created: str = Field("", description="when (UTC, ISO 8601)")
    spans: list[Span] | None = Field(None, description="every module (stack, start, size): follows from the rest")

    @model_validator(mode="after")
    def _consistent(self) -> ModularConfigRecord:
        _granularities_fit(self.granularities, {"encoder": self.encoder_layers, "decoder": self.decoder_layers})
        if self.spans is not None:
            expected = [
                (stack, start, k)
                for stack, depth in (("encoder", self.encoder_layers), ("decoder", self.decoder_layers))
                for k in sorted(self.granularities)
                for start in range(0, depth - k + 1, k)
            ]
            if [(s.stack, s.start, s.size) for s in self.spans] != expected:
                raise Inconsistent("spans", "do not match encoder_layers, decoder_layers and granularities")
        return self


# --- latency profile (modformer/profiling/profile.py) -----------------------------------------------------------
class ProfileFingerprint(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    device: str | None = Field(None, description="cpu or cuda")
    dtype: str | None = Field(None, description="fp32, bf16 or fp16")
    torch_threads: PositiveInt | None = None


class ProfileGrid(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    batch_sizes: list[PositiveInt] | None = Field(None, min_length=1)
    src_lens: list[PositiveInt] | None = Field(None, min_length=1)
    gen_lens: list[PositiveInt] | None = Field(None, min_length=1)
    cache_lens: list[Count] | None = None
    fixed_gen_lens: list[PositiveInt] | None = None


class ProfileModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    encoder_layers: PositiveInt | None = None
    decoder_layers: PositiveInt | None = None
    granularities: list[Annotated[int, Field(ge=2)]] | None = None
    teacher_config_fingerprint: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProfileModel:
        if self.granularities is not None and self.encoder_layers and self.decoder_layers:
            _granularities_fit(self.granularities, {"encoder": self.encoder_layers, "decoder": self.decoder_layers})
        return self


class ProfileSettings(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    statistic: Literal["min", "median"] | None = None
    dtype: str | None = None


def _plain_name(value: str | None) -> str | None:
    if value is not None and (not value or "/" in value or "\\" in value or value in (".", "..")):
        raise ValueError(f"must be a file name beside this file, got {value!r}")
    return value


class ProfileRefresh(BaseModel):
    """A profile's refresh (`modformer profile refresh`): the teacher re-timed later, and the factors predictions are
    scaled by since."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    date: str = Field("", description="when the teacher was re-timed (UTC, ISO 8601)")
    factors: dict[str, dict[str, Annotated[float, Field(gt=0)]]] = Field(
        description="per target, per batch size: the teacher's latency now over its prediction from the table"
    )


class ProfileMeta(Record):
    """`profile.json` (or `NAME.json`): what the table beside it was measured on, and how to check the table."""

    WHAT: ClassVar[str] = "profile metadata"
    FILE: ClassVar[str] = "profile.json"
    READ_BY: ClassVar[str] = "`LatencyProfile.load`"

    format: str = Field(description="modformer-latency-profile/1")
    created: str = Field("", description="when (UTC, ISO 8601)")
    fingerprint: ProfileFingerprint = Field(default_factory=ProfileFingerprint, description="hardware, software")
    grid: ProfileGrid = Field(default_factory=ProfileGrid, description="batch sizes, lengths measured")
    model: ProfileModel = Field(default_factory=ProfileModel, description="the modules and teacher measured")
    settings: ProfileSettings = Field(default_factory=ProfileSettings, description="the profile command's settings")
    table: str | None = Field(None, description="file name of the table (profile.csv)")
    table_rows: Count | None = Field(None, description="rows in the table")
    table_sha256: Sha256 = Field(description="sha256 of the table file")
    engines_table: str | None = Field(None, description="file name of the engines' table, if measured")
    engines_sha256: Sha256 | None = Field(None, description="its sha256")
    refresh: ProfileRefresh | None = Field(None, description="latest refresh: factors that scale every prediction")

    @field_validator("table", "engines_table")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _plain_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> ProfileMeta:
        if self.engines_table and not self.engines_sha256:
            raise Inconsistent("engines_sha256", "missing although engines_table is given")
        return self


# --- plan (modformer/planner/artifact.py) -----------------------------------------------------------------------
class Budget(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    latency_ms: Annotated[float, Field(gt=0)] | None = None
    memory_mb: Annotated[float, Field(gt=0)] | None = None
    params_m: Annotated[float, Field(gt=0)] | None = None
    speedup: Annotated[float, Field(gt=0)] | None = None


class PlanSettings(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    modules: str | None = Field(None, description="the modular checkpoint the plan was made from")


class PlanSummary(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    metric: Name = "bleu"
    settings: PlanSettings = Field(default_factory=PlanSettings)
    budget: Budget | None = None
    workload: dict[str, PositiveInt] = Field(default_factory=dict)


class Chosen(BaseModel):
    """The assembly a plan chose, with its figures (more keys are kept)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    assembly: Name = Field(description="the assembly, e.g. enc=2,2 dec=2,2")
    assembly_json: dict[str, list[PositiveInt]] | None = Field(None, description="the same as JSON")
    target: Name | None = Field(None, description="serving target, e.g. torch:fp32")
    size_ratio: Annotated[float, Field(gt=0)] | None = None
    speed_ratio: Annotated[float, Field(gt=0)] | None = None
    predicted_latency_ms: Annotated[float, Field(ge=0)] | None = None
    measured_latency_ms: Annotated[float, Field(ge=0)] | None = None


class FrontierRow(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    assembly: Name
    target: str | None = None
    params: Annotated[float, Field(ge=1)] | None = None  # a float where the table had a missing cell
    size_ratio: Annotated[float, Field(gt=0)] | None = None
    predicted_latency_ms: Annotated[float, Field(ge=0)] | None = None


class PlanRecord(Record):
    """`frontier.json`: a plan's summary, its choice, the frontier and the rule tables."""

    WHAT: ClassVar[str] = "plan record"
    FILE: ClassVar[str] = "frontier.json"
    READ_BY: ClassVar[str] = "`Plan.load`"

    summary: PlanSummary = Field(description="settings, budget, search and validation figures")
    chosen: Chosen = Field(description="the assembly to ship (as chosen.json)")
    frontier: list[FrontierRow] = Field(description="the frontier table, one object per row")
    rules: list[dict[str, Any]] = Field(default_factory=list, description="the rule table, one object per row")
    rules_columns: list[str] | None = Field(None, description="the rule table's columns, in order")

    @model_validator(mode="after")
    def _consistent(self) -> PlanRecord:
        if self.rules_columns is not None:
            for i, row in enumerate(self.rules):
                unknown = sorted(set(row) - set(self.rules_columns))
                if unknown:
                    raise Inconsistent(f"rules[{i}]", f"has the column {unknown[0]!r} missing from rules_columns")
        return self


class ChosenRecord(Chosen, Record):
    """`chosen.json`: the assembly to ship, with its figures (what `export --plan` reads)."""

    WHAT: ClassVar[str] = "plan's choice"
    FILE: ClassVar[str] = "chosen.json"
    READ_BY: ClassVar[str] = "`Plan.load`"


# --- teacher run (modformer/teacher.py) ---------------------------------------------------------------------------
class TeacherSettings(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    preset: Name | None = None
    steps: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    max_source_len: PositiveInt | None = None
    max_target_len: PositiveInt | None = None
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    seed: Count | None = None
    save_every: PositiveInt | None = None


class TeacherInfo(Record):
    """`teacher.json`: a teacher run's settings and how far it got."""

    WHAT: ClassVar[str] = "teacher info"
    FILE: ClassVar[str] = "teacher.json"
    READ_BY: ClassVar[str] = "`TeacherRun.load`"

    teacher: TeacherSettings = Field(default_factory=TeacherSettings, description="the TeacherConfig used")
    completed_steps: Count = Field(0, description="optimizer steps done")
    wall_s: Seconds | None = Field(0.0, description="training wall time, over all sessions")
    threads: PositiveInt | None = Field(None, description="torch threads the run used")
    val_loss: float | None = Field(None, description="held-out loss at the end of the run")
    modformer_version: str = Field("", description="the modformer that wrote it")
    data: str | None = Field("", description="where the training pairs came from")
    train_pairs: Count | None = Field(None, description="how many")
    data_report: dict[str, Any] = Field(default_factory=dict, description="pairs left out and cut, warnings")

    @model_validator(mode="after")
    def _within_steps(self) -> TeacherInfo:
        steps = self.teacher.steps
        if steps is not None and self.completed_steps > steps:
            raise Inconsistent("completed_steps", f"{self.completed_steps} is past teacher.steps {steps}")
        return self


# --- baseline student (modformer/baselines.py) -------------------------------------------------------------------
class StudentInfo(Record):
    """`modformer.json` of a baseline student: its method, settings, copied layers, size and progress."""

    WHAT: ClassVar[str] = "baseline info"
    FILE: ClassVar[str] = "modformer.json (baseline student)"
    READ_BY: ClassVar[str] = "`StudentRun.load`"

    baseline: dict[str, Any] = Field(default_factory=dict, description="the BaselineConfig used")
    layers: dict[Literal["encoder", "decoder"], list[Count]] = Field(description="teacher layer of each student layer")
    parameters: PositiveInt = Field(description="the student's parameter count")
    completed_steps: Count = Field(0, description="optimizer steps done")
    wall_s: Seconds | None = Field(0.0, description="training wall time")
    history: list[dict[str, Any]] = Field(default_factory=list, description="held-out losses by step")
    data_report: dict[str, Any] = Field(default_factory=dict, description="pairs left out and cut, warnings")
    modformer_version: str = Field("", description="the modformer that wrote it")

    @model_validator(mode="after")
    def _both_stacks(self) -> StudentInfo:
        for stack in ("encoder", "decoder"):
            if not self.layers.get(stack):
                raise Inconsistent(f"layers.{stack}", "lists no layer")
        return self


# --- trainer checkpoint (modformer/recipe.py) ---------------------------------------------------------------------
class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    bytes: Count
    sha256: Sha256


class CheckpointManifest(Record):
    """`checkpoint.json`, written last into a checkpoint: its step and each file's size and sha256."""

    WHAT: ClassVar[str] = "checkpoint manifest"
    FILE: ClassVar[str] = "checkpoint.json"
    READ_BY: ClassVar[str] = "`verify_checkpoint` (every `--resume`)"

    step: Count = Field(description="the step the checkpoint is of")
    files: dict[str, ManifestEntry] = Field(description="relative path -> bytes, sha256")
    modformer_version: str = Field("", description="the modformer that wrote it")

    @field_validator("files")
    @classmethod
    def _inside(cls, files: dict[str, ManifestEntry]) -> dict[str, ManifestEntry]:
        for name in files:
            parts = name.split("/")
            if not name or name.startswith("/") or "\\" in name or ".." in parts or "" in parts:
                raise ValueError(f"{name!r} is not a path inside the checkpoint folder")
        return files


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    step: Count


class TrainerStateRecord(Record):
    """`trainer_state.pt` (tensors and plain values, read with `torch.load(weights_only=True)`): all an exact resume
    needs beyond the weights."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)
    WHAT: ClassVar[str] = "trainer state"
    FILE: ClassVar[str] = "trainer_state.pt"
    READ_BY: ClassVar[str] = "`TrainerCheckpoint.load` (every `--resume`)"

    step: Count = Field(description="optimizer steps done")
    history: list[HistoryEntry] = Field(default_factory=list, description="held-out scores by step")
    seconds: Seconds = Field(0.0, description="training wall time so far")
    optimizer: dict[str, Any] = Field(description="the optimizer's state_dict")
    scheduler: dict[str, Any] | None = Field(None, description="the scheduler's state_dict")
    python_rng: dict[str, Any] | None = Field(None, description="the recipe's random.Random state")
    numpy_rng: dict[str, Any] | None = Field(None, description="numpy's global random state")
    torch_rng: Any = Field(None, description="torch's CPU generator state (a uint8 tensor)")

    @model_validator(mode="after")
    def _consistent(self) -> TrainerStateRecord:
        for i, entry in enumerate(self.history):
            if entry.step > self.step:
                raise Inconsistent(f"history[{i}].step", f"{entry.step} is past step {self.step}")
        if not {"state", "param_groups"} <= set(self.optimizer):
            raise Inconsistent("optimizer", "is not an optimizer state_dict (needs state and param_groups)")
        return self


# --- export (modformer/modular/export.py) and demo (modformer/demo.py) --------------------------------------------
class ExportRecord(Record):
    """`modformer.json` of an export: what it was cut from. Every field is optional (other folders, e.g. a baseline
    student's, hold a `modformer.json` of their own), but typed where present."""

    WHAT: ClassVar[str] = "export record"
    FILE: ClassVar[str] = "modformer.json (export)"
    READ_BY: ClassVar[str] = "`read_export_info`, `export_target`, `Export.load`, `evaluate --model`"

    assembly: dict[Literal["encoder", "decoder"], list[PositiveInt]] | None = Field(None, description="as JSON")
    assembly_spec: Name | None = Field(None, description="the assembly, e.g. enc=2,2 dec=2,2")
    teacher: str | None = Field(None, description="the teacher's path")
    teacher_config_fingerprint: str | None = Field(None, description="hash of the teacher's architecture config")
    parameters: PositiveInt | None = Field(None, description="the exported model's parameters")
    teacher_parameters: PositiveInt | None = Field(None, description="the teacher's")
    size_ratio: Annotated[float, Field(gt=0)] | None = Field(None, description="teacher parameters / exported")
    estimated_speed_ratio: Annotated[float, Field(gt=0)] | None = Field(None, description="the estimated speed-up")
    target: Name | None = Field(None, description="serving target, e.g. torch:fp32 or ctranslate2:int8")
    modformer_version: str = Field("", description="the modformer that wrote it")


class DemoRecord(Record):
    """`demo.json`: the demo's settings and the seconds each stage took; its presence marks a demo's folder."""

    WHAT: ClassVar[str] = "demo record"
    FILE: ClassVar[str] = "demo.json"
    READ_BY: ClassVar[str] = "`demo` (`prepare_folder`, `run_demo`)"

    config: dict[str, Any] = Field(default_factory=dict, description="the DemoConfig")
    stage_seconds: dict[str, Seconds] = Field(default_factory=dict, description="stage -> seconds")


SCHEMAS: tuple[type[Record], ...] = (
    ModularConfigRecord,
    CheckpointManifest,
    TrainerStateRecord,
    ProfileMeta,
    PlanRecord,
    ChosenRecord,
    TeacherInfo,
    StudentInfo,
    ExportRecord,
    DemoRecord,
)

R = TypeVar("R", bound=Record)


# --- reading ------------------------------------------------------------------------------------------------------
def validate(schema: type[R], obj: object, path: str | Path) -> R:
    """`obj` (the parsed file at `path`) checked against `schema`: its format version first, then every field. The
    first problem is a one-line `CheckpointError` naming the file and the field."""
    check_version(obj, path)
    try:
        return schema.model_validate(obj)
    except ValidationError as err:
        raise CheckpointError(describe(err, path)) from None


def check_version(obj: object, path: str | Path) -> int:
    """The file's `format_version` (1 when absent), refused when it is not one this modformer reads."""
    version = obj.get("format_version", 1) if isinstance(obj, dict) else 1
    if isinstance(version, bool) or not isinstance(version, int):
        raise invalid(path, "format_version", f"must be a whole number, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer modformer (format {version}, this one reads up to {FORMAT_VERSION}): "
            "upgrade modformer"
        )
    if version < OLDEST_FORMAT:
        reads = (
            f"format {OLDEST_FORMAT}"
            if OLDEST_FORMAT == FORMAT_VERSION
            else f"formats {OLDEST_FORMAT}-{FORMAT_VERSION}"
        )
        raise CheckpointError(
            f"{path}: written by an older modformer (format {version}, this one reads {reads}): read it with the "
            "modformer that wrote it, or make the artifact again"
        )
    return version


def invalid(path: str | Path, field: str, message: str) -> CheckpointError:
    """The one-line error for a value that disagrees with the rest of the artifact, worded as `validate`'s."""
    return CheckpointError(f"{path}: field '{field}': {message}")


def describe(err: ValidationError, path: str | Path) -> str:
    """One line for the first error of `err`: file, field path (`a.b[0]`), what is wrong and the value found."""
    errors = err.errors()
    first = errors[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Inconsistent):
        field, message = _join(first["loc"], cause.field), str(cause)
    else:
        field = _join(first["loc"])
        message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        message = re.sub(r" or instance of \w+", "", message)  # the schema's class name means nothing to a reader
        if first["type"] == "missing":
            message = "required but missing"
        elif first["type"] != "value_error":
            message += f", got {_short(first.get('input'))}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{path}: field '{field}': {message}{more}" if field else f"{path}: {message}{more}"
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _join(loc: tuple, tail: str = "") -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark for a dictionary key that is wrong: the key is already named
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isidentifier():
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return f"{out}.{tail}" if out and tail else out or tail


def _short(value: object, limit: int = 60) -> str:
    """`value` for a one-line message: its repr (escapes included), shortened; a whole object only by its type."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list) and len(repr(value)) > limit:
        return f"a list of {len(value)}"
    text = repr(value)
    if not text.isascii():
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
