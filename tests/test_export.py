"""An exported assembly is a plain Hugging Face checkpoint: it loads without modformer and generates the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modformer.checkpoints import load_seq2seq
from modformer.data import load_split
from modformer.modular.assembly import Assembly
from modformer.modular.export import EXPORT_INFO_NAME, export_assembly
from modformer.modular.model import ModularModel

# Runs in a fresh interpreter: only transformers, and a check that modformer was never imported.
LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    path, inputs = sys.argv[1], json.load(open(sys.argv[2]))
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(inputs, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, num_beams=1)
    assert not any(name.startswith("modformer") for name in sys.modules), "modformer was imported"
    json.dump({"ids": out.tolist(), "params": sum(p.numel() for p in model.parameters())}, sys.stdout)
    """
)


@pytest.mark.parametrize("spec", ["enc=2,1,1 dec=2,2", "enc=2,2 dec=2,2"])
def test_export_loads_without_modformer_and_generates_the_same(tmp_path, teacher_dir, tokenizer, spec):
    model = ModularModel.from_teacher(load_seq2seq(teacher_dir), teacher_dir)
    with torch.no_grad():  # trained modules differ from the layers they were copied from
        g = torch.Generator().manual_seed(0)
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    assembly = Assembly.parse(spec)
    info = export_assembly(model, assembly, tmp_path / "export")

    inputs = load_split(_data_spec(), "val", limit=50).sources
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "export"), str(tmp_path / "inputs.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exported = json.loads(done.stdout)

    in_memory = model.assemble(assembly)
    enc = tokenizer(inputs, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = in_memory.generate(**enc, max_new_tokens=12, do_sample=False, num_beams=1)
    assert exported["ids"] == expected.tolist()
    assert exported["params"] == info["parameters"] == model.cost_model().params(assembly)
    saved = json.loads((tmp_path / "export" / EXPORT_INFO_NAME).read_text())
    assert saved["assembly"] == assembly.to_json() and saved["size_ratio"] > 1.0


def test_export_refuses_an_existing_folder_and_leaves_it_alone(tmp_path, t5_teacher_dir):
    from modformer.errors import CheckpointError

    model = ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        export_assembly(model, Assembly.parse("enc=2,2 dec=2,2"), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_assembly(model, Assembly.parse("enc=2,2 dec=2,2"), out, overwrite=True)
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def _data_spec():
    from modformer.data import default_data_spec

    return default_data_spec()


def test_in_memory_generation_handles_more_decoder_than_encoder_blocks(t5_teacher_dir, tokenizer):
    """transformers sizes T5's default cache by the encoder depth; modformer's generate passes a growing cache."""
    from modformer.evaluation import generate

    model = ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir)
    deep_decoder = model.assemble(Assembly.parse("enc=2,2 dec=1,1,1,1"))
    data = load_split(_data_spec(), "val", limit=4).tokenize(tokenizer)
    texts = generate(deep_decoder, tokenizer, data.batches(4, shuffle=False), max_new_tokens=5)
    assert len(texts) == 4


def test_artifacts_get_ordinary_permissions(tmp_path, t5_teacher_dir):
    """Written aside then renamed, artifacts must still be readable by others, as any file the user writes."""
    model = ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir)
    model.save_pretrained(tmp_path / "mods")
    export_assembly(model, Assembly.parse("enc=2,2 dec=2,2"), tmp_path / "export")
    mask = os.umask(0)
    os.umask(mask)
    for path in [tmp_path / "mods" / "modules.safetensors", tmp_path / "export", tmp_path / "export" / "config.json"]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))
