"""The demo's own pieces: the bundled teacher's float16 -> float32 copy, and the folder rules (resume, afresh, never
another's files). The whole path through the CLI is `tests/test_cli.py::test_demo_runs_every_stage_and_a_rerun_resumes`."""

from __future__ import annotations

import pytest
import torch
from conftest import save_teacher, tiny_t5

from modformer.checkpoints import load_seq2seq
from modformer.demo import BUNDLED_TEACHER, DEMO_RECORD, DemoConfig, copy_bundled_teacher, prepare_folder
from modformer.errors import ConfigError
from modformer.io import read_json


def test_the_bundled_teacher_is_copied_as_float32_with_equal_outputs(tmp_path, tokenizer):
    model = tiny_t5()
    half = save_teacher(model.half(), tokenizer, tmp_path / "bundled")
    out = copy_bundled_teacher(tmp_path / "teacher", source=half)
    copied = load_seq2seq(out)
    assert {p.dtype for p in copied.parameters()} == {torch.float32}
    assert read_json(out / "config.json", "config")["dtype"] == "float32"
    ids = torch.tensor([[5, 6, 7, 1]])
    reference = load_seq2seq(half).float()
    with torch.no_grad():  # the same weights, widened: the same logits
        a = copied(input_ids=ids, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits
        b = reference(input_ids=ids, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="bundled teacher is missing"):
        copy_bundled_teacher(tmp_path / "other", source=tmp_path / "nosuch")


def test_the_default_demo_starts_from_the_bundled_teacher_and_its_record():
    config = DemoConfig()
    assert config.teacher == "bundled" and config.data == "full" and config.budget == "speedup>=2"
    assert (BUNDLED_TEACHER / "config.json").is_file() and (BUNDLED_TEACHER / "README.md").is_file()
    scores = read_json(BUNDLED_TEACHER / "scores.json", "scores")
    assert scores["test_2016_flickr"]["bleu"] >= 25 and scores["test_2016_flickr"]["n"] == 1000


def test_a_demo_folder_resumes_restarts_and_never_clears_another(tmp_path):
    fast = DemoConfig.fast()
    out = tmp_path / "demo"
    prepare_folder(out, fast, overwrite=False)
    assert read_json(out / DEMO_RECORD, "record")["config"]["teacher"] == "tiny"
    (out / "teacher").mkdir()
    prepare_folder(out, fast, overwrite=False)  # resume: kept
    assert (out / "teacher").is_dir()
    with pytest.raises(ConfigError, match="other settings"):
        prepare_folder(out, DemoConfig(), overwrite=False)
    prepare_folder(out, DemoConfig(), overwrite=True)  # afresh
    assert not (out / "teacher").exists()
    assert read_json(out / DEMO_RECORD, "record")["config"]["teacher"] == "bundled"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a demo's"):
        prepare_folder(mine, fast, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_folder(tmp_path / "file", fast, overwrite=False)
