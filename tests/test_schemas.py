"""Every artifact's metadata is checked on load against its schema (`modformer/schemas.py`): a file of today's format
loads (with or without `format_version`), and a wrong type, shape, inconsistent value or newer format is one line
naming the file and the field. The same cases through the real CLI: `tests/bad_input_artifacts.py`."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from modformer import schemas
from modformer.errors import CheckpointError
from modformer.io import torch_save
from modformer.modular.export import EXPORT_INFO_NAME, export_target, read_export_info
from modformer.modular.model import ModularConfig
from modformer.planner.artifact import CHOSEN_JSON, FRONTIER_JSON, Plan
from modformer.profiling.profile import COLUMNS, LatencyProfile, new_meta
from modformer.recipe import (
    MANIFEST_NAME,
    STATE_NAME,
    TrainerCheckpoint,
    TrainState,
    encode_random_state,
    verify_checkpoint,
    write_manifest,
)
from modformer.teacher import INFO_NAME, TeacherConfig, TeacherRun
from tests.bad_input_artifacts import NEWER, TEACHER_INFO, plan_folder, setting


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def refused(load, path: Path, edit, phrase: str) -> str:
    """Edit the JSON at `path`, then `load()` must raise one line naming the file and holding `phrase`."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    edit(obj)
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(CheckpointError) as err:
        load()
    line = one_line(err)
    assert str(path) in line and phrase in line, line
    return line


# --- the shared helper --------------------------------------------------------------------------------------------
def test_versions_absent_current_newer_and_older():
    obj = {"stage_seconds": {"teacher": 1.5}}
    assert schemas.validate(schemas.DemoRecord, obj, "demo.json").format_version == 1  # absent: version 1
    assert schemas.validate(schemas.DemoRecord, {**obj, "format_version": 1}, "demo.json").stage_seconds
    with pytest.raises(CheckpointError) as err:
        schemas.validate(schemas.DemoRecord, {**obj, "format_version": 2}, "x/demo.json")
    assert one_line(err) == f"x/demo.json: {NEWER}"
    with pytest.raises(CheckpointError, match=r"written by an older modformer \(format 0, this one reads format 1\)"):
        schemas.validate(schemas.DemoRecord, {**obj, "format_version": 0}, "demo.json")
    for bad in ("2", 1.0, True, None):
        with pytest.raises(CheckpointError, match="field 'format_version': must be a whole number"):
            schemas.validate(schemas.DemoRecord, {**obj, "format_version": bad}, "demo.json")


def test_unknown_keys_are_kept_and_numbers_are_strict_and_finite():
    record = schemas.validate(schemas.DemoRecord, {"stage_seconds": {}, "added_later": [1]}, "demo.json")
    assert record.model_extra == {"added_later": [1]}
    for value, phrase in (
        ("1", "Input should be a valid number, got '1'"),
        (math.inf, "Input should be a finite number, got inf"),
        (-1, "Input should be greater than or equal to 0, got -1"),
    ):
        with pytest.raises(CheckpointError) as err:
            schemas.validate(schemas.DemoRecord, {"stage_seconds": {"plan": value}}, "d/demo.json")
        assert one_line(err) == f"d/demo.json: field 'stage_seconds.plan': {phrase}"


def test_a_field_path_with_odd_keys_stays_one_line_and_ascii():
    files = {"a\nb": {"bytes": 1, "sha256": "x"}, "ok": {"bytes": 1, "sha256": "0" * 64}}
    with pytest.raises(CheckpointError) as err:
        schemas.validate(schemas.CheckpointManifest, {"step": 1, "files": files}, "checkpoint.json")
    assert "field 'files['a\\nb'].sha256'" in one_line(err)
    with pytest.raises(CheckpointError) as err:
        schemas.validate(schemas.DemoRecord, {"stage_seconds": {"x": "\ud800" * 100}}, "demo.json")
    line = one_line(err)
    assert line.isascii() and len(line) < 200 and line.endswith("...")


def test_a_json_object_where_a_value_belongs_is_named_not_echoed():
    with pytest.raises(CheckpointError) as err:
        schemas.validate(schemas.TeacherInfo, {"completed_steps": {"deep": [1] * 1000}}, "teacher.json")
    assert one_line(err) == "teacher.json: field 'completed_steps': Input should be a valid integer, got a JSON object"


# --- modular_config.json ------------------------------------------------------------------------------------------
MODULAR = {
    "teacher": "/runs/teacher",
    "model_type": "t5",
    "encoder_layers": 4,
    "decoder_layers": 4,
    "granularities": [2],
    "teacher_config_fingerprint": "a94894942bdd368e",
    "teacher_weights_fingerprint": "5c29095a4bdab6ff",
    "training": {"steps": 6, "completed_steps": 6, "wall_s": 0.4, "threads": 1, "lr": 5e-4},
}


def test_modular_config_round_trips_and_reads_todays_files(tmp_path):
    config = ModularConfig.from_json(dict(MODULAR), str(tmp_path))  # today's file: no format_version, no spans
    saved = config.to_json()
    assert saved["format_version"] == schemas.FORMAT_VERSION and len(saved["spans"]) == 4
    again = ModularConfig.from_json({**saved, "from_a_newer_modformer": 1}, str(tmp_path))
    assert again == config


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (setting("decoder_layers", 4.0), "field 'decoder_layers': Input should be a valid integer, got 4.0"),
        (setting("granularities", [1]), "field 'granularities[0]': Input should be greater than or equal to 2"),
        (setting("granularities", []), "field 'granularities': List should have at least 1 item"),
        (setting("granularities", [2, 2]), "field 'granularities': lists a size twice: [2, 2]"),
        (setting("granularities", [2, 6]), "granularity 6 is larger than the 4-layer encoder"),
        (setting("training.steps", 0), "field 'training.steps': Input should be greater than or equal to 1"),
        (setting("training.completed_steps", 9), "field 'training.completed_steps': 9 is past steps 6"),
        (setting("training.wall_s", math.nan), "field 'training.wall_s': Input should be a finite number"),
        (setting("spans", [{"stack": "encoder", "start": 0, "size": 2}]), "field 'spans': do not match"),
        (setting("model_type", ""), "field 'model_type': String should have at least 1 character"),
        (lambda obj: obj.pop("teacher"), "field 'teacher': required but missing"),
        (setting("format_version", 2), NEWER),
    ],
)
def test_modular_config_refuses(tmp_path, edit, phrase):
    obj = json.loads(json.dumps(MODULAR))
    edit(obj)
    with pytest.raises(CheckpointError) as err:
        ModularConfig.from_json(obj, str(tmp_path))
    line = one_line(err)
    assert line.startswith(f"{tmp_path / 'modular_config.json'}: ") and phrase in line, line


# --- the trainer checkpoint: trainer_state.pt and checkpoint.json -------------------------------------------------
def _trainer_state(step: int = 4) -> dict:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    return {
        "step": step,
        "history": [{"step": step, "mean": 3.0}],
        "seconds": 2.0,
        "optimizer": optimizer.state_dict(),
        "python_rng": encode_random_state(random.Random(1).getstate()),
        "torch_rng": torch.get_rng_state(),
    }


def test_trainer_state_of_today_and_of_this_version_loads(tmp_path):
    torch_save(tmp_path / STATE_NAME, _trainer_state())  # written before format versions
    assert TrainerCheckpoint.load(tmp_path).state == TrainState(4, [{"step": 4, "mean": 3.0}], 2.0)
    loaded = TrainerCheckpoint.load(tmp_path)
    loaded.save(tmp_path / "again")
    assert torch.load(tmp_path / "again" / STATE_NAME, weights_only=True)["format_version"] == schemas.FORMAT_VERSION
    assert TrainerCheckpoint.load(tmp_path / "again").state == loaded.state


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"step": -1}, "field 'step': Input should be greater than or equal to 0, got -1"),
        ({"step": 4.0}, "field 'step': Input should be a valid integer, got 4.0"),
        ({"seconds": math.nan}, "field 'seconds': Input should be a finite number"),
        ({"history": [{"step": 9}]}, "field 'history[0].step': 9 is past step 4"),
        ({"history": {"step": 4}}, "field 'history': Input should be a valid list"),
        ({"optimizer": {"lr": 1}}, "field 'optimizer': is not an optimizer state_dict"),
        ({"format_version": 2}, NEWER),
    ],
)
def test_trainer_state_refuses(tmp_path, change, phrase):
    torch_save(tmp_path / STATE_NAME, {**_trainer_state(), **change})
    with pytest.raises(CheckpointError) as err:
        TrainerCheckpoint.load(tmp_path)
    line = one_line(err)
    assert line.startswith(f"{tmp_path / STATE_NAME}: ") and phrase in line, line


def test_manifest_is_checked_and_must_agree_with_the_trainer_state(tmp_path):
    torch_save(tmp_path / STATE_NAME, _trainer_state(4))
    write_manifest(tmp_path, 4)
    path = tmp_path / MANIFEST_NAME
    assert json.loads(path.read_text())["format_version"] == schemas.FORMAT_VERSION
    assert verify_checkpoint(tmp_path) == 4
    refused(lambda: verify_checkpoint(tmp_path), path, setting("step", "4"), "field 'step': Input should be a valid")
    refused(
        lambda: verify_checkpoint(tmp_path),
        path,
        lambda m: m.update(step=4, files={"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}}),
        "field 'files': '/etc/passwd' is not a path inside the checkpoint folder",
    )
    refused(
        lambda: verify_checkpoint(tmp_path),
        path,
        setting("files", [STATE_NAME]),
        "field 'files': Input should be a valid dictionary",
    )


# --- teacher.json -------------------------------------------------------------------------------------------------
def test_teacher_info_of_today_loads_and_is_written_with_its_version(tmp_path):
    bundled = Path(__file__).resolve().parents[1] / "modformer" / "resources" / "teacher-multi30k-6x6"
    assert TeacherRun.load(bundled).completed_steps == 4000  # written before format versions
    TeacherRun(TeacherConfig(preset="tiny", steps=4), completed_steps=2).save(tmp_path)
    assert json.loads((tmp_path / INFO_NAME).read_text())["format_version"] == schemas.FORMAT_VERSION
    assert TeacherRun.load(tmp_path).completed_steps == 2


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (setting("teacher.steps", -5), "field 'teacher.steps': Input should be greater than or equal to 1, got -5"),
        (setting("teacher.dropout", 1.5), "field 'teacher.dropout': Input should be less than 1"),
        (setting("teacher", [1]), "field 'teacher': Input should be a valid dictionary"),
        (setting("completed_steps", 99), "field 'completed_steps': 99 is past teacher.steps 4"),
        (setting("val_loss", math.inf), "field 'val_loss': Input should be a finite number"),
        (setting("train_pairs", "400"), "field 'train_pairs': Input should be a valid integer"),
        (setting("format_version", 2), NEWER),
    ],
)
def test_teacher_info_refuses(tmp_path, edit, phrase):
    path = tmp_path / INFO_NAME
    path.write_text(json.dumps(TEACHER_INFO))
    assert TeacherRun.load(tmp_path).completed_steps == 4
    refused(lambda: TeacherRun.load(tmp_path), path, edit, phrase)


# --- plan: frontier.json, chosen.json -----------------------------------------------------------------------------
def _plan(tmp_path: Path, **edits) -> Path:
    return plan_folder(SimpleNamespace(tmp=tmp_path, modules=tmp_path / "modules"), **edits)


def test_plan_of_today_loads(tmp_path):
    folder = _plan(tmp_path, frontier=lambda r: r.pop("format_version"))
    plan = Plan.load(folder)
    assert plan.chosen["assembly"] == "enc=2,2 dec=2,2" and "format_version" not in plan.chosen
    assert plan.modules == str(tmp_path / "modules")


@pytest.mark.parametrize(
    ("file", "edit", "phrase"),
    [
        (CHOSEN_JSON, setting("target", 3), "field 'target': Input should be a valid string, got 3"),
        (CHOSEN_JSON, setting("assembly", "enc=2,x"), "field 'assembly': cannot parse assembly"),
        (CHOSEN_JSON, setting("format_version", 2), NEWER),
        (FRONTIER_JSON, setting("summary", "plan"), "field 'summary': Input should be a valid dictionary"),
        (FRONTIER_JSON, setting("chosen.assembly", "enc=9"), "field 'chosen.assembly': "),
        (FRONTIER_JSON, setting("rules", [{"strategy": "size-first"}]), "field 'rules[0]': has the column 'strategy'"),
        (FRONTIER_JSON, lambda r: r["frontier"][0].update(params=0), "field 'frontier[0].params': Input should be"),
        (FRONTIER_JSON, lambda r: r.pop("frontier"), "field 'frontier': required but missing"),
    ],
)
def test_plan_refuses(tmp_path, file, edit, phrase):
    folder = _plan(tmp_path)
    refused(lambda: Plan.load(folder), folder / file, edit, phrase)


# --- modformer.json of an export ----------------------------------------------------------------------------------
EXPORT = {
    "assembly": {"encoder": [2, 2], "decoder": [2, 2]},
    "assembly_spec": "enc=2,2 dec=2,2",
    "parameters": 54400,
    "teacher_parameters": 95680,
    "size_ratio": 95680 / 54400,
    "target": "ctranslate2:int8",
}


def test_export_record_of_today_and_a_students_record_load(tmp_path):
    (tmp_path / EXPORT_INFO_NAME).write_text(json.dumps(EXPORT))
    assert str(export_target(tmp_path)) == "ctranslate2:int8"
    (tmp_path / EXPORT_INFO_NAME).write_text('{"baseline": {"method": "distil", "shape": "6-6"}, "parameters": 9}')
    assert read_export_info(tmp_path)["parameters"] == 9


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (setting("parameters", -1), "field 'parameters': Input should be greater than or equal to 1"),
        (setting("size_ratio", 0), "field 'size_ratio': Input should be greater than 0, got 0"),
        (setting("assembly", {"encoder": [2, 2]}), "field 'assembly': is not the assembly of assembly_spec"),
        (setting("assembly", {"middle": [2]}), "field 'assembly.middle': Input should be 'encoder' or"),
        (setting("assembly_spec", "enc=2"), "field 'assembly_spec': cannot parse assembly"),
        (setting("format_version", 2), NEWER),
    ],
)
def test_export_record_refuses(tmp_path, edit, phrase):
    path = tmp_path / EXPORT_INFO_NAME
    path.write_text(json.dumps(EXPORT))
    refused(lambda: export_target(tmp_path), path, edit, phrase)


# --- profile.json and its table -----------------------------------------------------------------------------------
def _profile(tmp_path: Path) -> Path:
    rows = [
        {"kind": "enc_forward", "stack": "encoder", "block": "encoder_k2_s0", "start": 0, "size": 2},
        {"kind": "peak_memory", "stack": "model", "block": "teacher", "mem_bytes": 1000},
    ]
    table = pd.DataFrame([{**row, "batch": 1, "src_len": 6, "latency_ms": 0.5} for row in rows])
    table = table.reindex(columns=list(COLUMNS))
    meta = new_meta(
        fingerprint={"device": "cpu", "dtype": "fp32", "torch_threads": 1},
        grid={"batch_sizes": [1], "src_lens": [6], "gen_lens": [4]},
        model={"encoder_layers": 4, "decoder_layers": 4, "granularities": [2]},
        settings={"statistic": "min"},
    )
    LatencyProfile(table, meta).save(tmp_path / "p.json")
    return tmp_path / "p.json"


def test_profile_of_today_loads(tmp_path):
    path = _profile(tmp_path)
    assert json.loads(path.read_text())["format_version"] == schemas.FORMAT_VERSION
    meta = json.loads(path.read_text())
    del meta["format_version"]
    path.write_text(json.dumps(meta))
    assert len(LatencyProfile.load(path).table) == 2


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (setting("grid.src_lens", [0]), "field 'grid.src_lens[0]': Input should be greater than or equal to 1"),
        (setting("grid.gen_lens", []), "field 'grid.gen_lens': List should have at least 1 item"),
        (setting("model.granularities", [8]), "field 'model.granularities': granularity 8 is larger than the 4"),
        (setting("table_sha256", "123"), "field 'table_sha256': String should match pattern"),
        (lambda m: m.pop("table_sha256"), "field 'table_sha256': required but missing"),
        (setting("engines_table", "p.engines.csv"), "field 'engines_sha256': missing although engines_table"),
        (setting("table_rows", 5), "field 'table_rows': 5, but p.csv has 2 rows"),
        (setting("format_version", 2), NEWER),
    ],
)
def test_profile_refuses(tmp_path, edit, phrase):
    path = _profile(tmp_path)
    refused(lambda: LatencyProfile.load(path), path, edit, phrase)


def test_profile_table_with_a_nan_where_a_latency_belongs_is_refused(tmp_path):
    path = _profile(tmp_path)
    csv = path.with_suffix(".csv")
    csv.write_text(csv.read_text().replace(",0.5,", ",nan,", 1))
    meta = json.loads(path.read_text())
    import hashlib

    meta["table_sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(path)
    assert one_line(err) == f"{csv} line 2: column 'latency_ms' must hold a finite number, got nan"


# --- the formats, documented --------------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "artifacts.md"
DOC_HEAD = """# Artifact files and their formats

Every JSON file an artifact holds (and the trainer state beside a checkpoint) is checked when it is read, against
the schema in `modformer/schemas.py`. What is wrong is one line naming the file and the field, e.g.
`runs/teacher/teacher.json: field 'teacher.steps': Input should be greater than or equal to 1, got -5`.

**Versions.** Each file carries `format_version`, an integer (this modformer writes {current}). A file without it is
version 1: every file written before versions were recorded. A file of a newer version is refused with "written by
a newer modformer (format N, this one reads up to {current}): upgrade modformer"; one older than version {oldest}
is refused naming the versions this modformer reads. Keys a schema does not list are kept and ignored, so a file
with keys added by a newer modformer of the same format version still reads. Numbers are strict (`"6"`, `true` and
`6.5` are not a step count) and finite (NaN and infinity are refused).

Values that must agree are checked too: granularities and layer counts, the spans they imply, completed and total
steps, a checkpoint manifest's step and its trainer state's, a profile's row count and its table, a plan's or an
export's assembly in its two forms. A profile's table (`profile.csv`) is checked when read as well: its checksum,
its columns and row kinds, a finite `latency_ms` in every timed row and a `mem_bytes` in every memory row. Bad-input cases through the CLI: `docs/bad-inputs.md` (the `*-record-*`,
`*-config-*`, `*-info-*`, `*-meta-*`, `plan-*`, `trainer-state-*` and `checkpoint-manifest-*` rows).

Generated from the schemas by `tests/test_schemas.py`: `MODFORMER_UPDATE_DOCS=1 .venv/bin/pytest tests/test_schemas.py -k docs`.
"""


def _type(prop: dict, defs: dict) -> str:
    if "$ref" in prop:
        return "object"
    if "anyOf" in prop:
        kinds = [_type(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = any(p.get("type") == "null" for p in prop["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    kind = prop.get("type", "any")
    if "enum" in prop or "const" in prop:
        return " / ".join(json.dumps(v) for v in prop.get("enum", [prop.get("const")]))
    if kind == "array":
        return f"list of {_type(prop.get('items', {}), defs)}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"object of {_type(prop['additionalProperties'], defs)}"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(kind, kind)


def _limits(prop: dict) -> str:
    parts = []
    for p in [prop, *prop.get("anyOf", []), *([prop["items"]] if "items" in prop else [])]:
        for key, text in (
            ("minimum", ">= {}"),
            ("exclusiveMinimum", "> {}"),
            ("maximum", "<= {}"),
            ("exclusiveMaximum", "< {}"),
            ("minLength", "at least {} character(s)"),
            ("minItems", "at least {} item(s)"),
            ("pattern", "matches `{}`"),
        ):
            if key in p:
                parts.append(text.format(p[key]))
    return ", ".join(parts)


def _rows(schema: dict, defs: dict, prefix: str = "") -> list[str]:
    rows = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        inner = [prop, *prop.get("anyOf", [])]
        refs = [(p["$ref"], "") for p in inner if "$ref" in p]
        refs += [(p["items"]["$ref"], "[]") for p in inner if "$ref" in (p.get("items") or {})]
        refs += [
            (p["additionalProperties"]["$ref"], ".*")
            for p in inner
            if isinstance(p.get("additionalProperties"), dict) and "$ref" in p["additionalProperties"]
        ]
        default = "required" if name in required else json.dumps(prop["default"]) if "default" in prop else "empty"
        limits = _limits(prop)
        description = prop.get("description", "")
        rows.append(
            f"| `{prefix}{name}` | {_type(prop, defs)} | {default} | {limits} | {description} |".replace("  ", " ")
        )
        for ref, mark in refs:
            rows += _rows(defs[ref.split("/")[-1]], defs, f"{prefix}{name}{mark}.")
    return rows


def render_doc() -> str:
    text = DOC_HEAD.format(current=schemas.FORMAT_VERSION, oldest=schemas.OLDEST_FORMAT)
    for model in schemas.SCHEMAS:
        schema = model.model_json_schema()
        text += f"\n## `{model.FILE}`\n\n{' '.join((model.__doc__ or '').split())} Read by {model.READ_BY}.\n\n"
        text += "| field | type | default | limits | what |\n|---|---|---|---|---|\n"
        text += "\n".join(_rows(schema, schema.get("$defs", {}))) + "\n"
    return text


def test_artifact_formats_in_docs_are_current():
    text = render_doc()
    if os.environ.get("MODFORMER_UPDATE_DOCS"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.is_file() and DOC.read_text(encoding="utf-8") == text, (
        "docs/artifacts.md is out of date: MODFORMER_UPDATE_DOCS=1 pytest tests/test_schemas.py -k docs"
    )
