"""The one training skeleton (`modformer.recipe`) and the artifacts its recipes write: shared by teacher, modules and
students; save -> load round-trips; older checkpoints still resume; errors name settings, the CLI shows flags."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import modformer
from modformer.baselines import BaselineConfig, StudentRun, StudentTrainer, student_pairs
from modformer.cli import FLAGS
from modformer.data import Seq2SeqData
from modformer.errors import CheckpointError, ConfigError, with_flags
from modformer.io import torch_save
from modformer.modular.model import ModularModel
from modformer.modular.trainer import ReplacingTrainer, TrainConfig
from modformer.recipe import (
    MANIFEST_NAME,
    STATE_NAME,
    Recipe,
    TrainerCheckpoint,
    TrainState,
    check_output,
    encode_random_state,
    verify_checkpoint,
)
from modformer.teacher import TeacherConfig, TeacherRun, TeacherTrainer, completed_steps
from tests.conftest import tiny_t5

PACKAGE = Path(modformer.__file__).resolve().parent


# --- one skeleton -------------------------------------------------------------------------------------------------
def test_the_three_trainers_are_one_recipe_with_one_state_class(sample_pairs, tokenizer):
    train, val = sample_pairs
    for cls in (TeacherTrainer, ReplacingTrainer, StudentTrainer):
        assert issubclass(cls, Recipe)
        # The loop and the checkpoint are the skeleton's: no recipe rewrites them.
        for name in ("fit", "save_checkpoint", "checkpoint", "restore"):
            assert getattr(cls, name) is getattr(Recipe, name), (cls.__name__, name)
    teacher = TeacherTrainer.start_or_resume(
        train.take(16), val.take(8), TeacherConfig(preset="tiny", steps=1, batch_size=8), "unused", resume=False
    )
    modules = ReplacingTrainer(
        ModularModel.from_teacher(tiny_t5(vocab=len(tokenizer)), "in-memory"),
        TrainConfig(steps=1, batch_size=8),
        train.tokenize(tokenizer),
        val.tokenize(tokenizer),
    )
    student = StudentTrainer(
        tiny_t5(vocab=len(tokenizer)),
        tokenizer,
        BaselineConfig(method="sft", shape="2-2", steps=1),
        train.tokenize(tokenizer),
        val.tokenize(tokenizer),
    )
    assert {type(t.state) for t in (teacher, modules, student)} == {TrainState}


def _private_imports(path: Path) -> list[str]:
    """Private names (`_x`, not dunders like `__version__`) that `path` imports from other modformer modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modformer"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_") and a.name[1] != "_"]
    return found


@pytest.mark.parametrize("name", ["teacher.py", "modular/trainer.py", "baselines.py", "recipe.py"])
def test_recipes_borrow_no_private_helpers(name):
    assert _private_imports(PACKAGE / name) == []


# --- the trainer checkpoint ---------------------------------------------------------------------------------------
def test_trainer_checkpoint_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    rng = random.Random(3)
    rng.random()
    np.random.seed(5)
    saved = TrainerCheckpoint(
        state=TrainState(step=7, history=[{"step": 5, "loss": 1.5}], seconds=12.25),
        optimizer=optimizer.state_dict(),
        scheduler={"last_epoch": 7},
        python_rng=rng.getstate(),
        numpy_rng=np.random.get_state(),
        torch_rng=torch.get_rng_state(),
    )
    saved.save(tmp_path)
    loaded = TrainerCheckpoint.load(tmp_path)
    assert loaded.state == saved.state and loaded.scheduler == saved.scheduler
    assert loaded.python_rng == saved.python_rng
    assert loaded.numpy_rng[0] == "MT19937" and np.array_equal(loaded.numpy_rng[1], saved.numpy_rng[1])
    assert loaded.numpy_rng[2:] == saved.numpy_rng[2:]
    assert torch.equal(loaded.torch_rng, saved.torch_rng)
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], saved.optimizer["state"][0]["exp_avg"])


def test_older_checkpoints_still_load(tmp_path):
    """The formats written before the shared skeleton: the teacher's (no scheduler, history or python state) and
    the modules' and students' (no numpy state)."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    teacher_dir, modules_dir = tmp_path / "teacher", tmp_path / "modules"
    old_teacher = {"step": 4, "seconds": 2.0, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    torch_save(teacher_dir / STATE_NAME, old_teacher)
    loaded = TrainerCheckpoint.load(teacher_dir)
    assert loaded.state == TrainState(step=4, history=[], seconds=2.0)
    assert loaded.scheduler is None and loaded.python_rng is None and loaded.numpy_rng is None
    old_modules = {
        **old_teacher,
        "history": [{"step": 4, "mean": 3.0}],
        "scheduler": {"last_epoch": 4},
        "python_rng": encode_random_state(random.Random(1).getstate()),
    }
    torch_save(modules_dir / STATE_NAME, old_modules)
    loaded = TrainerCheckpoint.load(modules_dir)
    assert loaded.python_rng == random.Random(1).getstate() and loaded.state.history == [{"step": 4, "mean": 3.0}]
    torch_save(tmp_path / "broken" / STATE_NAME, {"seconds": 1.0})
    with pytest.raises(CheckpointError, match="trainer_state.pt: field 'step': required but missing"):
        TrainerCheckpoint.load(tmp_path / "broken")


def test_a_checkpoint_is_one_folder_switched_in_whole_with_a_manifest_written_last(sample_pairs, tokenizer, tmp_path):
    train, val = sample_pairs
    config = BaselineConfig(method="sft", shape="2-2", steps=2, batch_size=8, eval_every=0, save_every=1)
    student = StudentTrainer(
        tiny_t5(vocab=len(tokenizer)), tokenizer, config, train.tokenize(tokenizer), val.tokenize(tokenizer)
    )
    out = tmp_path / "student"
    seen = []
    student.fit(
        out, on_step=lambda r: seen.append({p.name: p.stat().st_ino for p in out.iterdir()} if out.exists() else {})
    )
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["step"] == 2 and set(manifest["files"]) == {p.name for p in out.iterdir()} - {MANIFEST_NAME}
    assert {"model.safetensors", "modformer.json", STATE_NAME} <= set(manifest["files"])
    assert verify_checkpoint(out) == 2 and TrainerCheckpoint.load(out).state.step == 2
    # Step 2's checkpoint is a new folder: none of step 1's files was rewritten in place.
    step_1 = seen[1]
    assert step_1 and all(p.stat().st_ino != step_1.get(p.name) for p in out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary, new or old folder beside it
    assert verify_checkpoint(tmp_path) is None  # a folder without a manifest (written before them) is not checked


# --- artifacts ----------------------------------------------------------------------------------------------------
def test_teacher_run_round_trips(tmp_path):
    run = TeacherRun(TeacherConfig(preset="tiny", steps=40, seed=3), completed_steps=20, wall_s=12.5, val_loss=None)
    run.save(tmp_path)
    assert TeacherRun.load(tmp_path) == run
    assert completed_steps(tmp_path) == 20 and completed_steps(tmp_path / "none") == 0
    finished = TeacherRun(run.config, completed_steps=40, wall_s=30.0, val_loss=2.5)
    finished.save(tmp_path)
    assert TeacherRun.load(tmp_path) == finished


def test_student_run_round_trips(tmp_path):
    run = StudentRun(
        BaselineConfig(method="kd", shape="6-3", steps=100),
        layers={"encoder": [0, 2, 4, 7, 9, 11], "decoder": [0, 6, 11]},
        parameters=12345,
        completed_steps=100,
        wall_s=61.5,
        history=[{"step": 50, "loss": 3.25}, {"step": 100, "loss": 2.75}],
    )
    run.save(tmp_path)
    assert StudentRun.load(tmp_path) == run
    record = {
        "baseline": {"method": "distil", "shape": "6-6"},
        "layers": {"encoder": [0], "decoder": [0]},
        "parameters": 1,
    }
    (tmp_path / "modformer.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="recorded settings are not valid"):
        StudentRun.load(tmp_path)
    (tmp_path / "modformer.json").write_text('{"baseline": {"method": "distil", "shape": "6-6"}}')
    with pytest.raises(CheckpointError, match="modformer.json: field 'layers': required but missing"):
        StudentRun.load(tmp_path)


# --- errors name settings; the CLI shows flags --------------------------------------------------------------------
def test_output_checks_name_settings(tmp_path):
    cases = {
        "both": (dict(resume=True, overwrite=True), "--resume and --overwrite contradict each other: choose one"),
        "none": (dict(resume=True, overwrite=False), f"--resume: {tmp_path} holds no run to continue"),
        "exists": (dict(resume=False, overwrite=False), f"{tmp_path} already exists; pass --overwrite to replace it"),
    }
    for kwargs, shown in cases.values():
        with pytest.raises(ConfigError) as err:
            check_output(tmp_path, marker=STATE_NAME, what="run", **kwargs)
        assert "--" not in str(err.value)  # a Python caller never passed a flag
        assert with_flags(err.value, FLAGS) == shown
    check_output(tmp_path, resume=False, overwrite=True, marker=STATE_NAME, what="run")


def test_pseudo_label_file_is_only_for_pseudo(tmp_path):
    pairs = Seq2SeqData(["a b", "c d"], ["x", "y"], "pairs")
    labels = tmp_path / "labels.txt"
    labels.write_text("one\ntwo\n", encoding="utf-8")
    kd = BaselineConfig(method="kd", shape="2-2")
    with pytest.raises(ConfigError) as err:
        student_pairs(kd, None, None, pairs, tmp_path / "out", pseudo_labels_file=labels)
    assert with_flags(err.value, FLAGS) == "--pseudo-labels is for the pseudo method, not kd"
    assert student_pairs(kd, None, None, pairs, tmp_path / "out") is pairs
    pseudo = student_pairs(
        BaselineConfig(method="pseudo", shape="2-2"), None, None, pairs, tmp_path / "out", pseudo_labels_file=labels
    )
    assert pseudo.sources == pairs.sources and pseudo.targets == ["one", "two"]
    assert (tmp_path / "out" / "pseudo_labels.txt").read_text(encoding="utf-8") == "one\ntwo"
