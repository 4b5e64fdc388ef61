"""The `modformer` command, end to end through `CliRunner` on real files: every command, and bad input as one-line errors.

One tiny T5 modular run (6 steps) is trained once per module and shared; tests that change a checkpoint work on a copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from modformer.cli import app
from tests.bad_input_artifacts import ARTIFACT_CASES, plan_folder
from tests.conftest import save_teacher, tiny_t5

runner = CliRunner()
LINE_DATA = ("--src-ext", "en", "--tgt-ext", "de")
METRICS = {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "loss", "n"}


def invoke(*args) -> Result:
    return runner.invoke(app, [str(a) for a in args], prog_name="modformer")


def ok(*args) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, (
        f"exit {result.exit_code}: {result.exception!r}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def train_args(teacher: Path, data: Path, out: Path, *extra) -> list:
    return ["train", "--teacher", teacher, "--data", data, *LINE_DATA, "--out", out, *extra]


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under `roots`: size, mtime and content hash, so that any change shows."""
    found = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[str(path)] = ("dir",)
    return found


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- shared artifacts ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory, t5_teacher_dir, data_dir) -> Path:
    """Modules of the tiny T5 teacher after 6 steps (granularity 2 only: the teacher has 4 + 4 layers)."""
    out = tmp_path_factory.mktemp("cli") / "mods"
    result = ok(
        *train_args(t5_teacher_dir, data_dir, out),
        *("--steps", 6, "--batch-size", 8, "--eval-every", 3, "--save-every", 3),
    )
    assert "training 4 modules (granularities [2])" in result.stdout
    return out


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory, modules_dir) -> Path:
    # Brackets in a path are Rich markup: printing it raw would garble or crash the success message and the table.
    out = tmp_path_factory.mktemp("cli") / "export[/v2]"
    ok("export", "--modules", modules_dir, "--assembly", "enc=2,1,1 dec=2,2", "--out", out)
    return out


# --- train --------------------------------------------------------------------------------------------------------
def test_train_writes_a_modular_checkpoint(modules_dir):
    assert {p.name for p in modules_dir.iterdir()} >= {"modular_config.json", "modules.safetensors", "trainer_state.pt"}
    config = read_json(modules_dir / "modular_config.json")
    assert config["model_type"] == "t5" and config["granularities"] == [2]
    assert config["training"]["completed_steps"] == 6


def test_train_on_a_bart_teacher(tmp_path, bart_teacher_dir, data_dir):
    out = tmp_path / "mods"
    ok(
        *train_args(bart_teacher_dir, data_dir, out),
        *("--steps", 2, "--batch-size", 4, "--eval-every", 0, "--temperature", 1.5),
    )
    config = read_json(out / "modular_config.json")
    assert config["model_type"] == "bart" and config["training"]["completed_steps"] == 2
    assert config["training"]["temperature"] == 1.5  # a recipe option reaches the run's config
    assert (out / "modules.safetensors").is_file() and (out / "trainer_state.pt").is_file()


def test_train_resume_continues_to_the_new_step_count(tmp_path, modules_dir, t5_teacher_dir, data_dir):
    out = tmp_path / "mods"
    shutil.copytree(modules_dir, out)
    result = ok(*train_args(t5_teacher_dir, data_dir, out), "--steps", 8, "--batch-size", 8, "--resume")
    assert "resuming at 6" in result.stdout
    assert read_json(out / "modular_config.json")["training"]["completed_steps"] == 8


# --- assemble -----------------------------------------------------------------------------------------------------
def test_assemble_lists_both_strategies_sequences(modules_dir):
    out = ok("assemble", "--modules", modules_dir).stdout
    for strategy in ("size-first", "speed-first"):
        assert strategy in out
    assert "enc=1,1,1,1 dec=1,1,1,1" in out and "enc=2,2 dec=2,2" in out  # from the teacher to the smallest


def test_assemble_by_ratio_writes_the_chosen_assembly_as_json(tmp_path, modules_dir):
    path = tmp_path / "f.json"
    ok("assemble", "--modules", modules_dir, "--strategy", "size-first", "--ratio", 1.3, "--json", path)
    (record,) = read_json(path)["assemblies"]
    assert record["strategy"] == "chosen" and record["size_ratio"] >= 1.3 * 0.99
    assert set(record) >= {"assembly", "shape", "parameters", "size_ratio", "speed_ratio", "speed_ratio_source"}
    assert record["assembly"].startswith("enc=") and record["parameters"] > 0


def test_assemble_one_given_assembly(modules_dir):
    out = ok("assemble", "--modules", modules_dir, "--assembly", "enc=2,2 dec=2,2").stdout
    assert "enc=2,2 dec=2,2" in out and "2-2" in out


# --- export -------------------------------------------------------------------------------------------------------
def test_export_writes_a_plain_hugging_face_checkpoint(exported_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    names = {p.name for p in exported_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modformer.json", "tokenizer_config.json"} <= names
    info = read_json(exported_dir / "modformer.json")
    assert info["assembly_spec"] == "enc=2,1,1 dec=2,2" and info["parameters"] > 0 and info["size_ratio"] > 1
    assert "assembly" in info
    model = AutoModelForSeq2SeqLM.from_pretrained(exported_dir)
    assert (model.config.num_layers, model.config.num_decoder_layers) == (3, 2)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    AutoTokenizer.from_pretrained(exported_dir)


def test_export_by_strategy_and_ratio(tmp_path, modules_dir):
    out = tmp_path / "export"
    result = ok("export", "--modules", modules_dir, "--strategy", "speed-first", "--ratio", 1.2, "--out", out)
    info = read_json(out / "modformer.json")
    assert info["estimated_speed_ratio"] >= 1.2 * 0.99 and info["assembly_spec"] in result.stdout
    ok("export", "--modules", modules_dir, "--assembly", "enc=2,2 dec=2,2", "--out", out, "--overwrite")
    assert read_json(out / "modformer.json")["assembly_spec"] == "enc=2,2 dec=2,2"
    assert [p.name for p in out.parent.iterdir()] == ["export"]  # no temporary or old folder left beside it


def test_modules_record_their_teacher_absolute_and_follow_it_when_moved(
    tmp_path, monkeypatch, t5_teacher_dir, data_dir
):
    """Trained with a relative --teacher, the modules record it absolute; once the teacher moves (copied away, the
    original deleted) every command that loads them takes --teacher, checked by fingerprint."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    shutil.copytree(t5_teacher_dir, tmp_path / "teacher")
    ok(*train_args(Path("teacher"), data_dir, Path("mods")), "--steps", 2, "--batch-size", 4, "--eval-every", 0)
    mods = tmp_path / "mods"
    assert read_json(mods / "modular_config.json")["teacher"] == str((tmp_path / "teacher").resolve())

    moved = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(tmp_path / "teacher", moved)
    shutil.rmtree(tmp_path / "teacher")
    monkeypatch.chdir(moved.parent)
    assembly = ("--assembly", "enc=2,2 dec=2,2")
    refused = invoke("export", "--modules", mods, *assembly, "--out", tmp_path / "out")
    assert refused.exit_code == 1 and refused.stderr.strip().endswith("give its new folder as --teacher")
    ok("export", "--modules", mods, "--teacher", "teacher", *assembly, "--out", tmp_path / "out")
    assert read_json(tmp_path / "out" / "modformer.json")["teacher"] == str(moved.resolve())
    AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    AutoTokenizer.from_pretrained(tmp_path / "out")

    table = tmp_path / "table.json"
    ok("assemble", "--modules", mods, "--teacher", moved, *assembly, "--json", table)
    ok("assemble", "--modules", mods, "--teacher", moved, "--json", table, "--overwrite")  # --json asks for it
    assert len(read_json(table)["assemblies"]) > 1
    scores = tmp_path / "s.json"
    ok("evaluate", "--modules", mods, "--teacher", moved, *assembly, "--data", data_dir, *LINE_DATA, "--limit", 4)
    ok(*("evaluate", "--modules", mods, "--teacher", moved, *assembly), "--limit", 4, "--json", scores)
    assert read_json(scores)["n"] > 0
    grid = ("--batch", 1, "--src-len", 6, "--gen-len", 4, "--repeats", 2, "--no-memory", "--targets", "none")
    ok("profile", "--modules", mods, "--teacher", moved, "--out", tmp_path / "p.json", *grid, "--threads", 1)
    assert read_json(tmp_path / "p.json")["model"]["teacher"] == str(moved.resolve())
    # plan and plan-worker pass --teacher to every scoring process in the plan's settings
    from modformer.data import DataSpec
    from modformer.planner.run import PlanSettings, load_for_scoring

    spec = dataclasses.asdict(DataSpec(str(data_dir), "en", "de"))
    settings = PlanSettings(modules=str(mods), data=spec, proxy_samples=4, teacher=str(moved))
    assert load_for_scoring(settings).modular.config.teacher == str(moved.resolve())


# --- evaluate -----------------------------------------------------------------------------------------------------
def test_evaluate_an_exported_model(tmp_path, exported_dir, data_dir):
    path = tmp_path / "s.json"
    ok(
        "evaluate",
        "--model",
        exported_dir,
        "--data",
        data_dir,
        *LINE_DATA,
        "--split",
        "val",
        "--limit",
        16,
        "--max-new-tokens",
        16,
        "--json",
        path,
    )
    scores = read_json(path)
    assert set(scores) >= METRICS and scores["n"] == 16 and scores["split"] == "val"


def test_evaluate_modules_with_an_assembly(tmp_path, modules_dir, data_dir):
    path = tmp_path / "s.json"
    ok(
        "evaluate",
        "--modules",
        modules_dir,
        "--assembly",
        "enc=2,2 dec=1,1,2",
        "--data",
        data_dir,
        *LINE_DATA,
        "--split",
        "val",
        "--limit",
        16,
        "--max-new-tokens",
        16,
        "--json",
        path,
    )
    scores = read_json(path)
    assert set(scores) >= METRICS and scores["n"] == 16 and scores["model"] == "enc=2,2 dec=1,1,2"


# --- teacher ------------------------------------------------------------------------------------------------------
def test_teacher_writes_a_checkpoint_transformers_loads(tmp_path, data_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "teacher"
    ok("teacher", "--data", data_dir, *LINE_DATA, "--out", out, "--preset", "tiny", "--steps", 3, "--batch-size", 8)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "t5" and model.config.vocab_size >= len(tokenizer)
    assert tokenizer("a dog runs").input_ids[-1] == tokenizer.eos_token_id


# --- the command line's face ------------------------------------------------------------------------------------
COMMANDS = [
    ["teacher"],
    ["train"],
    ["assemble"],
    ["export"],
    ["baseline"],
    ["plan"],
    ["plan-worker"],
    ["evaluate"],
    ["demo"],
    ["targets"],
    ["profile"],
    ["profile", "show"],
]


def test_version_prints_the_package_version():
    from modformer import __version__

    assert ok("--version").stdout.strip() == f"modformer {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example_and_shows_flags_as_flags(command):
    text = ok(*command, "--help").stdout
    examples = text[text.index("Example") : text.index("Options:")]
    assert re.search(r"^ +modformer " + " ".join(command) + r"\b", examples, re.M), text
    assert "<bool>" not in text
    for line in text.splitlines():  # the examples are kept as written, one command a line
        if line.strip().startswith("modformer "):
            assert len(line) <= 120 and "  --" not in line.strip()


def test_a_missing_or_malformed_option_is_one_error_line():
    missing = invoke("train", "--out", "x")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == "error: Missing option '--teacher' (see `modformer train --help`)"
    malformed = invoke("assemble", "--modules", "m", "--ratio", "half")
    assert malformed.exit_code == 2 and malformed.stderr.count("\n") == 1
    assert malformed.stderr.startswith("error: Invalid value for '--ratio'")
    unknown = invoke("plan", "--nosuch")
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: No such option: --nosuch")
    assert "Usage:" not in missing.stderr + malformed.stderr + unknown.stderr


def test_profile_usage_needs_no_subcommand_and_plan_worker_names_its_database():
    assert "Usage: modformer profile [OPTIONS] [show FILE | refresh FILE]" in ok("profile", "--help").stdout
    worker = " ".join(ok("plan-worker", "--help").stdout.split())
    assert "--remote-workers" in worker and "database" in worker and "--storage" in worker
    assert ok().stdout.startswith("Usage: modformer")  # alone: the help, exit 0


# --- demo ---------------------------------------------------------------------------------------------------------
def test_demo_runs_every_stage_and_a_rerun_resumes(tmp_path, monkeypatch, data_dir):
    """`demo --fast` takes minutes on the bundled sample; the same path on 8 pairs and two steps per stage, seconds:
    teacher, modules, profile, plan, export, evaluate, the figure; then a rerun resumes and --overwrite restarts."""
    import modformer.demo
    from modformer.data import DataSpec
    from modformer.demo import DEMO_RECORD, DemoConfig
    from modformer.planner.artifact import Plan

    small = tmp_path / "data"
    small.mkdir()
    for ext in ("en", "de"):
        lines = (data_dir / f"train.{ext}").read_text(encoding="utf-8").splitlines(keepends=True)[:8]
        for split in ("train", "val", "test"):
            (small / f"{split}.{ext}").write_text("".join(lines), encoding="utf-8")
    tiny = DemoConfig(
        teacher="tiny",
        teacher_steps=2,
        data="sample",
        test_split="test",
        module_steps=2,
        batch_size=4,
        profile={"batch_sizes": (1,), "src_lens": (6,), "gen_lens": (4,), "repeats": 2, "warmup": 1, "memory": False},
        validate=3,
        validate_samples=4,
        eval_pairs=4,
        strategy_pairs=4,
        max_new_tokens=4,
        budget="speedup>=1.01",
    )
    monkeypatch.setattr(DemoConfig, "fast", classmethod(lambda cls: tiny))
    monkeypatch.setattr(modformer.demo, "default_data_spec", lambda: DataSpec(str(small), "en", "de"))
    out = tmp_path / "demo[v2]"
    result = ok("demo", "--fast", "--out", out)
    assert {"teacher", "modules", "profile", "plan", "deploy", "scores.json", "quality_vs_size.png"} <= {
        p.name for p in out.iterdir()
    }
    record = read_json(out / "results.json")
    d = record["deployment"]
    plan = Plan.load(out / "plan")
    assert (d["assembly"], d["target"]) == (plan.chosen["assembly"], plan.chosen["target"])
    assert d["measured_speedup"] > 0 and d["test_pairs"] == 4 and d["size_mb"] > 0
    assert {row["strategy"] for row in record["rows"]} == {"size-first", "speed-first"}
    assert read_json(out / "deploy" / "modformer.json")["target"] == d["target"]
    assert set(read_json(out / "scores.json")) == {"teacher", "deploy"}
    seconds = read_json(out / DEMO_RECORD)["stage_seconds"]
    assert set(seconds) == {"teacher", "modules", "profile", "plan", "export", "evaluate", "strategies"}
    text = " ".join(result.stdout.split())  # the answer, in one screen
    assert f"Deploy {d['assembly']}" in text and f"served in {d['target']}" in text
    assert str(out / "plan" / "report.html") in text and "budget speedup>=1.01" in text

    # A rerun resumes: every stage's output is there, so nothing is trained, profiled or planned again.
    modules_state = (out / "modules" / "modules.safetensors").stat().st_mtime_ns
    again = ok("demo", "--fast", "--out", out)
    assert read_json(out / DEMO_RECORD)["stage_seconds"] == seconds
    assert (out / "modules" / "modules.safetensors").stat().st_mtime_ns == modules_state
    assert f"Deploy {d['assembly']}" in " ".join(again.stdout.split())
    # Other settings in the same folder: refused, naming --overwrite; --overwrite starts afresh.
    monkeypatch.setattr(DemoConfig, "fast", classmethod(lambda cls: dataclasses.replace(tiny, module_steps=3)))
    refused = invoke("demo", "--fast", "--out", out)
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr
    ok("demo", "--fast", "--out", out, "--overwrite")
    assert read_json(out / "modules" / "modular_config.json")["training"]["completed_steps"] == 3
    # A folder holding anything else is never cleared.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = invoke("demo", "--fast", "--out", foreign, "--overwrite")
    assert refused.exit_code == 1 and "not a demo's" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


# --- bad input: one line, non-zero exit, nothing on disk touched -------------------------------------------------
@dataclass
class Ctx:
    tmp: Path
    modules: Path
    exported: Path
    data: Path
    t5: Path
    bart: Path
    tokenizer: object
    profile: Path

    def plan(self, *extra, out: Path | None = None, profile: Path | None = None) -> list:
        return [
            "plan",
            "--modules",
            self.modules,
            "--profile",
            profile or self.profile,
            "--data",
            self.data,
            *LINE_DATA,
            "--out",
            out or self.tmp / "plan",
            *extra,
        ]

    def profile_copy(self, edit: Callable[[dict], None]) -> Path:
        """The profile with its metadata edited (the table is untouched, so its checksum still holds)."""
        folder = self.tmp / "profile"
        folder.mkdir()
        shutil.copyfile(self.profile.with_suffix(".csv"), folder / "profile.csv")
        meta = read_json(self.profile)
        edit(meta)
        (folder / "profile.json").write_text(json.dumps(meta), encoding="utf-8")
        return folder / "profile.json"

    def train(self, *extra, teacher: Path | None = None, data: Path | None = None, out: Path | None = None) -> list:
        return train_args(teacher or self.t5, data or self.data, out or self.tmp / "out", *extra)

    def export(self, *extra, modules: Path | None = None, out: Path | None = None) -> list:
        return ["export", "--modules", modules or self.modules, "--out", out or self.tmp / "out", *extra]

    def evaluate_modules(self, *extra, modules: Path | None = None) -> list:
        return ["evaluate", "--modules", modules or self.modules, "--data", self.data, *LINE_DATA, *extra]

    def evaluate_model(self, *extra, data: Path | None = None) -> list:
        """`evaluate` of the export on the line-aligned data, or on `data` as it is (no data options)."""
        reading = ["--data", self.data, *LINE_DATA] if data is None else ["--data", data]
        return ["evaluate", "--model", self.exported, *reading, "--limit", 4, *extra]

    def modules_copy(self, edit: Callable[[Path], None]) -> Path:
        copy = self.tmp / "mods"
        shutil.copytree(self.modules, copy)
        edit(copy)
        return copy

    def data_copy(self, **files: bytes) -> Path:
        """The data folder with some files (train_en=b"...") replaced."""
        copy = self.tmp / "data"
        shutil.copytree(self.data, copy)
        for name, content in files.items():
            (copy / name.replace("_", ".")).write_bytes(content)
        return copy


def _set_teacher(path: Path) -> Callable[[Path], None]:
    def edit(mods: Path) -> None:
        config = read_json(mods / "modular_config.json")
        config["teacher"] = str(path)
        (mods / "modular_config.json").write_text(json.dumps(config), encoding="utf-8")

    return edit


def _other_t5(c: Ctx) -> Path:
    return save_teacher(tiny_t5(seed=1), c.tokenizer, c.tmp / "other-t5")


def _gpt2(c: Ctx) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        c.tmp / "gpt2"
    )
    return c.tmp / "gpt2"


def _led(c: Ctx) -> Path:
    """An encoder-decoder family modformer has no entry for (Longformer-Encoder-Decoder's windowed attention)."""
    from transformers import LEDConfig, LEDForConditionalGeneration

    config = LEDConfig(
        vocab_size=400,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_encoder_position_embeddings=64,
        max_decoder_position_embeddings=64,
        attention_window=[4, 4],
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return save_teacher(LEDForConditionalGeneration(config), c.tokenizer, c.tmp / "led")


def _truncate(mods: Path) -> None:
    path = mods / "modules.safetensors"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _empty_dir(c: Ctx, name: str = "empty") -> Path:
    (c.tmp / name).mkdir()
    return c.tmp / name


def _file(c: Ctx, name: str) -> Path:
    (c.tmp / name).write_text("a file, not a folder\n", encoding="utf-8")
    return c.tmp / name


def _write(c: Ctx, name: str, content: bytes) -> Path:
    (c.tmp / name).write_bytes(content)
    return c.tmp / name


def _opennmt(c: Ctx) -> Path:
    """A folder in OpenNMT's layout: src-val.txt / tgt-val.txt."""
    folder = c.tmp / "wmt"
    folder.mkdir()
    for side in ("src", "tgt"):
        (folder / f"{side}-val.txt").write_bytes(LINES)
    return folder


def _keep(mods: Path) -> None:
    """A copy left as it is."""


def _fp(meta: dict) -> None:
    """A profile's record of the model, made another's."""
    meta["model"].update(teacher_config_fingerprint="0" * 16)


def _template(c: Ctx) -> str:
    """A {side} template over two files in the case's folder."""
    for side in ("en", "de"):
        (c.tmp / f"val.{side}").write_bytes(LINES)
    return str(c.tmp / "val.{side}")


def _huge_config(mods: Path) -> None:
    """A modular config past the JSON size limit (sparse: nothing is written)."""
    with open(mods / "modular_config.json", "r+b") as f:
        f.truncate(65 * 2**20)


LINES = b"a dog runs\nthe cat sleeps\n"
# id -> (build the argv, a phrase the one-line error must hold)
BAD_INPUT: dict[str, tuple[Callable[[Ctx], list], str]] = {
    # assemblies
    "malformed-assembly": (lambda c: c.export("--assembly", "enc=2,x dec=2,2"), "cannot parse assembly"),
    "spans-sum": (lambda c: c.export("--assembly", "enc=2,2,2 dec=2,2"), "enc: spans sum to 6"),
    "misaligned": (lambda c: c.export("--assembly", "enc=1,2,1 dec=2,2"), "cannot start at layer 1"),
    "untrained-granularity": (lambda c: c.export("--assembly", "enc=4 dec=2,2"), "no module of granularity 4"),
    "bad-json-assembly": (lambda c: c.export("--assembly", '{"encoder": [2, 2], "decoder": '), "bad JSON"),
    "assembly-and-strategy": (
        lambda c: ["assemble", "--modules", c.modules, "--assembly", "enc=2,2 dec=2,2", "--strategy", "size-first"],
        "give either --assembly or --strategy",
    ),
    "assembly-and-ratio": (
        lambda c: ["assemble", "--modules", c.modules, "--assembly", "enc=2,2 dec=2,2", "--ratio", 5],
        "give either --assembly or --strategy",
    ),
    "neither-assembly-nor-strategy": (lambda c: c.export(), "give either --assembly or --strategy"),
    "strategy-without-ratio": (lambda c: c.export("--strategy", "size-first"), "--strategy needs --ratio"),
    "ratio-unreachable": (
        lambda c: ["assemble", "--modules", c.modules, "--strategy", "size-first", "--ratio", 50],
        "no size-first assembly reaches",
    ),
    "ratio-below-1": (lambda c: c.export("--strategy", "speed-first", "--ratio", 0.5), "finite number >= 1.0"),
    "unknown-strategy": (lambda c: c.export("--strategy", "fastest", "--ratio", 2), "unknown strategy 'fastest'"),
    "unknown-strategy-sequence": (
        lambda c: ["assemble", "--modules", c.modules, "--strategy", "fastest"],
        "unknown strategy 'fastest'",
    ),
    "evaluate-modules-without-assembly": (lambda c: c.evaluate_modules(), "--modules needs --assembly"),
    "evaluate-neither-model-nor-modules": (lambda c: ["evaluate", "--data", c.data, *LINE_DATA], "give either"),
    # modular checkpoints
    "modules-missing": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", modules=c.tmp / "nosuch"),
        "folder not found",
    ),
    "modular-config-corrupt": (
        lambda c: c.export(
            "--assembly",
            "enc=2,2 dec=2,2",
            modules=c.modules_copy(lambda m: (m / "modular_config.json").write_text("{not json", encoding="utf-8")),
        ),
        "modular config is not valid JSON",
    ),
    "modules-file-truncated": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", modules=c.modules_copy(_truncate)),
        "modules file is corrupt or truncated",
    ),
    "modules-file-missing": (
        lambda c: c.export(
            "--assembly", "enc=2,2 dec=2,2", modules=c.modules_copy(lambda m: (m / "modules.safetensors").unlink())
        ),
        "modules file not found",
    ),
    "modules-of-another-t5": (
        lambda c: ["assemble", "--modules", c.modules_copy(_set_teacher(_other_t5(c)))],
        "trained on a different teacher (its weights differ)",
    ),
    "modules-of-another-family": (
        lambda c: ["assemble", "--modules", c.modules_copy(_set_teacher(c.bart))],
        "trained on a different teacher architecture",
    ),
    "resume-with-another-teacher": (
        lambda c: c.train("--resume", "--steps", 8, teacher=c.bart, out=c.modules_copy(lambda m: None)),
        "trained on a different teacher architecture",
    ),
    "resume-empty-folder": (
        lambda c: c.train("--resume", "--steps", 2, out=_empty_dir(c)),
        "holds no modular checkpoint to continue",
    ),
    "train-out-exists": (lambda c: c.train("--steps", 2, out=c.modules), "already exists; pass --overwrite"),
    "export-out-exists": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", out=c.exported),
        "already exists; pass --overwrite",
    ),
    "resume-state-corrupt": (
        lambda c: c.train(
            "--resume", "--steps", 8, out=c.modules_copy(lambda m: (m / "trainer_state.pt").write_bytes(b"junk"))
        ),
        "trainer state cannot be read",
    ),
    "json-out-is-a-folder": (
        lambda c: ["assemble", "--modules", c.modules, "--json", _empty_dir(c, "table.json"), "--overwrite"],
        "table.json: Is a directory",
    ),
    "export-out-under-a-file": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", out=_file(c, "notes.txt") / "export"),
        "notes.txt: File exists",
    ),
    # teachers
    "teacher-not-a-checkpoint": (lambda c: c.train(teacher=_empty_dir(c, "teacher")), "not a Hugging Face checkpoint"),
    "teacher-decoder-only": (lambda c: c.train(teacher=_gpt2(c)), "not an encoder-decoder"),
    "teacher-unsupported-family": (lambda c: c.train(teacher=_led(c)), "model type 'led' is not supported"),
    # data
    "data-missing": (lambda c: c.train(data=c.tmp / "nosuch"), "nosuch not found: give a folder"),
    "split-missing": (
        lambda c: ["evaluate", "--model", c.exported, "--data", c.data, *LINE_DATA, "--split", "nosuch"],
        "no split 'nosuch'",
    ),
    "data-file-empty": (lambda c: c.train(data=c.data_copy(train_en=b"")), "train.en is empty"),
    "data-unequal-lines": (
        lambda c: c.train(data=c.data_copy(train_en=LINES, train_de=LINES + b"one more\n")),
        "has 2 lines but",
    ),
    "data-undecodable": (
        lambda c: c.train(data=c.data_copy(train_en=b"a dog runs\n\xffcat\n", train_de=LINES)),
        "line 2: not valid UTF-8",
    ),
    "data-empty-line": (
        lambda c: c.train(data=c.data_copy(train_en=b"a dog runs\n\n", train_de=LINES)),
        "empty source",
    ),
    "data-extension-with-dot": (lambda c: c.train("--src-ext", ".en"), "'.en' is not a file extension"),
    "data-side-files-without-a-template": (
        lambda c: c.evaluate_model(data=_opennmt(c)),
        "/wmt/{side}-{split}.txt' --src-ext src --tgt-ext tgt",
    ),
    "data-line-pairs-without-a-format": (
        lambda c: c.evaluate_model(data=_write(c, "tasks_val.txt", b"IN: jump OUT: I_JUMP\n")),
        "give --line-format 'IN: {source} OUT: {target}'",
    ),
    "data-line-format-without-target": (
        lambda c: c.evaluate_model("--line-format", "IN: {source}", data=_write(c, "val.txt", LINES)),
        "--line-format 'IN: {source}' must hold {source} and {target} once each",
    ),
    "data-separator-not-on-a-line": (
        lambda c: c.evaluate_model(
            "--line-format", "IN: {source} OUT: {target}", data=_write(c, "val.txt", b"IN: a OUT: b\nIN: c\n")
        ),
        "val.txt line 2: the line does not fit --line-format 'IN: {source} OUT: {target}': ' OUT: ' not found",
    ),
    "data-list-without-a-rule": (
        lambda c: c.evaluate_model(data=_write(c, "val.jsonl", b'{"source": ["a", "b"], "target": "c"}\n')),
        "the source is a list (['a', 'b']); give --list-rule join",
    ),
    "data-unknown-list-rule": (lambda c: c.evaluate_model("--list-rule", "concat"), "unknown --list-rule 'concat'"),
    "data-unknown-on-bad-line": (
        lambda c: c.evaluate_model("--on-bad-line", "ignore"),
        "unknown --on-bad-line 'ignore'; choose error or skip",
    ),
    "data-every-line-bad": (
        lambda c: c.evaluate_model(
            "--line-format", "{source}\\t{target}", "--on-bad-line", "skip", data=_write(c, "val.txt", LINES)
        ),
        "all 2 pairs read are bad",
    ),
    # settings
    "lr-not-a-number": (lambda c: c.train("--lr", "nan"), "lr must be"),
    "zero-steps": (lambda c: c.train("--steps", 0), "steps must be positive"),
    "zero-hybrids": (lambda c: c.train("--hybrids-per-step", 0), "hybrids_per_step must be positive"),
    "negative-batch-size": (lambda c: c.train("--batch-size", -8), "batch_size must be positive"),
    "granularity-1": (lambda c: c.train("--granularities", "1,2"), "sizes >= 2"),
    "granularity-not-a-number": (lambda c: c.train("--granularities", "x"), "whole numbers separated by commas"),
    "granularity-too-large": (lambda c: c.train("--granularities", "8"), "larger than the 4-layer"),
    "resume-other-granularities": (
        lambda c: c.train("--resume", "--steps", 8, "--granularities", "2,4", out=c.modules_copy(lambda m: None)),
        "was trained with granularities [2], not [2, 4]",
    ),
    "resume-past-steps": (
        lambda c: c.train("--resume", "--steps", 4, out=c.modules_copy(lambda m: None)),
        "past --steps 4",
    ),
    "teacher-out-exists": (
        lambda c: ["teacher", "--data", c.data, *LINE_DATA, "--out", c.modules, "--preset", "tiny"],
        "already exists; pass --overwrite",
    ),
    "demo-out-foreign": (lambda c: ["demo", "--fast", "--out", c.modules], "are not a demo's"),
    "markup-in-message": (lambda c: c.train(data=c.tmp / "runs[/v2]"), "runs[/v2] not found"),
    "evaluate-negative-limit": (lambda c: c.evaluate_model("--limit", -1), "--limit must be at least 1"),
    "evaluate-zero-limit": (lambda c: c.evaluate_model("--limit", 0), "no pairs"),
    "evaluate-zero-batch-size": (lambda c: c.evaluate_model("--batch-size", 0), "--batch-size must be at least 1"),
    "evaluate-zero-beams": (lambda c: c.evaluate_model("--num-beams", 0), "--num-beams must be at least 1"),
    "evaluate-zero-new-tokens": (
        lambda c: c.evaluate_model("--max-new-tokens", 0),
        "--max-new-tokens must be at least 1",
    ),
    "evaluate-zero-source-len": (
        lambda c: c.evaluate_model("--max-source-len", 0),
        "--max-source-len must be at least 1",
    ),
    "evaluate-predictions-exist": (
        lambda c: c.evaluate_model("--predictions", _file(c, "predictions.txt")),
        "predictions.txt already exists; pass --overwrite",
    ),
    "teacher-zero-target-len": (
        lambda c: ["teacher", "--data", c.data, *LINE_DATA, "--out", c.tmp / "out", "--max-target-len", 0],
        "--max-target-len must be positive",
    ),
    # plans
    "plan-infeasible-budget": (
        lambda c: c.plan("--budget", "latency_ms<=0.001"),
        "no assembly meets the budget latency_ms<=0.001; nearest: enc=",
    ),
    "plan-budget-unknown-key": (lambda c: c.plan("--budget", "speed<=2"), "unknown budget key 'speed'"),
    "plan-budget-not-a-number": (lambda c: c.plan("--budget", "latency_ms<=fast"), "is not a number"),
    "plan-objectives-without-quality": (
        lambda c: c.plan("--objectives", "latency,memory"),
        "--objectives must list quality",
    ),
    "plan-profile-missing": (lambda c: c.plan(profile=c.tmp / "nosuch.json"), "not found"),
    "plan-profile-of-another-model": (
        lambda c: c.plan(profile=c.profile_copy(lambda m: m["model"].update(teacher_config_fingerprint="0" * 16))),
        "the profile was measured on another model",
    ),
    "plan-zero-proxy-samples": (lambda c: c.plan("--proxy-samples", 0), "--proxy-samples must be at least 1"),
    "plan-output-exists": (lambda c: c.plan(out=_empty_dir(c, "plan")), "already exists"),
    "export-plan-missing": (
        lambda c: ["export", "--plan", c.tmp / "noplan", "--out", c.tmp / "out"],
        "plan folder not found",
    ),
    "profile-unknown-statistic": (
        lambda c: ["profile", "--modules", c.modules, "--out", c.tmp / "p.json", "--statistic", "mean"],
        "statistic must be one of min, median",
    ),
    "baseline-pseudo-labels-miscounted": (
        lambda c: [
            "baseline",
            "pseudo",
            "--teacher",
            c.t5,
            "--shape",
            "1-1",
            "--data",
            c.data,
            *LINE_DATA,
            "--out",
            c.tmp / "student",
            "--pseudo-labels",
            _file(c, "labels.txt"),
        ],
        "pseudo-labels for",
    ),
    "teacher-resume-nothing": (
        lambda c: ["teacher", "--data", c.data, *LINE_DATA, "--out", c.tmp / "none", "--preset", "tiny", "--resume"],
        "holds no teacher run to continue",
    ),
    "teacher-resume-and-overwrite": (
        lambda c: ["teacher", "--data", c.data, *LINE_DATA, "--out", c.modules, "--resume", "--overwrite"],
        "--resume and --overwrite contradict each other",
    ),
    "teacher-unknown-preset": (
        lambda c: ["teacher", "--data", c.data, *LINE_DATA, "--out", c.tmp / "out", "--preset", "huge"],
        "unknown preset 'huge'",
    ),
}
BAD_INPUT |= {  # outputs never replace, hold or sit in an input, --overwrite or not; every file output asks for it
    "export-out-is-the-modules": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", "--overwrite", out=c.modules),
        "--out <modules> is --modules <modules>: an output may never be, contain or lie inside an input",
    ),
    "export-out-inside-the-modules": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", out=c.modules / "export"),
        "lies inside --modules",
    ),
    "export-out-contains-the-modules": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", "--overwrite", modules=c.modules_copy(_keep), out=c.tmp),
        "contains --modules",
    ),
    "export-out-is-the-recorded-teacher": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", "--overwrite", out=c.t5),
        "is the modules' teacher",
    ),
    "export-out-is-the-given-teacher": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", "--teacher", c.t5, "--overwrite", out=c.t5 / "sub"),
        "lies inside --teacher",
    ),
    "export-out-holds-the-profile": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", "--profile", c.profile, out=c.profile.parent),
        "contains --profile",
    ),
    "export-out-is-the-plan": (
        lambda c: ["export", "--plan", _empty_dir(c, "plan"), "--out", c.tmp / "plan", "--overwrite"],
        "is --plan",
    ),
    "assemble-json-inside-the-modules": (
        lambda c: ["assemble", "--modules", c.modules, "--json", c.modules / "table.json"],
        "--json <modules>/table.json lies inside --modules",
    ),
    "assemble-json-is-the-profile": (
        lambda c: ["assemble", "--modules", c.modules, "--profile", c.profile, "--json", c.profile, "--overwrite"],
        "is --profile",
    ),
    "assemble-json-exists": (
        lambda c: ["assemble", "--modules", c.modules, "--json", _file(c, "table.json")],
        "table.json already exists; pass --overwrite",
    ),
    "evaluate-json-exists": (
        lambda c: c.evaluate_model("--json", _file(c, "scores.json")),
        "scores.json already exists; pass --overwrite",
    ),
    "evaluate-json-inside-the-model": (
        lambda c: c.evaluate_model("--json", c.exported / "config.json", "--overwrite"),
        "--json <export>/config.json lies inside --model",
    ),
    "evaluate-json-inside-the-modules": (
        lambda c: c.evaluate_modules("--assembly", "enc=2,2 dec=2,2", "--json", c.modules / "s.json"),
        "lies inside --modules",
    ),
    "evaluate-predictions-are-the-data": (
        lambda c: c.evaluate_model("--predictions", c.data / "val.de", "--overwrite"),
        "--predictions <data>/val.de lies inside --data <data>",
    ),
    "evaluate-predictions-are-a-templates-file": (
        lambda c: c.evaluate_model("--predictions", c.tmp / "val.en", "--overwrite", data=_template(c)),
        "--predictions <tmp>/val.en is --data <tmp>/val.en",
    ),
    "evaluate-predictions-are-the-teacher": (
        lambda c: c.evaluate_modules("--assembly", "enc=2,2 dec=2,2", "--predictions", c.t5 / "config.json"),
        "lies inside the modules' teacher",
    ),
    "train-out-is-the-teacher": (lambda c: c.train("--overwrite", out=c.t5), "--out <t5-teacher> is --teacher"),
    "train-out-contains-the-teacher": (lambda c: c.train("--overwrite", out=c.t5.parent), "contains --teacher"),
    "train-out-inside-the-data": (lambda c: c.train(out=c.data / "mods"), "lies inside --data"),
    "teacher-out-is-the-data": (
        lambda c: ["teacher", "--data", c.data, *LINE_DATA, "--out", c.data, "--overwrite"],
        "--out <data> is --data <data>",
    ),
    "baseline-out-is-the-teacher": (
        lambda c: (
            ["baseline", "kd", "--teacher", c.t5, "--shape", "1-1", "--data", c.data, *LINE_DATA]
            + ["--out", c.t5, "--overwrite"]
        ),
        "is --teacher",
    ),
    "baseline-out-is-the-pseudo-labels": (
        lambda c: (
            ["baseline", "pseudo", "--teacher", c.t5, "--shape", "1-1", "--data", c.data, *LINE_DATA]
            + ["--pseudo-labels", _file(c, "labels.txt"), "--out", c.tmp / "labels.txt", "--overwrite"]
        ),
        "is --pseudo-labels",
    ),
    "profile-out-inside-the-modules": (
        lambda c: ["profile", "--modules", c.modules, "--out", c.modules / "profile.json"],
        "lies inside --modules",
    ),
    "plan-out-is-the-modules": (lambda c: c.plan("--overwrite", out=c.modules), "is --modules"),
    "plan-out-holds-the-profile": (lambda c: c.plan("--overwrite", out=c.profile.parent), "contains --profile"),
    "plan-storage-is-a-modules-file": (
        lambda c: c.plan("--storage", c.modules / "modules.safetensors", "--overwrite"),
        "--storage <modules>/modules.safetensors lies inside --modules",
    ),
    # modules whose teacher moved: --teacher points at it, checked by fingerprint
    "teacher-moved-without-the-option": (
        lambda c: ["assemble", "--modules", c.modules_copy(_set_teacher(c.tmp / "moved"))],
        "is not at <tmp>/moved; if it moved, give its new folder as --teacher",
    ),
    "teacher-option-another-t5": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", "--teacher", _other_t5(c)),
        "trained on a different teacher (its weights differ)",
    ),
    "teacher-option-another-family": (
        lambda c: ["assemble", "--modules", c.modules, "--teacher", c.bart],
        "trained on a different teacher architecture",
    ),
    "teacher-option-not-a-checkpoint": (
        lambda c: c.evaluate_modules("--assembly", "enc=2,2 dec=2,2", "--teacher", _empty_dir(c, "t")),
        "not a Hugging Face checkpoint",
    ),
    # a profile of another model, wherever a profile is taken
    "assemble-profile-of-another-model": (
        lambda c: ["assemble", "--modules", c.modules, "--strategy", "speed-first", "--profile", c.profile_copy(_fp)],
        "the profile was measured on another model",
    ),
    "export-profile-of-another-model": (
        lambda c: c.export("--strategy", "speed-first", "--ratio", 1.1, "--profile", c.profile_copy(_fp)),
        "the profile was measured on another model",
    ),
    "export-profile-of-another-depth": (
        lambda c: c.export(
            "--assembly",
            "enc=2,2 dec=2,2",
            "--profile",
            c.profile_copy(lambda m: m["model"].update(encoder_layers=12)),
        ),
        "the profile was measured on another model (encoder_layers 12",
    ),
    "export-plan-of-another-model": (
        lambda c: c.export(
            "--plan",
            plan_folder(c, frontier=lambda r: r["summary"].update(model={"teacher_config_fingerprint": "0" * 16})),
            modules=c.modules,
        ),
        "the plan was made for another model (teacher_config_fingerprint '0000000000000000'",
    ),
    # limits, checked before any work
    "train-seed-beyond-64-bits": (lambda c: c.train("--seed", 2**64), "--seed must be from 0 to 4,294,967,295"),
    "plan-seed-beyond-32-bits": (lambda c: c.plan("--seed", 2**32), "--seed must be from 0 to 4,294,967,295"),
    "train-batch-size-past-the-limit": (lambda c: c.train("--batch-size", 10**6), "past the limit of 65,536 pairs"),
    "train-source-len-past-the-limit": (
        lambda c: c.train("--max-source-len", 10**7),
        "--max-source-len 10,000,000 is past the limit of 65,536 tokens",
    ),
    "train-source-len-past-bart-positions": (
        lambda c: c.train("--max-source-len", 1000, teacher=c.bart),
        "--max-source-len 1,000 is past the 160-token position limit of this bart model",
    ),
    "baseline-new-tokens-past-bart-positions": (
        lambda c: (
            ["baseline", "pseudo", "--teacher", c.bart, "--shape", "1-1", "--data", c.data, *LINE_DATA]
            + ["--out", c.tmp / "student", "--max-new-tokens", 500]
        ),
        "--max-new-tokens 500 is past the 160-token position limit of this bart model",
    ),
    "evaluate-new-tokens-past-the-limit": (
        lambda c: c.evaluate_model("--max-new-tokens", 10**6),
        "--max-new-tokens 1,000,000 is past the limit of 65,536 tokens",
    ),
    "plan-src-len-past-the-limit": (lambda c: c.plan("--src-len", 10**6), "past the limit of 65,536 tokens"),
    "profile-src-len-past-the-limit": (
        lambda c: ["profile", "--modules", c.modules, "--out", c.tmp / "p.json", "--src-len", "32,100000"],
        "--src-len 100,000 is past the limit of 65,536 tokens",
    ),
    "profile-batch-past-the-limit": (
        lambda c: ["profile", "--modules", c.modules, "--out", c.tmp / "p.json", "--batch", 10**5],
        "--batch 100,000 is past the limit of 65,536 pairs",
    ),
    "profile-shape-past-memory": (
        lambda c: ["profile", "--modules", c.modules, "--out", c.tmp / "p.json", "--batch", 8192, "--src-len", 60000],
        "GiB of activations (a rough estimate)",
    ),
    "assembly-megabytes": (
        lambda c: c.export("--assembly", "enc=" + "2," * 50_000 + " dec=2,2"),
        "assembly is 100,012 characters, past the limit of 65,536",
    ),
    "assembly-json-nested-too-deeply": (
        lambda c: c.export("--assembly", '{"encoder": ' + "[" * 5000),
        "bad JSON: nested too deeply",
    ),
    "modular-config-huge": (
        lambda c: ["assemble", "--modules", c.modules_copy(_huge_config)],
        "past the 67,108,864-byte limit on JSON metadata",
    ),
    "modular-config-nested-too-deeply": (
        lambda c: [
            "assemble",
            "--modules",
            c.modules_copy(lambda m: (m / "modular_config.json").write_text("[" * 100_000, encoding="utf-8")),
        ],
        "modular config is not valid JSON (nested too deeply)",
    ),
    "assembly-json-lone-surrogate": (
        lambda c: c.export("--assembly", '{"encoder": ["\\ud800"], "decoder": [2, 2]}'),
        "encoder: '\\ud800' is not a whole number",
    ),
    "out-name-not-utf8": (
        lambda c: c.export("--assembly", "enc=2,2 dec=2,2", out=c.tmp / "out\udcff"),
        "--out <tmp>/out\\udcff is not a UTF-8 name",
    ),
    "data-lone-surrogate": (
        lambda c: c.evaluate_model(data=_write(c, "val.jsonl", b'{"source": "a \\ud800 dog", "target": "b"}\n')),
        "the source holds a lone surrogate '\\ud800', which is not text",
    ),
    "data-json-nested-too-deeply": (
        lambda c: c.evaluate_model(data=_write(c, "val.jsonl", b'{"source": ' + b"[" * 5000 + b"\n")),
        "not valid JSON (nested too deeply)",
    ),
}
BAD_INPUT |= ARTIFACT_CASES  # artifacts that parse but hold wrong values: tests/bad_input_artifacts.py


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory, modules_dir) -> Path:
    """A quick profile of the tiny modules (short grid, no memory runs)."""
    from modformer.modular.model import ModularModel
    from modformer.profiling.measure import ProfileConfig, profile_modules

    config = ProfileConfig(
        batch_sizes=(1,), src_lens=(6,), gen_lens=(4,), warmup=1, repeats=2, generate_repeats=1, memory=False, threads=1
    )
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    profile_modules(ModularModel.from_pretrained(modules_dir), config).save(path)
    return path


@pytest.fixture
def ctx(
    tmp_path, modules_dir, exported_dir, data_dir, t5_teacher_dir, bart_teacher_dir, tokenizer, profile_file
) -> Ctx:
    return Ctx(tmp_path, modules_dir, exported_dir, data_dir, t5_teacher_dir, bart_teacher_dir, tokenizer, profile_file)


@pytest.mark.parametrize(
    "case",
    list(BAD_INPUT),
)
def test_bad_input_is_a_one_line_error_that_changes_nothing(case, ctx):
    build, phrase = BAD_INPUT[case]
    args = build(ctx)
    roots = (ctx.tmp, ctx.modules, ctx.exported, ctx.data, ctx.t5, ctx.bart, ctx.profile.parent)
    before = snapshot(*roots)
    result = invoke(*args)
    assert result.exit_code not in (0, None), result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert phrase in _placeholders(ctx, lines[0]).replace("\\|", "|") or phrase in lines[0], lines[0]
    assert snapshot(*roots) == before


def test_debug_shows_the_traceback_instead(tmp_path):
    """Through the real entry point: the plain error is exactly one stderr line; --debug gives the traceback."""
    command = [sys.executable, "-m", "modformer.cli"]
    args = ["assemble", "--modules", str(tmp_path / "nosuch")]
    plain = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and plain.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nosuch'}: modular checkpoint folder not found"
    ]
    debug = subprocess.run([*command, "--debug", *args], capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "CheckpointError: " in debug.stderr and "modular checkpoint folder not found" in debug.stderr


# --- the bad-input table in the docs ------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
DOC_HEAD = """# Bad inputs and what modformer answers

Every row is a case of `tests/test_cli.py::BAD_INPUT`, run through the real CLI: the answer is one line on stderr,
the exit code is non-zero, and nothing already on disk changes (the test checks all three). Paths are shown as
placeholders. Regenerate after changing a message: `MODFORMER_UPDATE_DOCS=1 .venv/bin/pytest tests/test_cli.py -k docs`.

| case | command | message (stderr) | exit |
|---|---|---|---|
"""


def _placeholders(ctx: Ctx, text: str) -> str:
    for path, name in (
        (ctx.modules, "<modules>"),
        (ctx.exported, "<export>"),
        (ctx.data, "<data>"),
        (ctx.t5, "<t5-teacher>"),
        (ctx.bart, "<bart-teacher>"),
        (ctx.t5.parent, "<t5-teacher>/.."),
        (ctx.profile, "<profile>"),
        (ctx.profile.parent, "<profile-folder>"),
        (ctx.tmp, "<tmp>"),
    ):
        text = text.replace(str(path), name)
    text = re.sub(r"this machine's [\d,.]+ GiB", "this machine's <memory> GiB", text)
    # A file cut at half its length breaks where its recorded wall times put the half: the place varies by run.
    text = re.sub(r"line \d+ column \d+ \(char \d+\)", "line <L> column <C> (char <N>)", text)
    # Predicted latencies come from a profile measured in the test, so which assemblies are nearest varies by noise.
    text = re.sub(
        r"nearest: .*",
        "nearest: <the 3 nearest assemblies, each with its predicted ms and MB and its parameters>",
        text,
    )
    return text.replace("|", "\\|")


def test_bad_input_table_in_docs_is_current(
    tmp_path, modules_dir, exported_dir, data_dir, t5_teacher_dir, bart_teacher_dir, tokenizer, profile_file
):
    rows = []
    for case, (build, _) in BAD_INPUT.items():
        case_dir = tmp_path / case
        case_dir.mkdir()
        ctx = Ctx(
            case_dir, modules_dir, exported_dir, data_dir, t5_teacher_dir, bart_teacher_dir, tokenizer, profile_file
        )
        args = [str(a) for a in build(ctx)]
        result = invoke(*args)
        shown = [a if len(a) <= 200 else f"{a[:40]}...({len(a):,} characters)" for a in args]
        shown = [a.encode("utf-8", "backslashreplace").decode("utf-8") for a in shown]  # a name that is not UTF-8
        command = _placeholders(ctx, "modformer " + " ".join(f"'{a}'" if " " in a or not a else a for a in shown))
        message = _placeholders(ctx, result.stderr.strip())
        rows.append(f"| {case} | `{command}` | {message} | {result.exit_code} |")
    text = DOC_HEAD + "\n".join(rows) + "\n"
    if os.environ.get("MODFORMER_UPDATE_DOCS"):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
    assert DOC.is_file() and DOC.read_text(encoding="utf-8") == text, (
        "docs/bad-inputs.md is out of date: MODFORMER_UPDATE_DOCS=1 pytest tests/test_cli.py -k docs"
    )
