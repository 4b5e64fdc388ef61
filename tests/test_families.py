"""Model families: every entry of `FAMILIES` says the truth about its model, and a tiny random model of each family
the table gained (the real checkpoints' structure, toy sizes) trains, assembles, exports to a plain checkpoint whose
logits equal the in-memory assembly's, serves in CTranslate2 where its converter knows the family, profiles, and
distils a baseline student."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, LEDConfig

from modformer.baselines import BaselineConfig, StudentTrainer
from modformer.checkpoints import load_seq2seq
from modformer.data import default_data_spec
from modformer.errors import CheckpointError
from modformer.evaluation import lazy_cache, teacher_forced_loss
from modformer.modular.assembly import Assembly
from modformer.modular.evaluate import evaluate
from modformer.modular.export import export_assembly
from modformer.modular.families import FAMILIES, STACKS, adapter_for
from modformer.modular.model import ModularModel
from modformer.modular.trainer import ReplacingTrainer, TrainConfig
from modformer.planner.proxy import ProxyScorer
from modformer.profiling.measure import ProfileConfig, all_blocks, profile_modules
from modformer.serving.ctranslate2_engine import CTranslate2Generator
from modformer.serving.targets import Target
from tests.conftest import NEW_FAMILIES, family_tokenizer, save_teacher, tiny_bart, tiny_family, tiny_t5

# Families whose config class has a loader in the installed CTranslate2's `ctranslate2/converters/transformers.py`
# (4.8.5: `@register_loader("MarianConfig")`, "MBartConfig", "M2M100Config", "PegasusConfig", "UMT5Config"; there is
# none for Blenderbot, BlenderbotSmall or PLBart).
CTRANSLATE2 = ("marian", "mbart", "m2m_100", "pegasus", "umt5")
ASSEMBLY = Assembly.parse("enc=2,1,1 dec=1,1,2")  # a module at the bottom of one stack, at the top of the other
NEW_TOKENS = 12

# Runs in a fresh interpreter: transformers alone, and a check that modformer was never imported.
LOGITS = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSeq2SeqLM
    path, batch = sys.argv[1], json.load(open(sys.argv[2]))
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(**{k: torch.tensor(v) for k, v in batch.items()}).logits
    assert not any(name.startswith("modformer") for name in sys.modules), "modformer was imported"
    json.dump({"logits": logits.tolist(), "params": sum(p.numel() for p in model.parameters())}, sys.stdout)
    """
)


def tiny(model_type: str, tokenizer=None, seed: int = 0):
    if model_type == "t5":
        return tiny_t5(seed=seed)
    if model_type == "bart":
        return tiny_bart(seed=seed)
    return tiny_family(model_type, tokenizer, seed=seed)


def texts(sample_pairs) -> list[str]:
    train, _ = sample_pairs
    return train.sources + train.targets


# --------------------------------------------------------------------------------------------------------------------
# The table says the truth about each model
# --------------------------------------------------------------------------------------------------------------------


def _position_tables(stack) -> list[torch.Tensor]:
    table = stack.embed_positions
    return [t.detach().clone() for t in [*table.parameters(), *table.buffers()]]


def _layer_in_and_out(adapter, model, layer, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """What `layer` reads and returns as the only layer of the encoder, run by the model's own encoder forward."""
    seen = {}
    handle = layer.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.update(x=(args or (kwargs["hidden_states"],))[0]), with_kwargs=True
    )
    try:
        with (
            torch.no_grad(),
            adapter.swapped_layers(model, {"encoder": [layer]}),
            adapter.record({0: layer}, "encoder") as rec,
        ):
            adapter.stack(model, "encoder")(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        handle.remove()
    return seen["x"], rec[0].hidden


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_each_entry_matches_its_model(model_type, sample_pairs):
    tokenizer = None if model_type in ("t5", "bart") else family_tokenizer(model_type, texts(sample_pairs))
    model = tiny(model_type, tokenizer)
    adapter, config = adapter_for(model.config), model.config
    assert adapter.model_type == model_type

    # where the layers live, and the config keys that count them
    for s in STACKS:
        assert len(adapter.layers(model, s)) == adapter.depth(config, s) == 4, s
    shallower = AutoModelForSeq2SeqLM.from_config(adapter.with_depths(config, 3, 2))
    assert [len(adapter.layers(shallower, s)) for s in STACKS] == [3, 2]
    changed = {k for k, v in adapter.with_depths(config, 3, 2).to_dict().items() if config.to_dict().get(k) != v}
    assert changed <= set(adapter.depth_keys.values()) | {"num_hidden_layers"}

    # a fresh layer has the weight names and shapes of the teacher layer it stands for (layer 0: with T5's position
    # table, which the layers above it lack)
    for s in STACKS:
        for first, reference in ((True, 0), (False, 1)):
            fresh = adapter.new_layer(model, s, first=first).state_dict()
            want = adapter.layers(model, s)[reference].state_dict()
            assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in want.items()}, (s, first)

    # positions: relative tables in layers, or a table in the stack, learned (seed-dependent) or sinusoidal (not)
    other = tiny(model_type, tokenizer, seed=1)
    for s in STACKS:
        owners = [adapter.position_bias_param in dict(layer.named_parameters()) for layer in adapter.layers(model, s)]
        if adapter.positions == "relative":
            assert owners == ([True, False, False, False] if adapter.position_bias == "first layer" else [True] * 4)
            assert not hasattr(adapter.stack(model, s), "embed_positions")
        else:
            same = [
                torch.equal(a, b)
                for a, b in zip(*map(_position_tables, (adapter.stack(model, s), adapter.stack(other, s))), strict=True)
            ]
            assert all(same) == (adapter.positions == "sinusoidal"), (s, same)

    # layer norms: a layer with every weight zero passes its input through when norms come first (pre-norm); after
    # each sublayer, the zero-weight norm leaves nothing
    ids = torch.randint(4, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    zeroed = copy.deepcopy(adapter.layers(model, "encoder")[0])
    with torch.no_grad():
        for p in zeroed.parameters():
            p.zero_()
    seen, out = _layer_in_and_out(adapter, model, zeroed, ids)
    assert torch.allclose(out, seen if adapter.pre_norm else torch.zeros_like(out), atol=1e-6)

    # scaled token embeddings: sqrt(d_model) where the config key says so, never for the T5 kin
    stack = adapter.stack(model, "encoder")
    scale = getattr(stack, "embed_scale", None) or getattr(stack.embed_tokens, "embed_scale", 1.0)
    scaled = bool(adapter.embed_scale_key and getattr(config, adapter.embed_scale_key))
    assert scale == pytest.approx(math.sqrt(config.d_model) if scaled else 1.0)

    # teacher forcing: decoder inputs as the model's own forward makes them from labels
    labels = torch.randint(4, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    labels[1, 3:] = -100
    with torch.no_grad():
        own = model(input_ids=ids, labels=labels).logits
        ours = model(input_ids=ids, decoder_input_ids=adapter.decoder_input_ids(model, labels)).logits
    assert torch.equal(own, ours)


def test_an_unsupported_family_is_one_line_naming_the_families_and_what_an_entry_needs():
    config = LEDConfig(vocab_size=100, d_model=16, encoder_layers=2, decoder_layers=2)
    with pytest.raises(CheckpointError) as err:
        adapter_for(config)
    message = str(err.value)
    assert message.startswith("model type 'led' is not supported") and "\n" not in message
    assert all(name in message for name in FAMILIES)
    assert "FAMILIES" in message and "layer lists" in message and "norms" in message


README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_family_table_is_the_families_table():
    text = README.read_text(encoding="utf-8").split("## Model families", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        rows[cells.pop("family")] = cells
    assert sorted(rows) == sorted(FAMILIES)
    for model_type, cells in rows.items():
        described = FAMILIES[model_type].describe()
        assert {k: cells[k] for k in described} == described, model_type
        assert cells["CTranslate2"] == ("yes" if model_type in {"t5", "mt5", "bart", *CTRANSLATE2} else "no")


# --------------------------------------------------------------------------------------------------------------------
# Each new family end to end
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def trained(request, tmp_path_factory, sample_pairs):
    """A tiny teacher of the family (saved with its tokenizer) and modules trained on it for a few steps."""
    model_type = request.param
    tokenizer = family_tokenizer(model_type, texts(sample_pairs))
    teacher = tiny_family(model_type, tokenizer)
    bias = getattr(teacher, "final_logits_bias", None)
    if bias is not None:
        # CTranslate2 never ends an output at its first step; a random tiny model's greedy choice there can be the
        # end token. Steer it off that (a trained model's first choice is a word), as tests/test_serving.py does.
        bias[0, teacher.config.eos_token_id] = -5.0
    root = tmp_path_factory.mktemp(model_type)
    teacher_dir = save_teacher(teacher, tokenizer, root / "teacher")
    train, val = sample_pairs
    # every loss on (hidden states and maps are off by default): each family's are read
    config = TrainConfig(
        steps=3, batch_size=8, warmup_steps=1, eval_every=0, save_every=0, eval_pairs=16, w_hidden=1.0, w_attn=1.0
    )
    trainer = ReplacingTrainer.start_or_resume(
        load_seq2seq(teacher_dir, eager=True),
        teacher_dir,
        root / "modules",
        config,
        train.tokenize(tokenizer, 32, 32),
        val.take(16).tokenize(tokenizer, 32, 32),
        resume=False,
    )
    initial = {k: v.clone() for k, v in trainer.model.blocks.state_dict().items()}
    steps = []
    state = trainer.fit(root / "modules", on_step=steps.append)
    changed = [k for k, v in trainer.model.blocks.state_dict().items() if not torch.equal(v, initial[k])]
    return {
        "model_type": model_type,
        "tokenizer": tokenizer,
        "teacher_dir": teacher_dir,
        "modules_dir": root / "modules",
        "root": root,
        "state": state,
        "steps": steps,
        "changed": changed,
    }


def _batch(tokenizer, sample_pairs, n: int = 4) -> dict[str, torch.Tensor]:
    _, val = sample_pairs
    enc = tokenizer(val.sources[:n], return_tensors="pt", padding=True)
    labels = tokenizer(val.targets[:n], return_tensors="pt", padding=True)["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def test_modules_train_and_the_export_reloads_with_transformers_alone_to_the_same_logits(trained, sample_pairs):
    state, steps = trained["state"], trained["steps"]
    assert state.step == 3 and [r.step for r in steps] == [1, 2, 3]
    assert all(math.isfinite(r.loss) and set(r.parts) == {"ce", "hidden", "attn", "logit"} for r in steps)
    assert all(any(r.parts[k] > 0 for r in steps) for k in ("hidden", "attn", "logit"))  # maps read (eager)
    assert all(math.isfinite(v) for v in state.history[-1].values())  # held-out loss of each probe at the end
    assert trained["changed"], "no module weight moved in training"
    modular = ModularModel.from_pretrained(trained["modules_dir"])
    assert modular.config.model_type == trained["model_type"]

    in_memory = modular.assemble(ASSEMBLY)
    batch = _batch(trained["tokenizer"], sample_pairs)
    blocks = {s: modular.stack_blocks(ASSEMBLY, s) for s in STACKS}
    with torch.no_grad():
        with modular.adapter.swapped_layers(modular.teacher, blocks):
            hybrid = modular.teacher(**batch).logits
        expected = in_memory(**batch).logits
    assert (hybrid - expected).abs().max().item() < 1e-5
    assert [len(modular.adapter.layers(in_memory, s)) for s in STACKS] == [3, 3]

    out = trained["root"] / "export"
    info = export_assembly(modular, ASSEMBLY, out)
    (trained["root"] / "batch.json").write_text(json.dumps({k: v.tolist() for k, v in batch.items()}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOGITS, str(out), str(trained["root"] / "batch.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=trained["root"],
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exported = json.loads(done.stdout)
    assert (torch.tensor(exported["logits"]) - expected).abs().max().item() < 1e-5
    assert exported["params"] == info["parameters"] == modular.cost_model().params(ASSEMBLY)


def test_an_export_evaluates(trained):
    out = trained["root"] / "export-evaluated"
    export_assembly(ModularModel.from_pretrained(trained["modules_dir"]), ASSEMBLY, out)
    result = evaluate(default_data_spec(), model=out, limit=4, batch_size=4, max_new_tokens=4)
    assert result.scores.n == 4 and math.isfinite(result.scores.loss) and result.scores.bleu >= 0


def _transformers_greedy(model, tokenizer, sources) -> list[list[int]]:
    """transformers' greedy outputs without the start token, stopped at the end token, pads dropped."""
    enc = tokenizer(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, **lazy_cache(model))
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    rows = []
    for row in out[:, 1:].tolist():
        row = row[: row.index(eos)] if eos in row else row
        rows.append([t for t in row if t != pad])
    return rows


def test_ctranslate2_greedy_output_equals_transformers_or_the_family_is_refused(trained, sample_pairs):
    modular = ModularModel.from_pretrained(trained["modules_dir"])
    out, target = trained["root"] / "ct2", Target.parse("ctranslate2:float32")
    if trained["model_type"] not in CTRANSLATE2:
        with pytest.raises(CheckpointError, match="CTranslate2 cannot convert it"):
            export_assembly(modular, ASSEMBLY, out, target=target)
        assert not out.exists()
        return
    export_assembly(modular, ASSEMBLY, out, target=target)
    _, val = sample_pairs
    sources = val.sources[:20]
    generator = CTranslate2Generator(out, target)
    ours = generator.generate_ids(generator.source_tokens(sources), max_new_tokens=NEW_TOKENS)
    expected = _transformers_greedy(modular.assemble(ASSEMBLY), trained["tokenizer"], sources)
    assert ours == expected
    assert len({tuple(row) for row in expected}) > 1 and any(len(row) > 1 for row in expected)  # a real comparison


def test_profile_measures_every_block(trained):
    modular = ModularModel.from_pretrained(trained["modules_dir"])
    config = ProfileConfig(
        batch_sizes=(1,),
        src_lens=(6,),
        gen_lens=(2,),
        warmup=0,
        repeats=1,
        generate_repeats=1,
        passes=1,
        memory=False,
        threads=1,
    )
    table = profile_modules(modular, config).table
    assert {"enc_forward", "dec_step", "dec_first_extra", "fixed_generate"} <= set(table["kind"])
    assert {b.key for b in all_blocks(modular)} <= set(table["block"])
    assert table["param_bytes"].dropna().gt(0).all()


def test_a_distilled_baseline_student_trains(trained, sample_pairs):
    teacher = load_seq2seq(trained["teacher_dir"], eager=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    train, val = sample_pairs
    tokenizer = trained["tokenizer"]
    config = BaselineConfig(method="kd", shape="2-2", steps=2, batch_size=8, warmup_steps=1, eval_every=0)
    trainer = StudentTrainer(
        teacher, tokenizer, config, train.tokenize(tokenizer, 32, 32), val.take(8).tokenize(tokenizer, 32, 32)
    )
    adapter = adapter_for(teacher.config)
    assert trainer.layer_map == {"encoder": [0, 3], "decoder": [0, 3]}
    assert [len(adapter.layers(trainer.student, s)) for s in STACKS] == [2, 2]
    result = trainer.step(next(trainer.train.stream(8)))
    assert set(result.parts) == {"ce", "logit", "hidden"} and all(math.isfinite(v) for v in result.parts.values())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert math.isfinite(trainer.evaluate()["loss"])


def test_the_planners_proxy_scores_an_assembly_as_its_model_does(trained, sample_pairs):
    modular = ModularModel.from_pretrained(trained["modules_dir"])
    _, val = sample_pairs
    batches = val.take(8).tokenize(trained["tokenizer"], 32, 32).batches(4, shuffle=False)
    assemblies = [ASSEMBLY, Assembly.parse("enc=2,2 dec=2,1,1"), Assembly.parse("enc=1,1,1,1 dec=2,2")]
    scores = ProxyScorer(modular, batches).score(assemblies)
    for assembly, got in zip(assemblies, scores, strict=True):
        assert got == pytest.approx(teacher_forced_loss(modular.assemble(assembly), batches), abs=2e-6), assembly
