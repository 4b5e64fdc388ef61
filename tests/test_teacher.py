"""`modformer teacher`: checkpoints every --save-every steps and --resume continues a stopped run exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from modformer.cli import app
from modformer.errors import ConfigError
from modformer.teacher import TeacherConfig, completed_steps, train_teacher

runner = CliRunner()
LINE_DATA = ("--src-ext", "en", "--tgt-ext", "de")


class Stop(Exception):
    pass


def teacher_args(data_dir, out, *extra):
    return ["teacher", "--data", data_dir, *LINE_DATA, "--out", out, "--preset", "tiny", "--batch-size", 8, *extra]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_stopped_teacher_resumes_to_the_same_weights(sample_pairs, tmp_path):
    train, val = sample_pairs
    config = TeacherConfig(preset="tiny", steps=4, batch_size=8, save_every=2)
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_teacher(train, val, config, whole)

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_teacher(train, val, config, split, on_step=stop_at_3)
    assert completed_steps(split) == 2  # the checkpoint of step 2 survived the stop
    summary = train_teacher(train, val, config, split, resume=True)
    assert completed_steps(split) == 4 and summary["val_loss"] > 0
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    info = json.loads((split / "teacher.json").read_text())
    assert info["teacher"]["preset"] == "tiny" and info["val_loss"] == pytest.approx(summary["val_loss"])


def test_resume_checks_the_run(sample_pairs, tmp_path):
    train, val = sample_pairs
    out = tmp_path / "t"
    train_teacher(train, val, TeacherConfig(preset="tiny", steps=2, batch_size=8), out)
    with pytest.raises(ConfigError, match="was trained with batch_size 8, not 4"):
        train_teacher(train, val, TeacherConfig(preset="tiny", steps=4, batch_size=4), out, resume=True)
    with pytest.raises(ConfigError, match="is at step 2, past steps 1; raise steps") as err:
        train_teacher(train, val, TeacherConfig(preset="tiny", steps=1, batch_size=8), out, resume=True)
    assert err.value.settings == ("steps",)  # the CLI shows it as --steps
    with pytest.raises(ConfigError, match="save_every must be positive"):
        TeacherConfig(save_every=0)


def test_cli_teacher_resume_and_errors(data_dir, tmp_path):
    out = tmp_path / "teacher"
    assert run(*teacher_args(data_dir, out, "--steps", 2)).exit_code == 0
    result = run(*teacher_args(data_dir, out, "--steps", 3, "--resume"))
    assert result.exit_code == 0, result.stderr
    assert completed_steps(out) == 3
    result = run(*teacher_args(data_dir, tmp_path / "none", "--steps", 2, "--resume"))
    assert result.exit_code == 1 and "holds no teacher run to continue" in result.stderr
    result = run(*teacher_args(data_dir, out, "--steps", 2, "--resume", "--overwrite"))
    assert result.exit_code == 1 and "contradict" in result.stderr
    assert completed_steps(out) == 3  # nothing was touched
