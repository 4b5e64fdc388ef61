"""Fixed-shape baseline students (sft, kd, pseudo): layer choice, construction, the CLI, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from modformer.baselines import make_student, spread_layers
from modformer.cli import app
from modformer.errors import ConfigError
from tests.conftest import tiny_bart, tiny_t5

runner = CliRunner()


def test_spread_layers_follow_shleifer_and_rush():
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread_layers(12, 3) == [0, 6, 11]
    assert spread_layers(12, 12) == list(range(12))
    assert spread_layers(4, 1) == [0]
    for bad in (0, 13):
        with pytest.raises(ConfigError, match="needs 1 to 12 layers"):
            spread_layers(12, bad)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_student_copies_the_spread_layers(family):
    teacher = tiny_t5(layers=4) if family == "t5" else tiny_bart(layers=4)
    student, chosen = make_student(teacher, "2-3")
    assert chosen == {"encoder": [0, 3], "decoder": [0, 2, 3]}
    t, s = teacher.state_dict(), student.state_dict()
    prefix = {"t5": ("encoder.block.", "decoder.block."), "bart": ("model.encoder.layers.", "model.decoder.layers.")}
    for layers, pre in zip(chosen.values(), prefix[family], strict=True):
        for j, i in enumerate(layers):
            own = {k[len(f"{pre}{j}.") :]: v for k, v in s.items() if k.startswith(f"{pre}{j}.")}
            assert own and all(torch.equal(v, t[f"{pre}{i}.{k}"]) for k, v in own.items())
    with pytest.raises(ConfigError, match="expected 'E-D'"):
        make_student(teacher, "six")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def baseline_args(method, teacher, data, out, *extra) -> list:
    return [
        "baseline",
        method,
        "--teacher",
        teacher,
        "--shape",
        "2-2",
        "--data",
        data,
        "--src-ext",
        "en",
        "--tgt-ext",
        "de",
        "--out",
        out,
        "--batch-size",
        8,
        "--eval-every",
        2,
        "--save-every",
        2,
        *extra,
    ]


@pytest.mark.parametrize("method", ["sft", "kd", "pseudo"])
def test_each_baseline_writes_a_plain_checkpoint(method, t5_teacher_dir, data_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / method
    result = run(*baseline_args(method, t5_teacher_dir, data_dir, out, "--steps", 2))
    assert result.exit_code == 0, result.stderr
    info = json.loads((out / "modformer.json").read_text())
    assert info["baseline"]["method"] == method and info["completed_steps"] == 2
    assert info["layers"] == {"encoder": [0, 3], "decoder": [0, 3]} and len(info["history"]) == 1
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.num_layers == 2 and model.config.num_decoder_layers == 2
    assert (out / "pseudo_labels.txt").is_file() == (method == "pseudo")
    if method == "kd":
        assert "logit" in result.stderr and "hidden" in result.stderr


def test_a_resumed_baseline_equals_an_uninterrupted_one(t5_teacher_dir, data_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run(*baseline_args("kd", t5_teacher_dir, data_dir, whole, "--steps", 4)).exit_code == 0
    assert run(*baseline_args("kd", t5_teacher_dir, data_dir, split, "--steps", 2)).exit_code == 0
    resumed = run(*baseline_args("kd", t5_teacher_dir, data_dir, split, "--steps", 4, "--resume"))
    assert resumed.exit_code == 0, resumed.stderr
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    wrong = run(*baseline_args("sft", t5_teacher_dir, data_dir, split, "--steps", 6, "--resume"))
    assert wrong.exit_code == 1 and "was trained with method 'kd', not 'sft'" in wrong.stderr


def test_no_dropout_trains_as_a_teacher_without_dropout(t5_teacher_dir, data_dir, tmp_path):
    """`--no-dropout` trains the student as if the teacher's dropout rate were 0: the same weights as `--dropout`
    from a copy of the teacher whose config says 0, and other weights than `--dropout` from the teacher itself."""
    import shutil

    quiet = tmp_path / "teacher-no-dropout"
    shutil.copytree(t5_teacher_dir, quiet)
    config = json.loads((quiet / "config.json").read_text())
    assert config["dropout_rate"] > 0
    (quiet / "config.json").write_text(json.dumps(config | {"dropout_rate": 0.0}))
    weights = {}
    for name, teacher, flag in (("off", t5_teacher_dir, "--no-dropout"), ("zero", quiet, "--dropout")):
        out = tmp_path / name
        result = run(*baseline_args("sft", teacher, data_dir, out, "--steps", 2, flag))
        assert result.exit_code == 0, result.stderr
        weights[name] = load_file(out / "model.safetensors")
    on = tmp_path / "on"
    assert run(*baseline_args("sft", t5_teacher_dir, data_dir, on, "--steps", 2)).exit_code == 0
    weights["on"] = load_file(on / "model.safetensors")
    assert json.loads((tmp_path / "off" / "modformer.json").read_text())["baseline"]["dropout"] is False
    assert all(torch.equal(weights["off"][k], weights["zero"][k]) for k in weights["off"])
    assert not all(torch.equal(weights["off"][k], weights["on"][k]) for k in weights["off"])


def test_train_only_decoder_changes_the_decoder_layers_and_nothing_else(t5_teacher_dir, data_dir, tmp_path):
    """The diagnostic student: only its decoder layers train, as around modular decoder modules (the embeddings,
    encoder, final norms, head and position tables stay the teacher's copies)."""
    out = tmp_path / "decoder-only"
    result = run(*baseline_args("kd", t5_teacher_dir, data_dir, out, "--steps", 2, "--train-only", "decoder"))
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "modformer.json").read_text())["baseline"]["train_only"] == "decoder"
    start = tmp_path / "start"
    assert run(*baseline_args("kd", t5_teacher_dir, data_dir, start, "--steps", 1, "--lr", 1e-12)).exit_code == 0
    trained, copied = load_file(out / "model.safetensors"), load_file(start / "model.safetensors")
    changed = {k for k in trained if not torch.allclose(trained[k], copied[k], atol=1e-7)}
    assert changed and all(k.startswith("decoder.block.") for k in changed)
    assert not any("relative_attention_bias" in k for k in changed)
    bad = run(*baseline_args("kd", t5_teacher_dir, data_dir, tmp_path / "z", "--steps", 2, "--train-only", "head"))
    assert bad.exit_code == 1 and "train_only must be one of decoder, all-but-encoder" in bad.stderr
    # every weight but the encoder's: the decoder's layers (their position table too), the embeddings (shared with
    # the encoder and the head), the decoder's final norm; nothing under encoder.*
    out = tmp_path / "all-but-encoder"
    result = run(*baseline_args("kd", t5_teacher_dir, data_dir, out, "--steps", 2, "--train-only", "all-but-encoder"))
    assert result.exit_code == 0, result.stderr
    trained = load_file(out / "model.safetensors")
    changed = {k for k in trained if not torch.allclose(trained[k], copied[k], atol=1e-7)}
    assert "shared.weight" in changed and "decoder.final_layer_norm.weight" in changed
    assert any("decoder.block.0.layer.0.SelfAttention.relative_attention_bias" in k for k in changed)
    assert not any(k.startswith("encoder.") and k != "encoder.embed_tokens.weight" for k in changed)


def test_baseline_bad_input(t5_teacher_dir, data_dir, tmp_path):
    result = run(*baseline_args("distil", t5_teacher_dir, data_dir, tmp_path / "x", "--steps", 2))
    assert result.exit_code == 1 and "unknown baseline 'distil'" in result.stderr
    result = run(*baseline_args("sft", t5_teacher_dir, data_dir, tmp_path / "y", "--steps", 2, "--resume"))
    assert result.exit_code == 1 and "holds no baseline run" in result.stderr


def test_pseudo_labels_can_be_reused(t5_teacher_dir, data_dir, tmp_path):
    first = tmp_path / "first"
    assert run(*baseline_args("pseudo", t5_teacher_dir, data_dir, first, "--steps", 2)).exit_code == 0
    labels = first / "pseudo_labels.txt"
    # A file of other labels, one per training source: the student trains on exactly those (no teacher generation).
    own = tmp_path / "own.txt"
    count = len(labels.read_text(encoding="utf-8").split("\n"))
    own.write_text("\n".join(f"label {i}" for i in range(count)) + "\n", encoding="utf-8")
    second = tmp_path / "second"
    result = run(*baseline_args("pseudo", t5_teacher_dir, data_dir, second, "--steps", 2, "--pseudo-labels", own))
    assert result.exit_code == 0, result.stderr
    assert (second / "pseudo_labels.txt").read_text(encoding="utf-8").split("\n") == own.read_text(
        encoding="utf-8"
    ).splitlines()
    assert "pseudo-labels" not in result.stderr  # no generation progress bar
    # Bad input: a count that does not pair with the sources, an empty line, the option with another method.
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\n", encoding="utf-8")
    result = run(
        *baseline_args("pseudo", t5_teacher_dir, data_dir, tmp_path / "a", "--steps", 2, "--pseudo-labels", short)
    )
    assert result.exit_code == 1 and f"2 pseudo-labels for {count} training sources" in result.stderr
    assert not (tmp_path / "a").exists()
    gap = tmp_path / "gap.txt"
    gap.write_text("\n".join(["x"] * (count - 1) + [" "]) + "\n", encoding="utf-8")
    result = run(
        *baseline_args("pseudo", t5_teacher_dir, data_dir, tmp_path / "b", "--steps", 2, "--pseudo-labels", gap)
    )
    assert result.exit_code == 1 and f"line {count} is empty" in result.stderr
    result = run(*baseline_args("kd", t5_teacher_dir, data_dir, tmp_path / "c", "--steps", 2, "--pseudo-labels", own))
    assert result.exit_code == 1 and "--pseudo-labels is for the pseudo method" in result.stderr
