"""Modules and assemblies: teacher equivalence, position bias, init rule, save/load round trip, mismatches."""

from __future__ import annotations

import json

import pytest
import torch

from modformer.checkpoints import load_seq2seq
from modformer.errors import CheckpointError
from modformer.modular.assembly import Assembly, valid_stacks
from modformer.modular.model import CONFIG_NAME, WEIGHTS_NAME, ModularModel
from tests.conftest import save_teacher, tiny_bart, tiny_t5

STACKS = ("encoder", "decoder")


def _inputs(vocab: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0  # padding in one row
    y = torch.randint(3, vocab, (3, 7), generator=g)
    return {"input_ids": x, "attention_mask": mask, "labels": y}


def _perturb_modules(model: ModularModel, seed: int = 1) -> None:
    """Make modules differ from the teacher layers they were copied from, as trained modules do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_all_teacher_assembly_reproduces_teacher_logits(make):
    teacher = make()
    model = ModularModel.from_teacher(teacher, "in-memory")
    standalone = model.assemble(Assembly.teacher(4, 4))
    batch = _inputs()
    with torch.no_grad():
        expected = teacher(**batch).logits
        got = standalone(**batch).logits
    assert (expected - got).abs().max().item() < 1e-5


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_assembled_model_equals_hybrid_run_and_holds_only_its_blocks(make):
    teacher = make()
    model = ModularModel.from_teacher(teacher, "in-memory")
    _perturb_modules(model)
    batch = _inputs()
    for spec in ("enc=2,1,1 dec=2,2", "enc=2,2 dec=1,1,2", "enc=1,1,2 dec=2,1,1"):
        a = Assembly.parse(spec)
        standalone = model.assemble(a)
        blocks = {s: model.stack_blocks(a, s) for s in STACKS}
        with torch.no_grad(), model.adapter.swapped_layers(teacher, blocks):
            hybrid = teacher(**batch).logits
        with torch.no_grad():
            got = standalone(**batch).logits
        assert (hybrid - got).abs().max().item() < 1e-5, spec
        assert sum(p.numel() for p in standalone.parameters()) == model.cost_model().params(a)
        assert [len(model.adapter.layers(standalone, s)) for s in STACKS] == [len(a.encoder), len(a.decoder)]
    # the swap is undone: the teacher has its own layers again
    assert [len(model.adapter.layers(teacher, s)) for s in STACKS] == [4, 4]


def test_every_assembled_t5_stack_owns_the_position_bias():
    model = ModularModel.from_teacher(tiny_t5(), "in-memory")
    for enc in valid_stacks(4, [2]):
        standalone = model.assemble(Assembly(encoder=enc, decoder=(2, 2)))
        for s in STACKS:
            first = model.adapter.layers(standalone, s)[0]
            assert first.layer[0].SelfAttention.has_relative_attention_bias, (s, enc)


def test_modules_start_from_the_bottom_layer_of_their_span_and_position_tables_are_frozen():
    teacher = tiny_t5()
    model = ModularModel.from_teacher(teacher, "in-memory")
    for stack, start, size in model.config.spans():
        module = model.block(stack, start, size)
        source = model.adapter.layers(teacher, stack)[start].state_dict()
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, source[name]), (stack, start, size, name)
    bias = model.block("encoder", 0, 2).layer[0].SelfAttention.relative_attention_bias.weight
    assert not bias.requires_grad
    assert all(not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_top_init_starts_a_span_ending_at_the_top_of_its_stack_from_the_top_layer(make):
    teacher = make(layers=6)
    model = ModularModel.from_teacher(teacher, "in-memory", [2, 3], top_init=True)
    tops = []
    for stack, start, size in model.config.spans():
        layers = model.adapter.layers(teacher, stack)
        at_top = start + size == len(layers)
        tops += [(stack, start, size)] if at_top else []
        source = layers[len(layers) - 1 if at_top else start].state_dict()
        for name, tensor in model.block(stack, start, size).state_dict().items():
            assert torch.equal(tensor, source[name]), (stack, start, size, name)
    assert sorted(tops) == [("decoder", 3, 3), ("decoder", 4, 2), ("encoder", 3, 3), ("encoder", 4, 2)]


def test_default_granularities_follow_the_depth():
    assert ModularModel.from_teacher(tiny_t5(layers=4), "x").config.granularities == [2]
    assert ModularModel.from_teacher(tiny_t5(layers=12), "x").config.granularities == [2, 4, 6]


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_save_and_load_round_trip(tmp_path, tokenizer, make):
    teacher_dir = save_teacher(make(), tokenizer, tmp_path / "teacher")
    model = ModularModel.from_teacher(load_seq2seq(teacher_dir), teacher_dir)
    _perturb_modules(model)
    model.save_pretrained(tmp_path / "mods")
    loaded = ModularModel.from_pretrained(tmp_path / "mods")
    assert loaded.config.to_json() == model.config.to_json()
    for key, layer in model.blocks.items():
        for name, tensor in layer.state_dict().items():
            assert torch.equal(tensor, loaded.blocks[key].state_dict()[name])
    config = json.loads((tmp_path / "mods" / CONFIG_NAME).read_text())
    assert {"modformer_version", "teacher", "teacher_config_fingerprint", "granularities", "spans"} <= set(config)


def test_modules_refuse_another_teacher(tmp_path, tokenizer):
    first = save_teacher(tiny_t5(seed=0), tokenizer, tmp_path / "a")
    other_weights = save_teacher(tiny_t5(seed=1), tokenizer, tmp_path / "b")
    other_shape = save_teacher(tiny_t5(layers=6), tokenizer, tmp_path / "c")
    ModularModel.from_teacher(load_seq2seq(first), first).save_pretrained(tmp_path / "mods")
    with pytest.raises(CheckpointError, match="different teacher"):
        ModularModel.from_pretrained(tmp_path / "mods", other_weights)
    with pytest.raises(CheckpointError, match="different teacher architecture"):
        ModularModel.from_pretrained(tmp_path / "mods", other_shape)


def test_truncated_or_mismatched_module_files_are_one_line_errors(tmp_path, tokenizer):
    teacher_dir = save_teacher(tiny_t5(), tokenizer, tmp_path / "teacher")
    ModularModel.from_teacher(load_seq2seq(teacher_dir), teacher_dir).save_pretrained(tmp_path / "mods")
    weights = tmp_path / "mods" / WEIGHTS_NAME
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        ModularModel.from_pretrained(tmp_path / "mods")
    assert "\n" not in str(err.value)
    (tmp_path / "mods" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModularModel.from_pretrained(tmp_path / "mods")
