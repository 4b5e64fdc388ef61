"""Bad-input cases for artifacts that parse but hold wrong types, shapes or versions; merged into
`tests/test_cli.py::BAD_INPUT` (each entry: a builder taking the test's `Ctx`, and the expected message part).

Every artifact read by a command is copied into the case's folder and edited there: a wrong type, a wrong shape, a
value inconsistent with the rest, a newer format version, a file cut short. The answer is one line naming the file
and the field (`modformer/schemas.py`). Helpers are copied here rather than imported from `tests/test_cli.py`, which
imports this module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

LINE_DATA = ("--src-ext", "en", "--tgt-ext", "de")
Edit = Callable[[dict], object]


def _edit_json(path: Path, edit: Edit) -> Path:
    obj = json.loads(path.read_text(encoding="utf-8"))
    edit(obj)
    path.write_text(json.dumps(obj), encoding="utf-8")  # NaN is written as NaN, as Python's json reads it back
    return path


def _cut_short(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")


def _set(obj: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for name in parents:
        obj = obj[name]
    obj[key] = value


def setting(dotted: str, value) -> Edit:
    """An edit that sets one (dotted) key."""
    return lambda obj: _set(obj, dotted, value)


# --- modules: modular_config.json (assemble), trainer state and manifest (train --resume) -------------------------
def _modules_copy(c, name: str, edit: Edit | None = None, cut: bool = False) -> Path:
    copy = c.tmp / "mods"
    shutil.copytree(c.modules, copy)
    if cut:
        _cut_short(copy / name)
    elif edit is not None:
        _edit_json(copy / name, edit)
    return copy


def modular_config(edit: Edit | None = None, cut: bool = False) -> Callable:
    return lambda c: ["assemble", "--modules", _modules_copy(c, "modular_config.json", edit, cut)]


def manifest(edit: Edit) -> Callable:
    return lambda c: c.train("--resume", "--steps", 8, out=_modules_copy(c, "checkpoint.json", edit))


def trainer_state(edit: Edit) -> Callable:
    def build(c) -> list:
        copy = _modules_copy(c, "checkpoint.json")
        state = torch.load(copy / "trainer_state.pt", weights_only=True)
        edit(state)
        torch.save(state, copy / "trainer_state.pt")
        return c.train("--resume", "--steps", 8, out=copy)

    return build


# --- profile: profile.json and its table (profile show) -----------------------------------------------------------
def profile(edit: Edit | None = None, table: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Callable:
    def build(c) -> list:
        folder = c.tmp / "profile"
        shutil.copytree(c.profile.parent, folder)
        meta = folder / c.profile.name
        if table is not None:  # an edited table, its checksum updated to match (as a hand edit would)
            csv = meta.with_suffix(".csv")
            table(pd.read_csv(csv)).to_csv(csv, index=False)
            digest = hashlib.sha256(csv.read_bytes()).hexdigest()
            _edit_json(meta, setting("table_sha256", digest))
        if edit is not None:
            _edit_json(meta, edit)
        return ["profile", "show", meta]

    return build


def _nan_latency(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[frame.index[frame["kind"] != "peak_memory"][0], "latency_ms"] = float("nan")
    return frame


# --- plan: frontier.json, chosen.json (export --plan) -------------------------------------------------------------
SPEC = "enc=2,2 dec=2,2"


def plan_folder(c, frontier: Edit | None = None, chosen: Edit | None = None) -> Path:
    """A small plan folder of the shared modules, as `Plan.save` writes it (the tables Plan.load reads)."""
    folder = c.tmp / "plan"
    folder.mkdir()
    choice = {"assembly": SPEC, "assembly_json": {"encoder": [2, 2], "decoder": [2, 2]}, "target": "torch:fp32"}
    record = {
        "format_version": 1,
        "summary": {"metric": "bleu", "settings": {"modules": str(c.modules)}, "budget": {"latency_ms": None}},
        "chosen": dict(choice),
        "frontier": [{"assembly": SPEC, "params": 54400, "size_ratio": 1.76, "target": "torch:fp32"}],
        "rules": [],
        "rules_columns": [],
    }
    for name, obj, edit in (("frontier.json", record, frontier), ("chosen.json", choice, chosen)):
        (folder / name).write_text(json.dumps(obj), encoding="utf-8")
        if edit is not None:
            _edit_json(folder / name, edit)
    for name in ("frontier.csv", "scored.csv"):
        (folder / name).write_text(f'assembly,params\n"{SPEC}",54400\n', encoding="utf-8")
    return folder


def plan(frontier: Edit | None = None, chosen: Edit | None = None) -> Callable:
    return lambda c: ["export", "--plan", plan_folder(c, frontier, chosen), "--out", c.tmp / "out"]


# --- teacher run: teacher.json (teacher --resume) -----------------------------------------------------------------
TEACHER_INFO = {
    "format_version": 1,
    "teacher": {"preset": "tiny", "steps": 4, "batch_size": 8, "max_source_len": 32, "max_target_len": 32},
    "completed_steps": 4,
    "wall_s": 1.0,
    "val_loss": 5.0,
    "data": "train.en + train.de",
    "train_pairs": 400,
    "data_report": {},
}


def teacher_run(edit: Edit | None = None, cut: bool = False) -> Callable:
    def build(c) -> list:
        folder = c.tmp / "teacher"
        shutil.copytree(c.t5, folder)
        (folder / "teacher.json").write_text(json.dumps(TEACHER_INFO), encoding="utf-8")
        (folder / "trainer_state.pt").write_bytes(b"")  # present: the run is resumable; teacher.json is read first
        if cut:
            _cut_short(folder / "teacher.json")
        elif edit is not None:
            _edit_json(folder / "teacher.json", edit)
        return ["teacher", "--data", c.data, *LINE_DATA, "--out", folder, "--preset", "tiny", "--resume"]

    return build


# --- export: modformer.json (evaluate --model) and demo.json (demo) -----------------------------------------------
def export_record(edit: Edit) -> Callable:
    def build(c) -> list:
        copy = c.tmp / "export"
        shutil.copytree(c.exported, copy)
        _edit_json(copy / "modformer.json", edit)
        return ["evaluate", "--model", copy, "--data", c.data, *LINE_DATA, "--limit", 4]

    return build


def demo_record(record: dict) -> Callable:
    def build(c) -> list:
        folder = c.tmp / "demo"
        folder.mkdir()
        (folder / "demo.json").write_text(json.dumps(record), encoding="utf-8")
        return ["demo", "--fast", "--out", folder]

    return build


def _drop(*keys: str) -> Edit:
    return lambda obj: [obj.pop(k) for k in keys]


NEWER = "written by a newer modformer (format 2, this one reads up to 1): upgrade modformer"

ARTIFACT_CASES: dict[str, tuple[Callable, str]] = {
    # modular_config.json
    "modular-config-wrong-type": (
        modular_config(setting("encoder_layers", "four")),
        "modular_config.json: field 'encoder_layers': Input should be a valid integer, got 'four'",
    ),
    "modular-config-wrong-shape": (
        modular_config(setting("granularities", 2)),
        "modular_config.json: field 'granularities': Input should be a valid list",
    ),
    "modular-config-granularity-deeper-than-teacher": (
        modular_config(setting("granularities", [2, 8])),
        "modular_config.json: field 'granularities': granularity 8 is larger than the 4-layer encoder",
    ),
    "modular-config-layers-disagree-with-spans": (
        modular_config(setting("encoder_layers", 6)),
        "modular_config.json: field 'spans': do not match encoder_layers, decoder_layers and granularities",
    ),
    "modular-config-negative-steps": (
        modular_config(setting("training.completed_steps", -1)),
        "field 'training.completed_steps': Input should be greater than or equal to 0, got -1",
    ),
    "modular-config-newer-format": (modular_config(setting("format_version", 2)), f"modular_config.json: {NEWER}"),
    "modular-config-keys-missing": (
        modular_config(_drop("encoder_layers", "decoder_layers")),
        "modular_config.json: field 'encoder_layers': required but missing (and 1 more)",
    ),
    "modular-config-cut-short": (modular_config(cut=True), "modular config is not valid JSON"),
    # trainer state and manifest of a checkpoint
    "trainer-state-negative-step": (
        trainer_state(setting("step", -1)),
        "trainer_state.pt: field 'step': Input should be greater than or equal to 0, got -1",
    ),
    "trainer-state-history-past-step": (
        trainer_state(setting("history", [{"step": 99, "mean": 6.5}])),
        "trainer_state.pt: field 'history[0].step': 99 is past step 6",
    ),
    "trainer-state-newer-format": (trainer_state(setting("format_version", 2)), f"trainer_state.pt: {NEWER}"),
    "checkpoint-manifest-wrong-type": (
        manifest(setting("step", "six")),
        "checkpoint.json: field 'step': Input should be a valid integer, got 'six'",
    ),
    "checkpoint-manifest-bad-hash": (
        manifest(lambda m: m["files"].update({"modules.safetensors": {"bytes": 1, "sha256": "abc"}})),
        "checkpoint.json: field 'files['modules.safetensors'].sha256': String should match pattern",
    ),
    "checkpoint-manifest-step-disagrees": (
        manifest(setting("step", 5)),
        "checkpoint.json: field 'step': 5, but trainer_state.pt is of step 6",
    ),
    "checkpoint-manifest-path-outside": (
        manifest(setting("files", {"../elsewhere": {"bytes": 1, "sha256": "0" * 64}})),
        "checkpoint.json: field 'files': '../elsewhere' is not a path inside the checkpoint folder",
    ),
    # profile.json and its table
    "profile-meta-wrong-type": (
        profile(setting("grid.batch_sizes", ["one"])),
        "field 'grid.batch_sizes[0]': Input should be a valid integer, got 'one'",
    ),
    "profile-meta-wrong-shape": (
        profile(setting("fingerprint", "cpu")),
        "field 'fingerprint': Input should be a valid dictionary",
    ),
    "profile-meta-unknown-statistic": (
        profile(setting("settings.statistic", "mean")),
        "field 'settings.statistic': Input should be 'min' or 'median', got 'mean'",
    ),
    "profile-meta-rows-disagree": (profile(setting("table_rows", 3)), "field 'table_rows': 3, but profile.csv has"),
    "profile-meta-table-outside": (
        profile(setting("table", "../profile.csv")),
        "field 'table': must be a file name beside this file, got '../profile.csv'",
    ),
    "profile-meta-newer-format": (profile(setting("format_version", 2)), NEWER),
    "profile-table-nan-latency": (
        profile(table=_nan_latency),
        "profile.csv line 2: column 'latency_ms' must hold a finite number",
    ),
    "profile-table-lacks-a-column": (
        profile(table=lambda frame: frame.drop(columns=["base_ms"])),
        "profile.csv: profile table lacks the column(s) base_ms",
    ),
    # plan: frontier.json and chosen.json
    "plan-chosen-wrong-type": (
        plan(chosen=setting("assembly", 42)),
        "chosen.json: field 'assembly': Input should be a valid string, got 42",
    ),
    "plan-chosen-unparseable": (plan(chosen=setting("assembly", "enc=two")), "chosen.json: field 'assembly': "),
    "plan-chosen-json-disagrees": (
        plan(chosen=setting("assembly_json", {"encoder": [4], "decoder": [2, 2]})),
        "chosen.json: field 'assembly_json': is not the assembly 'enc=2,2 dec=2,2'",
    ),
    "plan-frontier-wrong-shape": (
        plan(frontier=setting("frontier", {"assembly": SPEC})),
        "frontier.json: field 'frontier': Input should be a valid list",
    ),
    "plan-frontier-nan": (
        plan(frontier=lambda r: r["frontier"][0].update(size_ratio=float("nan"))),
        "frontier.json: field 'frontier[0].size_ratio': Input should be a finite number, got nan",
    ),
    "plan-negative-budget": (
        plan(frontier=setting("summary.budget.latency_ms", -5)),
        "frontier.json: field 'summary.budget.latency_ms': Input should be greater than 0, got -5",
    ),
    "plan-newer-format": (plan(frontier=setting("format_version", 2)), f"frontier.json: {NEWER}"),
    # teacher.json
    "teacher-info-negative-steps": (
        teacher_run(setting("teacher.steps", -5)),
        "teacher.json: field 'teacher.steps': Input should be greater than or equal to 1, got -5",
    ),
    "teacher-info-wrong-type": (
        teacher_run(setting("completed_steps", "4")),
        "teacher.json: field 'completed_steps': Input should be a valid integer, got '4'",
    ),
    "teacher-info-past-steps": (
        teacher_run(setting("completed_steps", 99)),
        "teacher.json: field 'completed_steps': 99 is past teacher.steps 4",
    ),
    "teacher-info-nan-loss": (
        teacher_run(setting("val_loss", float("nan"))),
        "teacher.json: field 'val_loss': Input should be a finite number, got nan",
    ),
    "teacher-info-newer-format": (teacher_run(setting("format_version", 2)), f"teacher.json: {NEWER}"),
    "teacher-info-older-format": (
        teacher_run(setting("format_version", 0)),
        "teacher.json: written by an older modformer (format 0, this one reads format 1)",
    ),
    "teacher-info-cut-short": (teacher_run(cut=True), "teacher info is not valid JSON"),
    # modformer.json of an export
    "export-record-wrong-type": (
        export_record(setting("parameters", "many")),
        "modformer.json: field 'parameters': Input should be a valid integer, got 'many'",
    ),
    "export-record-assembly-disagrees": (
        export_record(setting("assembly", {"encoder": [4], "decoder": [2, 2]})),
        "modformer.json: field 'assembly': is not the assembly of assembly_spec",
    ),
    "export-record-bad-target": (
        export_record(setting("target", "fp32")),
        "modformer.json: field 'target': a target is engine:compute_type",
    ),
    "export-record-newer-format": (export_record(setting("format_version", 2)), f"modformer.json: {NEWER}"),
    # demo.json
    "demo-record-wrong-shape": (
        demo_record({"config": {}, "stage_seconds": []}),
        "demo.json: field 'stage_seconds': Input should be a valid dictionary",
    ),
    "demo-record-negative-seconds": (
        demo_record({"config": {}, "stage_seconds": {"teacher": -1.0}}),
        "demo.json: field 'stage_seconds.teacher': Input should be greater than or equal to 0, got -1.0",
    ),
    "demo-record-newer-format": (demo_record({"format_version": 2, "config": {}}), f"demo.json: {NEWER}"),
}
