"""Serving targets: an assembly exported for CTranslate2 serves with it and greedy-decodes exactly as transformers does;
`evaluate` scores such a folder; a missing engine is a one-line error naming the extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from modformer.checkpoints import load_seq2seq
from modformer.cli import app
from modformer.data import load_split
from modformer.errors import ConfigError
from modformer.evaluation import lazy_cache
from modformer.modular.assembly import Assembly
from modformer.modular.export import EXPORT_INFO_NAME, export_assembly, export_target, read_export_info
from modformer.modular.model import ModularModel
from modformer.serving.ctranslate2_engine import CTranslate2Generator, is_ctranslate2_folder
from modformer.serving.targets import Target, parse_targets, supported_targets

runner = CliRunner()
NEW_TOKENS = 12


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def perturbed_modules(teacher_dir) -> ModularModel:
    """Modules that differ from the layers they were copied from, as trained ones do."""
    model = ModularModel.from_teacher(load_seq2seq(teacher_dir), teacher_dir)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        bias = getattr(model.teacher, "final_logits_bias", None)
        if bias is not None:
            # CTranslate2 never ends an output at its first step; a random tiny BART's greedy choice there is the
            # end token. Steer it off that (a trained model's first choice is a word), in the teacher both share.
            bias[0, model.teacher.config.eos_token_id] = -5.0
    return model


def hf_greedy_ids(model, tokenizer, sources) -> list[list[int]]:
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


def test_targets_parse_and_say_what_is_supported():
    assert str(Target.parse("ctranslate2:int8")) == "ctranslate2:int8"
    assert Target.parse("torch") == Target("torch", "fp32")
    assert parse_targets("torch:fp32, ctranslate2:int8,torch:fp32") == (
        Target("torch", "fp32"),
        Target("ctranslate2", "int8"),
    )
    for bad, phrase in (("onnx:fp32", "unknown engine"), ("torch:int4", "no compute type"), (":", "engine:compute")):
        with pytest.raises(ConfigError, match=phrase):
            Target.parse(bad)
    status = supported_targets("cpu")
    assert status["torch:fp32"] == "ok" and status["ctranslate2:float32"] == "ok" and status["ctranslate2:int8"] == "ok"
    assert status["ctranslate2:float16"] != "ok"  # no half-precision kernels on a CPU


@pytest.mark.parametrize("spec", ["enc=2,2 dec=2,1,1", "enc=1,1,2 dec=2,2"])
def test_a_ctranslate2_export_greedy_decodes_as_transformers_does(tmp_path, teacher_dir, tokenizer, spec):
    model = perturbed_modules(teacher_dir)
    assembly = Assembly.parse(spec)
    info = export_assembly(model, assembly, tmp_path / "ct2", target=Target.parse("ctranslate2:float32"))
    assert is_ctranslate2_folder(tmp_path / "ct2") and info["target"] == "ctranslate2:float32"
    assert read_export_info(tmp_path / "ct2")["assembly_spec"] == assembly.format()
    assert export_target(tmp_path / "ct2") == Target.parse("ctranslate2:float32")

    sources = load_split_sources(20)
    generator = CTranslate2Generator(tmp_path / "ct2", Target.parse("ctranslate2:float32"))
    ours = generator.generate_ids(generator.source_tokens(sources), max_new_tokens=NEW_TOKENS)
    expected = hf_greedy_ids(model.assemble(assembly), tokenizer, sources)
    assert sum(a == b for a, b in zip(ours, expected, strict=True)) == len(sources)
    assert any(len(row) > 1 for row in expected)  # a real comparison, not of empty outputs


def test_an_int8_export_is_smaller_and_generates(tmp_path, t5_teacher_dir):
    model = perturbed_modules(t5_teacher_dir)
    assembly = Assembly.parse("enc=2,2 dec=2,2")
    for compute in ("float32", "int8"):
        export_assembly(model, assembly, tmp_path / compute, target=Target.parse(f"ctranslate2:{compute}"))
    sizes = {c: (tmp_path / c / "model.bin").stat().st_size for c in ("float32", "int8")}
    assert sizes["int8"] < 0.6 * sizes["float32"]
    outputs = CTranslate2Generator(tmp_path / "int8", Target.parse("ctranslate2:int8")).generate(load_split_sources(4))
    assert len(outputs) == 4 and all(isinstance(o, str) for o in outputs)


def test_export_and_evaluate_a_ctranslate2_target_through_the_cli(tmp_path, t5_teacher_dir, data_dir):
    modules = tmp_path / "mods"
    perturbed_modules(t5_teacher_dir).save(modules)
    out = tmp_path / "served"
    done = cli(
        "export", "--modules", modules, "--assembly", "enc=2,2 dec=2,2", "--target", "ctranslate2:int8", "--out", out
    )
    assert done.exit_code == 0, done.stderr
    assert "ctranslate2:int8" in done.stdout and json.loads((out / EXPORT_INFO_NAME).read_text())["target"] == (
        "ctranslate2:int8"
    )
    scores = tmp_path / "scores.json"
    data = ("--data", data_dir, "--src-ext", "en", "--tgt-ext", "de", "--limit", 8)
    done = cli("evaluate", "--model", out, *data, "--max-new-tokens", 8, "--json", scores)
    assert done.exit_code == 0, done.stderr
    record = json.loads(scores.read_text())
    assert record["n"] == 8 and record["bleu"] >= 0 and record["loss"] is None and "ctranslate2:int8" in record["model"]


def test_a_missing_engine_is_one_line_naming_the_extra(tmp_path, t5_teacher_dir, monkeypatch):
    modules = tmp_path / "mods"
    perturbed_modules(t5_teacher_dir).save(modules)
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    assert supported_targets("cpu")["ctranslate2:int8"] == "ctranslate2 is not installed"
    out = tmp_path / "served"
    done = cli(
        "export", "--modules", modules, "--assembly", "enc=2,2 dec=2,2", "--target", "ctranslate2:int8", "--out", out
    )
    assert done.exit_code == 1
    line = done.stderr.strip()
    assert "\n" not in line and "modformer[ctranslate2]" in line and "Traceback" not in done.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".served")]


def load_split_sources(n: int) -> list[str]:
    from modformer.data import default_data_spec

    return load_split(default_data_spec(), "val", limit=n).sources


def test_a_plan_over_two_targets_names_both_on_its_frontier(tmp_path, tokenizer, data_dir):
    from conftest import save_teacher, tiny_t5
    from test_report import read_report

    from modformer.planner.artifact import REPORT_HTML, Plan
    from modformer.planner.report import target_name
    from modformer.profiling.engines import profile_engine_targets
    from modformer.profiling.measure import ProfileConfig, profile_modules
    from modformer.profiling.profile import LatencyProfile

    teacher_dir = save_teacher(tiny_t5(layers=4), tokenizer, tmp_path / "teacher")
    modular = perturbed_modules(teacher_dir)
    modular.save(tmp_path / "mods")
    config = ProfileConfig(
        batch_sizes=(1,), src_lens=(8,), gen_lens=(4,), warmup=1, repeats=2, generate_repeats=1, memory=False, threads=1
    )
    profile = profile_modules(modular, config)
    steps = []
    profile.engines = profile_engine_targets(
        modular, config, [Target.parse("ctranslate2:int8")], on_progress=lambda i, n, what: steps.append((i, n, what))
    )
    # every depth of the 3 x 3 grid (one, two and four layers of each stack), timed in one round-robin step
    assert sorted(zip(profile.engines["encoder_layers"], profile.engines["decoder_layers"], strict=True)) == [
        (e, d) for e in (1, 2, 4) for d in (1, 2, 4)
    ]
    assert (profile.engines["latency_ms"] > 0).all()
    assert [what for _, _, what in steps if "round-robin" in what] == [
        "ctranslate2:int8: 9 depths round-robin, 1 workloads in 4 pass(es)"  # twice the block profile's passes
    ]
    assert steps[-1][0] == steps[-1][1] == len(steps) - 1
    profile.save(tmp_path / "profile.json")
    assert LatencyProfile.load(tmp_path / "profile.json").targets == ["torch:fp32", "ctranslate2:int8"]

    out = tmp_path / "plan"
    args = ["plan", "--modules", tmp_path / "mods", "--profile", tmp_path / "profile.json", "--out", out]
    data = ["--data", data_dir, "--src-ext", "en", "--tgt-ext", "de", "--proxy-samples", 8]
    validation = ["--validate", 6, "--validate-samples", 8, "--max-new-tokens", 4, "--objectives", "quality,latency"]
    done = cli(*args, *data, *validation, "--targets", "torch:fp32,ctranslate2:int8")
    assert done.exit_code == 0, done.stderr + done.stdout
    plan = Plan.load(out)
    validated = plan.frontier[plan.frontier["validated"]]
    assert set(validated["target"]) == {"torch:fp32", "ctranslate2:int8"}
    assert plan.chosen["target"] in {"torch:fp32", "ctranslate2:int8"}
    engine = validated[validated["target"] == "ctranslate2:int8"]
    assert (engine["measured_latency_ms"] > 0).all() and engine["bleu"].notna().all()
    assert set(plan.scored["target"]) == {"torch:fp32", "ctranslate2:int8"}
    page = read_report(out / REPORT_HTML)  # the answer names the chosen target, in words too
    assert f"served as {plan.chosen['target']}" in page.section_text["answer"]
    assert "not refreshed" in page.section_text["budget"] and "profile_refresh" not in plan.summary
    assert page.h1.endswith(f" in {target_name(plan.chosen['target'])}")
    assert set(page.table("served as")["served as"]) == {"torch:fp32", "ctranslate2:int8"}

    # A budget torch cannot meet (a tiny model's fixed costs keep every torch assembly within 2x of its teacher) but
    # the engine can: the search keeps what is too slow in torch, and the plan ships an engine point.
    # (over a refreshed profile: factors of 1.0 leave every figure as it was; the plan says it was refreshed)
    profile.meta["refresh"] = {"date": "now", "factors": {t: {"1": 1.0} for t in profile.targets}}
    profile.save(tmp_path / "profile.json")
    fast = cli(*args[:-1], tmp_path / "fast", *data, *validation, "--budget", "speedup>=2")
    assert fast.exit_code == 0, fast.stderr + fast.stdout
    fast_plan = Plan.load(tmp_path / "fast")
    assert fast_plan.summary["profile_refresh"]["factors"]["ctranslate2:int8"] == {"1": 1.0}
    words = read_report(tmp_path / "fast" / REPORT_HTML).section_text["budget"]
    assert "refresh of now:" in words and "torch:fp32 x 1.000" in words and "ctranslate2:int8 x 1.000" in words
    assert fast_plan.chosen["target"] == "ctranslate2:int8"
    rows = fast_plan.frontier[fast_plan.frontier["within_budget"]]
    assert set(rows["target"]) == {"ctranslate2:int8"} and (rows["speed_ratio"] >= 2).all()
    none = cli(*args[:-1], tmp_path / "none", *data, *validation, "--budget", "speedup>=1000")
    assert (
        none.exit_code == 2
        and "in any serving target; nearest:" in none.stderr
        and "in ctranslate2:int8" in none.stderr
    )

    refused = cli(*args[:-1], tmp_path / "other", *data, *validation, "--targets", "torch:fp32,ctranslate2:float32")
    assert refused.exit_code == 1 and "not ctranslate2:float32" in refused.stderr


def test_a_bf16_export_stores_bfloat16_weights_and_records_its_target(tmp_path, t5_teacher_dir):
    from safetensors.torch import load_file

    model = perturbed_modules(t5_teacher_dir)
    info = export_assembly(
        model, Assembly.parse("enc=2,2 dec=2,2"), tmp_path / "bf16", target=Target.parse("torch:bf16")
    )
    assert info["target"] == "torch:bf16" and export_target(tmp_path / "bf16") == Target.parse("torch:bf16")
    weights = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert not is_ctranslate2_folder(tmp_path / "bf16")


def test_the_depth_fit_predicts_a_decoder_cost_growing_with_depth_exactly_and_names_unmeasured_workloads():
    import pandas as pd

    from modformer.profiling.engines import EngineCosts, depth_grid
    from modformer.profiling.profile import Workload

    assert depth_grid(12, 12) == [(e, d) for e in (1, 6, 12) for d in (1, 6, 12)]
    assert depth_grid(2, 3) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert depth_grid(1, 1) == [(1, 1)]
    rows = [
        {"target": "ctranslate2:int8", "threads": 1, "batch": 1, "src_len": 32, "gen_len": 32}
        | {"encoder_layers": e, "decoder_layers": d, "latency_ms": 2 + 0.5 * e + 1.5 * d + 0.05 * d * d + 0.02 * e * d}
        | {"weight_bytes": 1e6 + 2e5 * (e + d), "peak_bytes": 2**20 * (20 + e + 2 * d)}
        for e, d in depth_grid(12, 12)
    ]
    costs = EngineCosts(pd.DataFrame(rows))
    w = Workload(1, 32, 32)
    latency, memory = costs.predict("ctranslate2:int8", [3, 6], [2, 4], w)
    assert latency.tolist() == pytest.approx([2 + 1.5 + 3 + 0.2 + 0.12, 2 + 3 + 6 + 0.8 + 0.48])
    assert memory.tolist() == pytest.approx([20 + 3 + 4, 20 + 6 + 8])  # peak memory, in MB
    with pytest.raises(ConfigError, match=r"not at batch 8"):
        costs.predict("ctranslate2:int8", 3, 2, Workload(8, 32, 32))
    with pytest.raises(ConfigError, match="no measurements for the target ctranslate2:float32"):
        costs.predict("ctranslate2:float32", 3, 2, w)


def test_engine_peak_memory_is_measured_in_a_fresh_process(tmp_path, t5_teacher_dir):
    from modformer.profiling.engines import engine_peak_memory
    from modformer.profiling.profile import Workload

    model = perturbed_modules(t5_teacher_dir)
    target = Target.parse("ctranslate2:float32")
    export_assembly(model, Assembly.parse("enc=2,2 dec=2,2"), tmp_path / "small", target=target)
    export_assembly(model, Assembly.parse("enc=1,1,1,1 dec=1,1,1,1"), tmp_path / "deep", target=target)
    w = Workload(2, 8, 4)
    small, deep = (engine_peak_memory(tmp_path / name, target, w) for name in ("small", "deep"))
    # A tiny model's weights differ by a few hundred KB, within the runtime's own noise: only sanity here
    # (benchmarks/targets.py checks the prediction against the 12+12 teacher's exports).
    assert 0 < small < 2**30 and 0 < deep < 2**30


def test_engine_models_are_timed_round_robin_in_a_process_without_torch(tmp_path, t5_teacher_dir, monkeypatch):
    """CTranslate2 beside torch's OpenMP runtime ran its two-thread calls up to 10x slower: its timings come from a
    process of its own, which never loads torch (the child reports it, and the parent refuses an answer that did)."""
    from modformer.profiling import engine_process
    from modformer.profiling.engines import time_engine_models
    from modformer.profiling.profile import Workload

    model = perturbed_modules(t5_teacher_dir)
    target = Target.parse("ctranslate2:int8")
    folders = [tmp_path / "small", tmp_path / "deep"]
    export_assembly(model, Assembly.parse("enc=2,2 dec=2,2"), folders[0], target=target)
    export_assembly(model, Assembly.parse("enc=1,1,1,1 dec=1,1,1,1"), folders[1], target=target)
    calls = []
    real_run = engine_process._run
    monkeypatch.setattr(engine_process, "_run", lambda spec, what: calls.append(spec) or real_run(spec, what))
    workloads = [Workload(2, 8, 4), Workload(1, 6, 3)]
    samples = time_engine_models(folders, target, workloads, threads=2, warmup=1, repeats=4, passes=2)
    # per workload, per model: the 4 rounds, 2 from each pass through the workloads
    assert [[len(s) for s in per_model] for per_model in samples] == [[4, 4], [4, 4]]
    assert all(ms > 0 for per_model in samples for s in per_model for ms in s)
    (spec,) = calls  # both models and both workloads in one process
    assert spec["threads"] == 2 and spec["passes"] == 2
    assert [(len(tokens), len(tokens[0]), g) for tokens, g in spec["workloads"]] == [(2, 8, 4), (1, 6, 3)]

    broken = {**spec, "folders": [str(tmp_path / "missing")]}
    with pytest.raises(ConfigError, match="failed in its own process"):
        real_run(broken, "timing")


def test_refresh_retimes_the_teacher_in_every_target_and_scales_every_prediction(tmp_path, tokenizer):
    """`modformer profile refresh`: the teacher timed now in torch and in the engine; from then on every latency the
    profile predicts in a target is the table's times that target's factor (memory unchanged); a second refresh is
    taken against the table, not compounded; a corrupt factor is refused on load."""
    from conftest import save_teacher, tiny_t5

    from modformer.profiling.cost_model import predict
    from modformer.profiling.engines import EngineCosts, profile_engine_targets
    from modformer.profiling.measure import ProfileConfig, profile_modules
    from modformer.profiling.profile import LatencyProfile, Workload, refresh_factor

    teacher_dir = save_teacher(tiny_t5(layers=4), tokenizer, tmp_path / "teacher")
    modular = perturbed_modules(teacher_dir)
    modular.save(tmp_path / "mods")
    grid = {"batch_sizes": (1, 2), "src_lens": (8,), "gen_lens": (4,)}
    config = ProfileConfig(**grid, warmup=1, repeats=2, generate_repeats=1, memory=False, threads=1)
    profile = profile_modules(modular, config)
    profile.engines = profile_engine_targets(modular, config, [Target.parse("ctranslate2:int8")])
    profile.save(tmp_path / "profile.json")

    done = cli("profile", "refresh", tmp_path / "profile.json", "--modules", tmp_path / "mods", "--out",
               tmp_path / "now.json", "--repeats", 2)  # fmt: skip
    assert done.exit_code == 0, done.stderr + done.stdout
    assert "ctranslate2:int8 batch 2:" in done.stdout and "predictions x" in done.stdout
    stale, fresh = LatencyProfile.load(tmp_path / "profile.json"), LatencyProfile.load(tmp_path / "now.json")
    assert "refresh" not in stale.meta  # --out: the profile given is left as it was
    record = fresh.meta["refresh"]
    assert set(record["factors"]) == {"torch:fp32", "ctranslate2:int8"}
    assert all(set(f) == {"1", "2"} for f in record["factors"].values())
    teacher = Assembly.teacher(4, 4)
    for row in record["rows"]:  # each factor is the teacher's time now over the table's prediction
        w = Workload(row["batch"], row["src_len"], row["gen_len"])
        if row["target"] == "torch:fp32":
            table = predict(stale, teacher, w).latency_ms
        else:
            table = float(EngineCosts.of(stale).predict(row["target"], 4, 4, w)[0])
        assert row["predicted_ms"] == pytest.approx(table)
        assert record["factors"][row["target"]][str(row["batch"])] == pytest.approx(row["measured_ms"] / table)

    a, w = Assembly(encoder=(2, 1, 1), decoder=(2, 2)), Workload(2, 8, 4)
    factor = record["factors"]["torch:fp32"]["2"]
    before, after = predict(stale, a, w), predict(fresh, a, w)
    assert after.latency_ms == pytest.approx(factor * before.latency_ms)
    assert after.memory_bytes == before.memory_bytes
    ms, mb = EngineCosts.of(fresh).predict("ctranslate2:int8", 3, 2, w)
    ms0, mb0 = EngineCosts.of(stale).predict("ctranslate2:int8", 3, 2, w)
    assert float(ms) == pytest.approx(record["factors"]["ctranslate2:int8"]["2"] * float(ms0)) and mb == mb0

    again = cli("profile", "refresh", tmp_path / "now.json", "--modules", tmp_path / "mods", "--repeats", 2)
    assert again.exit_code == 0, again.stderr + again.stdout  # in place, against the table
    second = LatencyProfile.load(tmp_path / "now.json").meta["refresh"]
    assert [r["predicted_ms"] for r in second["rows"]] == pytest.approx([r["predicted_ms"] for r in record["rows"]])
    shown = cli("profile", "show", tmp_path / "now.json")
    assert shown.exit_code == 0 and "refreshed " in shown.stdout

    # the nearest measured batch size, on a log scale; none recorded: 1.0
    assert refresh_factor({"factors": {"t": {"1": 0.9, "8": 1.2}}}, "t", 2) == 0.9
    assert refresh_factor({"factors": {"t": {"1": 0.9, "8": 1.2}}}, "t", 4) == 1.2
    assert refresh_factor(None, "t", 4) == refresh_factor({"factors": {}}, "t", 4) == 1.0

    refused = cli("profile", "refresh", tmp_path / "profile.json", "--modules", tmp_path / "mods", "--out",
                  tmp_path / "now.json")  # fmt: skip
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1 and "--overwrite" in refused.stderr
    other = perturbed_modules(save_teacher(tiny_t5(layers=6), tokenizer, tmp_path / "deeper"))
    other.save(tmp_path / "other")
    mismatch = cli("profile", "refresh", tmp_path / "now.json", "--modules", tmp_path / "other")
    assert mismatch.exit_code == 1 and "measured on another model" in mismatch.stderr
    meta = json.loads((tmp_path / "now.json").read_text())
    meta["refresh"]["factors"]["torch:fp32"]["1"] = -1.0
    (tmp_path / "now.json").write_text(json.dumps(meta))
    corrupt = cli("profile", "show", tmp_path / "now.json")
    assert corrupt.exit_code == 1 and "refresh" in corrupt.stderr and corrupt.stderr.count("\n") == 1
