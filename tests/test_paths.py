"""Outputs never destroy inputs (`refuse_overlap`); modules find a moved or relatively recorded teacher
(`locate_teacher`); limits named before any work (`modformer.limits`)."""

from __future__ import annotations

import json
import os

import pytest

from modformer.checkpoints import locate_teacher
from modformer.errors import CheckpointError, ConfigError, with_flags
from modformer.io import MAX_JSON_BYTES, read_json, refuse_overlap
from modformer.limits import MAX_SEED, MAX_TOKENS, check_batch, check_memory, check_seed, check_tokens


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "modules.safetensors").write_bytes(b"weights")
    (tmp_path / "data.txt").write_text("a\n")
    return tmp_path


@pytest.mark.parametrize(
    ("out", "how"),
    [("mods", "is"), ("mods/export", "lies inside"), ("mods/modules.safetensors", "lies inside"), (".", "contains")],
)
def test_an_output_that_is_inside_or_contains_an_input_is_refused(tree, out, how):
    with pytest.raises(ConfigError) as err:
        refuse_overlap({"out": tree / out}, {"modules": tree / "mods", "data": [tree / "data.txt"]})
    text = with_flags(err.value)
    assert f" {how} --modules {tree / 'mods'}" in text and text.startswith("--out ")
    assert text.endswith("choose another --out")


def test_paths_are_compared_resolved(tree, monkeypatch):
    monkeypatch.chdir(tree)
    os.symlink(tree / "mods", tree / "link")
    for out in ("link", "./mods/../mods", tree / "link" / "x.json"):
        with pytest.raises(ConfigError):
            refuse_overlap({"json_out": out}, {"modules": "mods"})


def test_separate_paths_missing_inputs_and_unset_options_pass(tree):
    refuse_overlap({"out": tree / "export", "json_out": None}, {"modules": tree / "mods", "plan": None})
    refuse_overlap({"out": tree / "mods-2"}, {"modules": tree / "mods"})  # a shared prefix is not containment
    refuse_overlap({"out": tree / "gone"}, {"teacher": tree / "gone"})  # nothing there to lose


def test_a_phrase_instead_of_a_setting_is_shown_as_it_is(tree):
    with pytest.raises(ConfigError) as err:
        refuse_overlap({"out": tree / "mods"}, {"the modules' teacher": tree / "mods"})
    assert err.value.settings == ("out",) and "is the modules' teacher" in with_flags(err.value)


def _teacher(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_an_absolute_teacher_path_is_used_as_recorded(tmp_path):
    teacher = _teacher(tmp_path / "t5")
    assert locate_teacher(str(teacher), tmp_path / "mods") == teacher


def test_a_relative_teacher_path_is_found_from_the_working_folder_or_beside_the_modules(tmp_path, monkeypatch):
    teacher = _teacher(tmp_path / "runs" / "t5")
    monkeypatch.chdir(tmp_path)
    assert locate_teacher("runs/t5", "runs/mods") == teacher  # as recorded, from where training ran
    monkeypatch.chdir(teacher)
    assert locate_teacher("t5", tmp_path / "runs" / "mods") == teacher  # beside the modules folder


def test_a_teacher_that_is_nowhere_names_the_teacher_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as err:
        locate_teacher("gone", tmp_path / "runs" / "mods")
    text = with_flags(err.value)
    assert str(tmp_path / "gone") in text and str(tmp_path / "runs" / "gone") in text
    assert text.endswith("give its new folder as --teacher") and "\n" not in text


def test_json_metadata_too_big_or_too_deep_is_one_error(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.write(b"{")
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(CheckpointError, match="past the 67,108,864-byte limit"):
        read_json(big, "profile")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_json(deep, "profile")
    assert read_json(_write(tmp_path / "ok.json", {"a": 1}), "x") == {"a": 1}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_limits_name_their_value():
    check_seed(0), check_seed(MAX_SEED), check_tokens(MAX_TOKENS, "src_len"), check_batch([1, 8], "batch")
    for bad in (-1, MAX_SEED + 1, 2**64):
        with pytest.raises(ConfigError, match="4,294,967,295"):
            check_seed(bad)
    with pytest.raises(ConfigError, match="limit of 65,536 tokens"):
        check_tokens([32, MAX_TOKENS + 1], "src_len")
    with pytest.raises(ConfigError, match="128-token position limit of bart"):
        check_tokens(200, "src_len", limit=128, model="bart")
    with pytest.raises(ConfigError, match="65,536 pairs"):
        check_batch(10**6, "batch_size")
    check_memory(8, 64, 0, 512, 8, total=2**30)
    with pytest.raises(ConfigError, match="GiB of activations"):
        check_memory(4096, 60_000, 32, 512, 8, total=2**34)


def test_the_position_limit_is_the_table_size_of_models_that_have_one():
    from transformers import AutoConfig

    from modformer.limits import position_limit

    assert position_limit(AutoConfig.for_model("bart", max_position_embeddings=160)) == 160
    assert position_limit(AutoConfig.for_model("marian")) == 1024  # a fixed sinusoidal table
    for unlimited in ("t5", "m2m_100", "gpt2"):  # relative positions, a table that grows, not an encoder-decoder
        assert position_limit(AutoConfig.for_model(unlimited)) is None
