"""Every artifact saves and loads through its own class, and a round trip gives back what was saved."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from modformer.checkpoints import load_seq2seq
from modformer.errors import CheckpointError
from modformer.modular.assembly import Assembly
from modformer.modular.export import Export, export_assembly
from modformer.modular.model import ModularModel
from modformer.planner.artifact import CHOSEN_JSON, PARETO_PNG, PLAN_FILES, SCORED_CSV, STUDY_SUFFIX, Plan, plan_storage


def small_plan() -> Plan:
    frontier = pd.DataFrame(
        {
            "assembly": ["enc=2,2 dec=2,2", "enc=1,1,1,1 dec=1,1,1,1"],
            "source": ["search", "rule"],
            "rule": ["", "size-first"],
            "size_ratio": [1.8, 1.0],
            "speed_ratio": [1.7, 1.0],
            "measured_speed_ratio": [1.6, 1.0],
            "predicted_latency_ms": [5.0, 9.0],
            "measured_latency_ms": [5.5, 9.5],
            "memory_mb": [3.0, 5.0],
            "proxy_loss": [2.5, 2.0],
            "bleu": [20.0, 25.0],
            "validated": [True, True],
            "within_budget": [True, True],
            "on_proxy_frontier": [True, False],
            "on_validated_frontier": [True, True],
        }
    )
    rules = pd.DataFrame(
        {
            "strategy": ["size-first"],
            "assembly": ["enc=1,1,1,1 dec=1,1,1,1"],
            "latency_ms": [9.0],
            "proxy_loss": [2.0],
            "bleu": [25.0],
        }
    )
    scored = frontier[["assembly", "proxy_loss", "predicted_latency_ms", "memory_mb"]].rename(
        columns={"predicted_latency_ms": "latency_ms"}
    )
    keys = ["assembly", "bleu", "measured_latency_ms", "predicted_latency_ms", "memory_mb", "size_ratio", "speed_ratio"]
    chosen = frontier.iloc[1][keys].to_dict()
    summary = {
        "metric": "bleu",
        "search": {"method": "exhaustive", "scored": 2, "space_size": 2, "scored_fraction": 1.0, "seconds": 0.1},
        "validated": 2,
        "validation_seconds": 1.0,
        "proxy_vs_validated_spearman": None,
        "budget": {"latency_ms": 10.0, "memory_mb": None, "params_m": None},
        "objectives": ["quality", "latency"],
        "settings": {"modules": "/somewhere/modules"},
    }
    return Plan(summary=summary, chosen=chosen, frontier=frontier, rules=rules, scored=scored)


def test_a_plan_round_trips(tmp_path):
    plan = small_plan()
    folder = plan.save(tmp_path / "plan")
    assert Plan.is_complete(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(PLAN_FILES)
    again = Plan.load(folder)
    assert again.summary == plan.summary and again.chosen == plan.chosen
    pd.testing.assert_frame_equal(again.frontier, plan.frontier, check_dtype=False)
    pd.testing.assert_frame_equal(again.rules, plan.rules, check_dtype=False)
    pd.testing.assert_frame_equal(again.scored, plan.scored, check_dtype=False)
    assert again.modules == "/somewhere/modules" and again.metric == "bleu" and again.budget_latency_ms == 10.0
    assert (folder / PARETO_PNG).read_bytes()[:4] == b"\x89PNG"


def test_a_plan_is_replaced_only_when_asked_and_a_broken_one_is_refused(tmp_path):
    folder = small_plan().save(tmp_path / "plan")
    with pytest.raises(CheckpointError, match="already exists"):
        small_plan().save(folder)
    small_plan().save(folder, overwrite=True)
    (folder / CHOSEN_JSON).write_text("{}")
    with pytest.raises(CheckpointError, match="names no assembly"):
        Plan.load(folder)
    (folder / SCORED_CSV).unlink()
    assert not Plan.is_complete(folder)
    with pytest.raises(CheckpointError, match="not found"):
        Plan.load(tmp_path / "nowhere")


def test_the_default_study_is_deleted_only_for_a_fresh_default_plan(tmp_path):
    journal = Plan.default_storage(tmp_path / "plan")
    assert journal == tmp_path / ("plan" + STUDY_SUFFIX)
    journal.write_text("x")
    assert plan_storage(tmp_path / "plan", None, None, fresh=False) == str(journal) and journal.exists()
    assert plan_storage(tmp_path / "plan", None, "named", fresh=True) == str(journal) and journal.exists()
    assert plan_storage(tmp_path / "plan", "sqlite:///x.db", None, fresh=True) == "sqlite:///x.db"
    assert plan_storage(tmp_path / "plan", None, None, fresh=True) == str(journal) and not journal.exists()


def test_an_export_round_trips(tmp_path, t5_teacher_dir):
    model = ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir)
    assembly = Assembly.parse("enc=2,2 dec=2,1,1")
    info = export_assembly(model, assembly, tmp_path / "export", extra={"note": "x"})
    loaded = Export.load(tmp_path / "export")
    assert loaded.info == info and loaded.info["note"] == "x"
    assert loaded.assembly == assembly
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        expected = model.assemble(assembly)(input_ids=ids, decoder_input_ids=ids).logits
        got = loaded.model(input_ids=ids, decoder_input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    again = loaded.save(tmp_path / "copy")
    assert Export.load(again).info == info


def test_modules_round_trip_under_the_convention_names(tmp_path, t5_teacher_dir):
    model = ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.01)
    model.save(tmp_path / "mods")
    again = ModularModel.load(tmp_path / "mods")
    assert again.config == model.config
    for (name, a), (_, b) in zip(model.blocks.state_dict().items(), again.blocks.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
