"""The profiler: timer, table schema, predictor, interpolation, save/load, validation and the `profile` CLI.

One tiny T5 (4+4 layers, d_model 32, modules of granularity 2) is profiled once on a short grid and shared; the
interpolation tests use a hand-made table whose costs are known exactly.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modformer.checkpoints import load_seq2seq
from modformer.cli import app
from modformer.errors import AssemblyError, CheckpointError, ConfigError
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel
from modformer.profiling.cost_model import (
    Calls,
    axis_weights,
    fit_calibration,
    predict,
    speed_ratio_predictor,
    workload_costs,
)
from modformer.profiling.hardware import compare, fingerprint
from modformer.profiling.measure import ProfileConfig, all_blocks, param_bytes, profile_modules
from modformer.profiling.profile import (
    CALIBRATION,
    COLUMNS,
    KINDS,
    LatencyProfile,
    ProfileMismatchWarning,
    Workload,
    default_workload,
    load_profile,
    new_meta,
    resolve_workload,
)
from modformer.profiling.summary import block_summary, fixed_summary
from modformer.profiling.timer import Case, Timer, Timing
from modformer.profiling.validate import choose_assemblies, depth_ratio, paired_ratio, validate

GRID = {"batch_sizes": (1, 2), "src_lens": (6, 10), "gen_lens": (4,)}


@pytest.fixture(scope="module")
def modular(t5_teacher_dir) -> ModularModel:
    return ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir, [2])


@pytest.fixture(scope="module")
def profile(modular) -> LatencyProfile:
    config = ProfileConfig(**GRID, warmup=1, repeats=3, generate_repeats=2, memory=False, threads=1)
    return profile_modules(modular, config)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --- timer --------------------------------------------------------------------------------------------------------
def test_timing_statistics():
    t = Timing.from_samples([float(x) for x in range(1, 11)])  # 1 .. 10 ms
    assert (t.median_ms, t.repeats) == (5.5, 10)
    assert t.p10_ms == pytest.approx(1.9) and t.p90_ms == pytest.approx(9.1)
    assert t.trimmed_mean_ms == pytest.approx(5.5)  # drops 1 and 10
    assert Timing.from_samples([3.0, 1.5, 9.0]).min_ms == 1.5
    assert (t.value("min"), t.value("median")) == (1.0, 5.5)
    with pytest.raises(ConfigError, match="statistic must be one of min, median"):
        t.value("mean")
    with pytest.raises(ConfigError):
        Timing.from_samples([])


def test_timer_measures_and_interleaves():
    timer = Timer("cpu")
    t = timer.measure(lambda: time.sleep(0.002), warmup=1, repeats=3)
    assert 1.5 <= t.median_ms < 50
    calls = []
    cases = [
        Case(fn=lambda: calls.append("a"), setup=lambda: calls.append("setup")),
        Case(fn=lambda: calls.append("b")),
    ]
    timings = timer.interleaved(cases, warmup=1, repeats=2)
    assert [t.repeats for t in timings] == [2, 2]
    assert calls == ["setup", "a", "b"] * 3  # round-robin, set-up before its own call
    with pytest.raises(ConfigError, match="device"):
        Timer("tpu")


def test_settle_waits_for_a_quiet_window():
    timer = Timer("cpu")
    costs = iter([0.001, 0.02, 0.02, 0.001, 0.02] + [0.002] * 5)  # a noisy window, then a steady one
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(costs))

    assert timer.settle(fn, window=5, target=1.5) <= 1.5
    assert len(calls) == 10
    assert timer.settle(lambda: time.sleep(0.001), window=2, target=1.0, max_seconds=0.0) >= 1.0  # gives up
    with pytest.raises(ConfigError, match="window"):
        timer.settle(lambda: None, window=1)


def test_paired_ratio_cancels_bursts_that_hit_both():
    a = [10.0, 30.0, 10.0, 12.0, 10.0]  # round 2 slowed both; round 4 only a
    b = [10.0, 30.0, 10.0, 10.0, 10.0]
    assert paired_ratio(a, b) == 1.0
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == 2.0
    with pytest.raises(ConfigError, match="same"):
        paired_ratio([1.0], [1.0, 2.0])


# --- hardware -----------------------------------------------------------------------------------------------------
def test_fingerprint_and_compare():
    fp = fingerprint("cpu", "fp32", 1)
    assert fp["torch_threads"] == 1 and fp["dtype"] == "fp32" and fp["cpu_model"]
    assert compare(fp, dict(fp)) == []
    other = {**fp, "cpu_model": "Another CPU", "dtype": "bf16"}
    diffs = compare(fp, other)
    assert len(diffs) == 2 and diffs[0].startswith("cpu_model:") and "bf16" in diffs[1]


# --- the table ----------------------------------------------------------------------------------------------------
def test_table_schema(profile, modular):
    table = profile.table
    assert list(table.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in table.dtypes.items()} == {
        c: str(pd.Series(dtype=t).dtype) for c, t in COLUMNS.items()
    }
    blocks = all_blocks(modular)  # 4 + 2 per stack
    enc = [b for b in blocks if b.stack == "encoder"]
    dec = [b for b in blocks if b.stack == "decoder"]
    cache_lens = profile.grid["cache_lens"]
    assert cache_lens == [0, 2, 3]  # three points over the 0 .. 3 a 4-token call sees
    counts = table["kind"].value_counts().to_dict()
    points = 2 * 2
    assert counts == {
        "enc_forward": len(enc) * points,
        "dec_step": len(dec) * points * len(cache_lens),
        "dec_first_extra": len(dec) * points,
        "fixed_generate": points * 2,  # at 1 and 4 new tokens
        "calibration_generate": points * 2 * len(CALIBRATION),  # at 1 and 4 new tokens
    }
    calibration = table[table["kind"] == "calibration_generate"]
    assert sorted(set(calibration["block"])) == sorted(CALIBRATION)
    assert (calibration["latency_ms"] > 0).all()
    for b in blocks:
        row = table[table["block"] == b.key].iloc[0]
        assert row["param_bytes"] == param_bytes(modular.block(b.stack, b.start, b.size))
        assert row["position"] == ("first" if b.start == 0 else "above")
    step = table[table["kind"] == "dec_step"].iloc[0]
    cfg = modular.teacher.config
    assert step["kv_self_bytes_per_token"] == 2 * cfg.num_heads * cfg.d_kv * 4  # keys + values, fp32
    assert step["kv_cross_bytes_per_token"] == step["kv_self_bytes_per_token"]
    assert (table.loc[table["kind"] == "fixed_generate", "latency_ms"] > 0).all()
    assert profile.meta["fingerprint"]["torch_threads"] == 1
    assert profile.meta["model"]["teacher_config_fingerprint"] == modular.config.teacher_config_fingerprint


def test_bart_profiles_too(bart_teacher_dir):
    bart = ModularModel.from_teacher(load_seq2seq(bart_teacher_dir), bart_teacher_dir, [2])
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
    result = profile_modules(bart, config)
    assert set(result.table["kind"]) == {
        "enc_forward",
        "dec_step",
        "dec_first_extra",
        "fixed_generate",
        "calibration_generate",
    }
    p = predict(result, Assembly.parse("enc=2,2 dec=1,1,2"), Workload(1, 6, 2))
    assert np.isfinite(p.latency_ms) and len(p.breakdown) == 1 + 2 + 3


def test_summaries(profile):
    enc = block_summary(profile, "encoder")
    assert len(enc) == 6 and "pass B=2 S=10 (ms)" in enc.columns
    dec = block_summary(profile, "decoder")
    assert "step L=2 B=1 S=6 (ms)" in dec.columns and "first extra B=2 S=6 (ms)" in dec.columns
    fixed = fixed_summary(profile)
    assert list(fixed["gen_len"]) == [1, 4] * 4
    assert {"teacher_ms", "encoder_only_ms", "decoder_first_ms", "encoder_factor", "decoder_offset_ms"} <= set(fixed)
    first = fixed.iloc[0]
    scales = workload_costs(profile, Workload(int(first["batch"]), int(first["src_len"]), int(first["gen_len"]))).scales
    assert (first["encoder_factor"], first["decoder_factor"]) == (scales["encoder"], scales["decoder"])


# --- prediction ---------------------------------------------------------------------------------------------------
def test_predict_is_the_sum_of_the_table(profile):
    t = profile.table
    a = Assembly.parse("enc=2,1,1 dec=2,2")
    B, S, G = 2, 10, 4

    def at(kind: str, block: str, **where) -> float:
        rows = t[(t["kind"] == kind) & (t["block"] == block) & (t["batch"] == B) & (t["src_len"] == S)]
        for col, value in where.items():
            rows = rows[rows[col] == value]
        assert len(rows) == 1
        return float(rows["latency_ms"].iloc[0])

    expected = at("fixed_generate", "fixed", gen_len=G)
    expected += sum(at("enc_forward", k) for k in ("encoder_k2_s0", "encoder_k1_s2", "encoder_k1_s3"))
    for k in ("decoder_k2_s0", "decoder_k2_s2"):
        c0, c2, c3 = (at("dec_step", k, cache_len=L) for L in (0, 2, 3))
        # steps see cache lengths 0, 1, 2, 3; length 1 lies halfway between the measured 0 and 2
        expected += at("dec_first_extra", k) + c0 + (c0 + c2) / 2 + c2 + c3
    p = predict(profile, a, Workload(B, S, G))
    assert p.breakdown["block_ms"].sum() == pytest.approx(expected, rel=1e-12)  # the blocks as measured
    costs = workload_costs(profile, Workload(B, S, G))  # then one calibration curve per stack
    parts = p.breakdown.set_index("block")
    assert parts.loc["fixed", "latency_ms"] == pytest.approx(
        at("fixed_generate", "fixed", gen_len=G) + sum(costs.offsets.values())
    )
    sums = {stack: parts.loc[parts["stack"] == stack, "block_ms"].sum() for stack in ("encoder", "decoder")}
    calibrated = parts.loc["fixed", "latency_ms"] + sum(
        costs.scales[stack] * x + costs.curvatures[stack] * x**2 for stack, x in sums.items()
    )
    assert p.latency_ms == pytest.approx(calibrated, rel=1e-12)
    assert not p.extrapolated and p.reason == ""
    assert list(p.breakdown["block"]) == [
        "fixed",
        "encoder_k2_s0",
        "encoder_k1_s2",
        "encoder_k1_s3",
        "decoder_k2_s0",
        "decoder_k2_s2",
    ]
    assert p.breakdown["latency_ms"].sum() == pytest.approx(p.latency_ms)
    assert p.memory_bytes is None  # profiled without memory


def test_no_prediction_is_faster_than_the_zero_layer_call(profile, modular, monkeypatch):
    """A calibration fitted to noisy timings can make the smallest assemblies' sums negative: `predict` and the
    planner's search space floor them at the zero-layer call (an infeasibly tight budget stays infeasible)."""
    import dataclasses

    from modformer.planner.space import SearchSpace
    from modformer.profiling import cost_model

    w = Workload(2, 10, 4)
    costs = cost_model.workload_costs(profile, w)
    broken = dataclasses.replace(costs, scales={s: -50.0 for s in costs.scales})  # every block "saves" time
    monkeypatch.setattr(cost_model, "workload_costs", lambda *_: broken)
    floor = cost_model.zero_floor_ms(profile, w)
    assert floor > 0
    small = Assembly.parse("enc=2,2 dec=2,2")
    assert predict(profile, small, w).latency_ms == pytest.approx(floor)
    monkeypatch.setattr("modformer.planner.space.workload_costs", lambda *_: broken)
    space = SearchSpace.build(modular, profile, w)
    assert space.floor_latency_ms == pytest.approx(floor)
    assert space.latency_ms(*space.all_pairs()).min() == pytest.approx(floor)


def test_predict_unknown_block_is_one_line(profile):
    with pytest.raises(AssemblyError) as err:
        predict(profile, Assembly.parse("enc=4 dec=2,2"), Workload(1, 6, 4))
    assert "enc 4-module at layer 0" in one_line(err)


def test_axis_weights():
    assert axis_weights([1, 8], 1) == ([(0, 1.0), (1, 0.0)], False)
    weights, outside = axis_weights([1, 8], 4.5)
    assert weights == [(0, 0.5), (1, 0.5)] and not outside
    weights, outside = axis_weights([1, 8], 15)  # linear extrapolation beyond the last point
    assert weights == [(0, -1.0), (1, 2.0)] and outside
    assert axis_weights([32], 32) == ([(0, 1.0)], False)
    assert axis_weights([32], 40) == ([(0, 1.0)], True)


def synthetic_profile(calibration: tuple[float, float, float, float] | None = None) -> LatencyProfile:
    """A 2+2 model with modules of size 2 whose costs are linear in B, S and L, with known coefficients.

    `calibration` (a, b, extra, offset): calibration calls in which the teacher's encoder layers (all, or the first
    alone) add `offset` + a times their block sum, its decoder layers `offset` + b times theirs, and the whole teacher
    both plus `extra` ms."""
    rows = []
    base = dict.fromkeys(COLUMNS)
    blocks = [
        ("encoder", 0, 1),
        ("encoder", 1, 1),
        ("encoder", 0, 2),
        ("decoder", 0, 1),
        ("decoder", 1, 1),
        ("decoder", 0, 2),
    ]
    statics = {
        "param_bytes": 1000,
        "kv_self_bytes_per_token": 8,
        "kv_cross_bytes_per_token": 8,
        "act_bytes_per_token": 4,
        "repeats": 1,
        "p10_ms": 0.0,
        "p90_ms": 0.0,
        "base_ms": 0.0,
    }
    for stack, start, size in blocks:
        ident = {
            "stack": stack,
            "block": f"{stack}_k{size}_s{start}",
            "start": start,
            "size": size,
            "position": "first" if start == 0 else "above",
            **statics,
        }
        for B in (1, 8):
            for S in (16, 32):
                if stack == "encoder":
                    rows.append(
                        {
                            **base,
                            **ident,
                            "kind": "enc_forward",
                            "batch": B,
                            "src_len": S,
                            "latency_ms": 1.0 + 0.5 * B + 0.01 * S,
                        }
                    )
                    continue
                rows.append(
                    {**base, **ident, "kind": "dec_first_extra", "batch": B, "src_len": S, "latency_ms": 0.1 * B}
                )
                for L in (0, 8, 15):
                    rows.append(
                        {
                            **base,
                            **ident,
                            "kind": "dec_step",
                            "batch": B,
                            "src_len": S,
                            "cache_len": L,
                            "latency_ms": 0.2 + 0.1 * B + 0.001 * S + 0.01 * L,
                        }
                    )
            for S in (16, 32):
                for G in (1, 16):
                    fixed = 2.0 + G * (0.5 + 0.1 * B)
                    rows.append(
                        {
                            **base,
                            "kind": "fixed_generate",
                            "stack": "model",
                            "block": "fixed",
                            "batch": B,
                            "src_len": S,
                            "gen_len": G,
                            "latency_ms": fixed,
                        }
                    )
                    if calibration:
                        a, b, extra, o = calibration
                        enc, dec = teacher_sums(B, S, G)
                        enc1, dec1 = teacher_sums(B, S, G, layers=1)
                        for name, ms in (
                            ("encoder_only", o + a * enc),
                            ("encoder_first", o + a * enc1),
                            ("decoder_only", o + b * dec),
                            ("decoder_first", o + b * dec1),
                            ("teacher", 2 * o + a * enc + b * dec + extra),
                        ):
                            rows.append(
                                {
                                    **base,
                                    "kind": "calibration_generate",
                                    "stack": "model",
                                    "block": name,
                                    "batch": B,
                                    "src_len": S,
                                    "gen_len": G,
                                    "latency_ms": fixed + ms,
                                }
                            )
    meta = new_meta(fingerprint=fingerprint("cpu", "fp32", 1), grid={}, model={}, settings={})
    return LatencyProfile(pd.DataFrame(rows), meta)


def teacher_sums(B: int, S: int, G: int, layers: int = 2) -> tuple[float, float]:
    """What the synthetic profile's first `layers` teacher layers of each stack cost in one call, by hand."""
    enc = layers * (1.0 + 0.5 * B + 0.01 * S)
    dec = layers * (0.1 * B + sum(0.2 + 0.1 * B + 0.001 * S + 0.01 * t for t in range(G)))
    return enc, dec


def test_calibration_scales_each_stack():
    # Consistent calls: the factors are found exactly; the k2 module is scaled like the teacher's layers.
    p = predict(synthetic_profile((1.5, 0.8, 0.0, 0.0)), Assembly.parse("enc=2 dec=1,1"), Workload(8, 32, 16))
    enc, dec = teacher_sums(8, 32, 16)
    assert p.latency_ms == pytest.approx(2.0 + 16 * 1.3 + 1.5 * enc / 2 + 0.8 * dec, rel=1e-9)
    # With an offset (what a stack costs once it has any layer): found exactly too, and it is in the fixed row.
    profile = synthetic_profile((1.2, 0.9, 0.0, 4.0))
    costs = workload_costs(profile, Workload(8, 32, 16))
    assert costs.scales == pytest.approx({"encoder": 1.2, "decoder": 0.9}, rel=1e-9)
    assert costs.offsets == pytest.approx({"encoder": 4.0, "decoder": 4.0}, rel=1e-9)
    p = predict(profile, Assembly.parse("enc=2 dec=1,1"), Workload(8, 32, 16))
    assert p.latency_ms == pytest.approx(2.0 + 16 * 1.3 + 8.0 + 1.2 * enc / 2 + 0.9 * dec, rel=1e-9)
    assert p.breakdown.loc[0, "latency_ms"] == pytest.approx(2.0 + 16 * 1.3 + 8.0)
    assert p.breakdown.loc[0, "block_ms"] == pytest.approx(2.0 + 16 * 1.3)  # the zero-layer call alone
    # The whole teacher 3 ms dearer than its stacks: the encoder's line comes from the one-token calls (exact); the
    # decoder's goes through its first layer and the mean of what the decoder-only call and the whole teacher (less
    # the encoder) say for all layers, by hand.
    scales = workload_costs(synthetic_profile((1.0, 1.0, 3.0, 0.0)), Workload(1, 16, 16))
    d, d1 = teacher_sums(1, 16, 16)[1], teacher_sums(1, 16, 16, layers=1)[1]
    slope = ((d + d + 3.0) / 2 - d1) / (d - d1)
    assert scales.scales["encoder"] == pytest.approx(1.0, rel=1e-9)
    assert scales.scales["decoder"] == pytest.approx(slope, rel=1e-9) and slope > 1
    assert scales.offsets["decoder"] == pytest.approx(d1 - slope * d1, rel=1e-9)
    # No calibration rows (an older profile): the blocks as measured.
    old = workload_costs(synthetic_profile(), Workload(1, 16, 1))
    assert old.scales == {"encoder": 1.0, "decoder": 1.0} and old.offsets == {"encoder": 0.0, "decoder": 0.0}


def calibration_blocks(costs: list[float]) -> pd.DataFrame:
    """Teacher layers of both stacks with these measured block costs, as `fit_calibration` reads them."""
    rows = [
        {"block": f"{stack}_k1_s{i}", "stack": stack, "start": i, "size": 1, "block_ms": c}
        for stack in ("encoder", "decoder")
        for i, c in enumerate(costs)
    ]
    return pd.DataFrame(rows).set_index("block")


def test_calibration_curve_through_first_half_and_all_layers():
    blocks = calibration_blocks([3.0, 2.0, 2.0, 2.0, 2.0, 2.0])  # F = 3, H = 7, T = 13

    def added(x: float, o: float, a: float, q: float) -> float:
        return o + a * x + q * x * x

    # Layers that grow dearer as the stack deepens (caches outgrown): the quadratic is recovered exactly.
    enc, dec = (0.5, 1.1, 0.01), (2.0, 0.9, 0.02)
    measured = {
        "encoder": Calls(first=added(3, *enc), half=added(7, *enc), alls=[added(13, *enc)]),
        "decoder": Calls(
            first=added(3, *dec),
            half=added(7, *dec),
            alls=[added(13, *dec), added(13, *dec) + added(13, *enc)],  # decoder-only and the whole teacher
        ),
    }
    scales, offsets, curvatures = fit_calibration(blocks, measured)
    for stack, (o, a, q) in (("encoder", enc), ("decoder", dec)):
        assert (offsets[stack], scales[stack], curvatures[stack]) == pytest.approx((o, a, q), rel=1e-9)
    # An older profile without the half-depth call: the line through the first layer and all of them.
    line = {k: Calls(first=c.first, half=None, alls=c.alls) for k, c in measured.items()}
    scales, offsets, curvatures = fit_calibration(blocks, line)
    slope = (added(13, *enc) - added(3, *enc)) / 10
    assert curvatures == {"encoder": 0.0, "decoder": 0.0}
    assert scales["encoder"] == pytest.approx(slope) and offsets["encoder"] == pytest.approx(added(3, *enc) - 3 * slope)
    # A half-depth figure so far off that the curve would fall between F and T (noise): the line serves.
    noisy = dict(measured, encoder=Calls(first=added(3, *enc), half=added(13, *enc) * 3, alls=[added(13, *enc)]))
    scales, _, curvatures = fit_calibration(blocks, noisy)
    assert curvatures["encoder"] == 0.0 and scales["encoder"] == pytest.approx(slope)


def test_curvature_makes_a_stack_cost_more_than_its_blocks_one_by_one(profile):
    # On the real profile, what a block costs in a prediction depends on how many blocks share its stack: its
    # share is block_ms (a + q X) with X the stack's block sum.
    w = Workload(1, 10, 4)
    costs = workload_costs(profile, w)
    for text in ("enc=2,1,1 dec=1,1,1,1", "enc=2,2 dec=2,1,1"):
        parts = predict(profile, Assembly.parse(text), w).breakdown
        for stack in ("encoder", "decoder"):
            mine = parts[parts["stack"] == stack]
            x = mine["block_ms"].sum()
            expected = costs.scales[stack] * x + costs.curvatures[stack] * x * x
            assert mine["latency_ms"].sum() == pytest.approx(expected, rel=1e-12)


def expected_synthetic(B: int, S: int, G: int) -> float:
    enc = 2 * (1.0 + 0.5 * B + 0.01 * S)  # enc=1,1
    steps = sum(0.2 + 0.1 * B + 0.001 * S + 0.01 * t for t in range(G))
    dec = 2 * (0.1 * B + steps)  # dec=1,1
    return 2.0 + G * (0.5 + 0.1 * B) + enc + dec


@pytest.mark.parametrize(("B", "S", "G"), [(1, 16, 16), (4, 24, 16), (8, 20, 10), (3, 32, 7)])
def test_interpolation_between_grid_points_is_exact_for_linear_costs(B, S, G):
    p = predict(synthetic_profile(), Assembly.parse("enc=1,1 dec=1,1"), Workload(B, S, G))
    assert p.latency_ms == pytest.approx(expected_synthetic(B, S, G), rel=1e-9)
    assert not p.extrapolated


@pytest.mark.parametrize(
    ("workload", "why"),
    [
        (Workload(16, 16, 16), "batch 16 is outside the measured 1-8"),
        (Workload(1, 64, 16), "src_len 64 is outside the measured 16-32"),
        (Workload(1, 16, 24), "need cache lengths up to 23, measured up to 15"),
    ],
)
def test_extrapolation_is_flagged(workload, why):
    p = predict(synthetic_profile(), Assembly.parse("enc=2 dec=1,1"), workload)
    assert p.extrapolated and why in p.reason
    if workload.batch == 16:  # linear costs extrapolate linearly
        exact = expected_synthetic(16, 16, 16) - 2 * (1.0 + 0.5 * 16 + 0.01 * 16) + (1.0 + 0.5 * 16 + 0.01 * 16)
        assert p.latency_ms == pytest.approx(exact, rel=1e-9)


def test_workload_is_checked():
    with pytest.raises(ConfigError, match="batch"):
        Workload(0, 8, 8)


# --- save / load --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["folder", "mine.json", "mine.csv"])
def test_save_load_round_trip(profile, tmp_path, name):
    table_path, meta_path = profile.save(tmp_path / name)
    assert table_path.is_file() and meta_path.is_file()
    loaded = LatencyProfile.load(tmp_path / name)
    pd.testing.assert_frame_equal(loaded.table, profile.table)
    assert loaded.meta["grid"] == json.loads(json.dumps(profile.meta["grid"]))
    w = Workload(2, 8, 4)
    a = Assembly.parse("enc=1,1,2 dec=2,1,1")
    assert predict(loaded, a, w).latency_ms == pytest.approx(predict(profile, a, w).latency_ms)


def test_hardware_mismatch_warning_names_what_differs(profile, tmp_path):
    profile.save(tmp_path / "p.json")
    other = {**profile.fingerprint, "cpu_model": "Some Other CPU", "dtype": "bf16"}
    with pytest.warns(ProfileMismatchWarning, match=r"cpu_model: .*Some Other CPU.*dtype: 'fp32' -> 'bf16'"):
        LatencyProfile.load(tmp_path / "p.json", expect_fingerprint=other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyProfile.load(tmp_path / "p.json", expect_fingerprint=dict(profile.fingerprint))


def test_load_profile_says_what_differs_from_this_machine(profile, tmp_path):
    profile.save(tmp_path / "here.json")
    loaded, warned = load_profile(tmp_path / "here.json")  # measured on this machine: nothing to say
    assert warned == []
    pd.testing.assert_frame_equal(loaded.table, profile.table)

    # Compared at the profile's own device, dtype and threads: what differs is the machine and the software.
    other = {**profile.fingerprint, "cpu_model": "Some Other CPU", "transformers": "0.0.1"}
    LatencyProfile(profile.table, {**profile.meta, "fingerprint": other}).save(tmp_path / "there.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the differences come back as text, not as warnings
        _, warned = load_profile(tmp_path / "there.json")
    assert len(warned) == 1 and "\n" not in warned[0]
    assert warned[0].startswith(f"{tmp_path / 'there.json'} was measured on other hardware or settings")
    assert "cpu_model: 'Some Other CPU' -> " in warned[0] and "transformers: '0.0.1' -> " in warned[0]
    assert "dtype" not in warned[0]


def test_load_profile_compares_a_cuda_profile_only_where_cuda_is(profile, tmp_path, monkeypatch):
    import torch

    cuda = {**profile.fingerprint, "device": "cuda", "gpu_name": "Some GPU"}
    LatencyProfile(profile.table, {**profile.meta, "fingerprint": cuda}).save(tmp_path / "gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_profile(tmp_path / "gpu")[1] == []


def test_resolve_workload_fills_what_is_not_given_from_the_profile(profile):
    default = default_workload(profile)  # smallest batch and source length, longest generation
    assert (default.batch, default.src_len, default.gen_len) == (1, 6, 4)
    assert resolve_workload(profile) == {}
    assert resolve_workload(profile, batch=8) == {"batch": 8, "src_len": 6, "gen_len": 4}
    assert resolve_workload(profile, src_len=32, gen_len=16) == {"batch": 1, "src_len": 32, "gen_len": 16}
    full = resolve_workload(profile, batch=2, src_len=3, gen_len=5)
    assert Workload(**full) == Workload(2, 3, 5)
    with pytest.raises(CheckpointError, match="no workload grid"):
        resolve_workload(LatencyProfile(profile.table, {}), batch=2)


def test_bad_profile_files_are_one_line_errors(profile, tmp_path):
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(tmp_path / "missing")
    assert "not found" in one_line(err)
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(tmp_path / "missing.json")
    assert "not found" in one_line(err)

    table_path, meta_path = profile.save(tmp_path / "p.json")
    good_meta, good_table = meta_path.read_text(), table_path.read_text()
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(meta_path)
    assert "not valid JSON" in one_line(err)
    meta_path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(meta_path)
    assert "not a modformer latency profile" in one_line(err)

    meta_path.write_text(good_meta)
    table_path.write_text(good_table[: len(good_table) // 2])  # truncated
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(table_path)
    assert "corrupt" in one_line(err)
    table_path.unlink()
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(meta_path)
    assert "profile table not found" in one_line(err)

    # A table that matches its checksum but not the schema (edited, then re-saved by hand).
    broken = LatencyProfile(profile.table.copy(), dict(profile.meta))
    broken.save(tmp_path / "b.json")
    csv = tmp_path / "b.csv"
    frame = pd.read_csv(csv).drop(columns=["latency_ms"])
    frame.to_csv(csv, index=False)
    meta = json.loads((tmp_path / "b.json").read_text())
    import hashlib

    meta["table_sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    (tmp_path / "b.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        LatencyProfile.load(csv)
    assert "lacks the column(s) latency_ms" in one_line(err)


# --- validation ---------------------------------------------------------------------------------------------------
def test_choose_assemblies_spread_and_seeded():
    picked = choose_assemblies(12, 12, [2, 3, 4, 6], 20, seed=3)
    assert picked == choose_assemblies(12, 12, [2, 3, 4, 6], 20, seed=3)
    assert len(set(picked)) == 20 and Assembly.teacher(12, 12) not in picked
    ratios = [depth_ratio(a) for a in picked]
    assert min(ratios) < 1.15 and max(ratios) == 6.0
    for a in picked:
        a.validate(12, 12, [2, 3, 4, 6])
    with pytest.raises(ConfigError, match="only 15 exist"):
        choose_assemblies(4, 4, [2], 16)


def test_validate_measures_held_out_assemblies(profile, modular):
    result = validate(profile, modular, n=2, workloads=[Workload(2, 8, 4)], warmup=1, repeats=2)
    assert profile.meta["validation"] is result
    figures = result["per_batch"]["2"]
    for key in (
        "latency_mape",
        "latency_max_ape",
        "latency_within_10pct",
        "latency_spearman",
        "speedup_realised_min_fraction",
    ):
        assert np.isfinite(figures[key]), key
    assert figures["assemblies"] == 2
    rows = pd.DataFrame(result["rows"])
    assert rows["held_out"].sum() == 2 and (rows["measured_ms"] > 0).all()
    export = result["export"]
    # The ratio itself is a benchmark figure (benchmarks/profiler.py); a unit test only checks it was measured.
    assert export["outputs_match"] and np.isfinite(export["export_vs_native_ratio"])
    assert export["export_vs_native_ratio"] > 0


# --- CLI ----------------------------------------------------------------------------------------------------------
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory, modular) -> Path:
    out = tmp_path_factory.mktemp("profile") / "mods"
    modular.save_pretrained(out)
    return out


def test_cli_profile_and_show(modules_dir, tmp_path):
    out = tmp_path / "tiny.json"
    args = [
        "profile",
        "--modules",
        modules_dir,
        "--out",
        out,
        "--batch",
        "1",
        "--src-len",
        "6",
        "--gen-len",
        "3",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--validate",
        "1",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".csv").is_file()
    loaded = LatencyProfile.load(out)
    assert set(loaded.table["kind"]) == set(KINDS)
    memory = loaded.table[loaded.table["kind"] == "peak_memory"]
    assert set(memory["block"]) == {"zero_layers", "teacher"} and (memory["mem_bytes"] > 0).all()
    figures = loaded.meta["validation"]["per_batch"]["1"]
    assert np.isfinite(figures["memory_mape"]) and np.isfinite(figures["latency_mape"])
    # Blocks and validation summarised alike: by the least of the rounds unless --statistic median.
    assert loaded.meta["settings"]["statistic"] == loaded.meta["validation"]["statistic"] == "min"
    row = loaded.meta["validation"]["rows"][0]
    assert row["measured_ms"] == row["measured_min_ms"] <= row["measured_median_ms"]
    assert "profile written to" in result.stdout

    shown = invoke("profile", "show", out)
    assert shown.exit_code == 0, shown.output
    for text in ("encoder blocks", "decoder blocks", "fixed costs", "latency_mape", "export vs native"):
        assert text in shown.stdout

    again = invoke(*args)  # the output exists: refused, one line
    assert again.exit_code == 1 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr


def test_cli_profile_errors(modules_dir, tmp_path):
    missing = invoke("profile", "show", tmp_path / "nothing.json")
    assert missing.exit_code == 1 and missing.stderr.startswith("error:") and missing.stderr.count("\n") == 1
    bad = invoke("profile", "--modules", modules_dir, "--out", tmp_path / "x.json", "--batch", "1,x")
    assert bad.exit_code == 1 and "--batch must be whole numbers" in bad.stderr
    neither = invoke("profile", "--modules", modules_dir)
    assert neither.exit_code == 1 and "needs --modules and --out" in neither.stderr
    (tmp_path / "junk.json").write_text("[]")
    junk = invoke("profile", "show", tmp_path / "junk.json")
    assert junk.exit_code == 1 and "must be a JSON object" in junk.stderr
    mean = invoke("profile", "--modules", modules_dir, "--out", tmp_path / "y.json", "--statistic", "mean")
    assert mean.exit_code == 1 and "statistic must be one of min, median, got 'mean'" in mean.stderr
    assert not (tmp_path / "y.json").exists()


def test_speed_first_ratio_comes_from_the_profile(profile, modular, modules_dir, tmp_path):
    from modformer.modular.strategies import assembly_for_ratio, strategy_sequence

    teacher = Assembly.teacher(modular.config.encoder_layers, modular.config.decoder_layers)
    speed = speed_ratio_predictor(profile, teacher, default_workload(profile))
    sequence = strategy_sequence("speed-first", modular.cost_model())
    assert speed(sequence[0]) == pytest.approx(1.0)
    # Tiny blocks cost next to nothing, so measured ratios are noisy: pick a reachable target from the predictions.
    target = max(1.0, sorted(speed(a) for a in sequence)[len(sequence) // 2])
    first_reaching = next(a for a in sequence if speed(a) >= target)
    assert assembly_for_ratio("speed-first", modular.cost_model(), target, speed_ratio=speed) == first_reaching

    path = tmp_path / "p.json"
    profile.save(path)
    shown = invoke(
        "assemble",
        "--modules",
        modules_dir,
        "--strategy",
        "speed-first",
        "--profile",
        path,
        "--json",
        tmp_path / "a.json",
    )
    assert shown.exit_code == 0, shown.output
    records = json.loads((tmp_path / "a.json").read_text())["assemblies"]
    assert {r["speed_ratio_source"] for r in records} == {"profile"}
    expected = [speed(Assembly.parse(r["assembly"])) for r in records]
    assert [r["speed_ratio"] for r in records] == pytest.approx(expected)
