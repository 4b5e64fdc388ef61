"""Strategies: per-stack sequences, size-first and speed-first, choosing an assembly by shape or ratio."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modformer.errors import AssemblyError, ConfigError
from modformer.modular.assembly import Assembly, valid_stacks
from modformer.modular.strategies import (
    STRATEGIES,
    CostModel,
    assembly_for_ratio,
    assembly_for_shape,
    stack_for_blocks,
    stack_sequence,
    strategy_sequence,
)

G12 = (2, 3, 4, 6)
COST = CostModel(
    encoder_layer_params=200_000,
    decoder_layer_params=265_000,
    fixed_params=1_000_000,
    encoder_layers=12,
    decoder_layers=12,
    granularities=G12,
)


def message_of(fn, *args, **kwargs) -> str:
    with pytest.raises(AssemblyError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- one stack ------------------------------------------------------------------------------------------------------


def test_stack_sequence_depth_12():
    assert stack_sequence(12, G12) == [
        (1,) * 12,
        (1,) * 10 + (2,),
        (1,) * 8 + (2, 2),
        (1,) * 6 + (2,) * 3,
        (1,) * 4 + (2,) * 4,
        (1, 1) + (2,) * 5,
        (2,) * 6,
        (3, 3, 2, 2, 2),
        (3, 3, 3, 3),
        (4, 4, 4),
        (6, 6),
    ]


def test_finest_sizes_beat_the_order_from_the_bottom():
    """3,3,2,1,3 is valid, has the same largest block and three coarse blocks where 3,3,2,2,2 has two."""
    assert (3, 3, 2, 1, 3) in valid_stacks(12, G12)
    assert stack_for_blocks(12, G12, 5) == (3, 3, 2, 2, 2)


def test_coarse_modules_go_to_the_bottom_and_teacher_layers_below_them():
    """Among lists of the same sizes: teacher layers lowest, then modules from the coarsest up (docs/decoder-gap.md,
    section 8: 4,4,2,2 scored above 2,2,4,4 in every run, in either stack)."""
    assert stack_for_blocks(12, (2, 4, 6), 4) == (4, 4, 2, 2)
    assert stack_for_blocks(12, (2, 4, 6), 5) == (4, 2, 2, 2, 2)
    assert stack_for_blocks(12, (2, 4, 6), 8) == (1, 1, 1, 1, 2, 2, 2, 2)
    assert stack_for_blocks(12, [4], 9) == (1, 1, 1, 1, 1, 1, 1, 1, 4)  # a 4-module cannot start at layer 1


def test_gaps_are_skipped_and_errors_list_achievable_counts():
    assert [len(s) for s in stack_sequence(12, [4])] == [12, 9, 6, 3]
    assert stack_sequence(12, [4])[1] == (1, 1, 1, 1, 1, 1, 1, 1, 4)
    assert stack_sequence(5, []) == [(1,) * 5]
    assert stack_sequence(1, G12) == [(1,)]
    assert message_of(stack_for_blocks, 12, [4], 7) == (
        "no valid 12-layer stack has 7 blocks with modules of granularity 4 (achievable block counts: 12, 9, 6, 3)"
    )
    assert message_of(stack_for_blocks, 12, G12, 1).endswith(
        "(achievable block counts: 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2)"
    )
    assert message_of(stack_for_blocks, 0, G12, 1) == "a stack needs at least one layer, got depth 0"


def preferred_by_brute_force(depth: int, gs: list[int]) -> dict[int, tuple[int, ...]]:
    """The rule spelled out over every valid list: finest sorted sizes first, then read from the bottom, teacher
    layers first and coarser modules before finer ones."""

    def key(blocks):
        return sorted(blocks, reverse=True), [(0,) if k == 1 else (1, -k) for k in blocks]

    best: dict[int, tuple[int, ...]] = {}
    for blocks in valid_stacks(depth, gs):
        if len(blocks) not in best or key(blocks) < key(best[len(blocks)]):
            best[len(blocks)] = blocks
    return best


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 14), st.lists(st.integers(2, 14), max_size=4, unique=True))
def test_stack_sequence_matches_brute_force(depth, gs):
    expected = preferred_by_brute_force(depth, gs)
    sequence = stack_sequence(depth, gs)
    assert [len(s) for s in sequence] == sorted(expected, reverse=True)  # every reachable count, largest first
    for blocks in sequence:
        assert blocks == expected[len(blocks)] == stack_for_blocks(depth, gs, len(blocks))
        same_count = [s for s in valid_stacks(depth, gs) if len(s) == len(blocks)]
        assert max(blocks) == min(max(s) for s in same_count)  # the smallest largest block: fine-to-coarse
    assert sequence[0] == (1,) * depth


def test_24_layer_stacks_are_quick():
    sequence = stack_sequence(24, [2, 3, 4, 6, 8, 12])
    assert sequence[0] == (1,) * 24 and sequence[-1] == (12, 12)
    assert [len(s) for s in sequence] == list(range(24, 1, -1))


def test_assembly_for_shape():
    assert assembly_for_shape("6-6", 12, 12, G12) == Assembly((2,) * 6, (2,) * 6)
    assert assembly_for_shape(" 12 - 3 ", 12, 12, G12) == Assembly((1,) * 12, (4, 4, 4))
    assert assembly_for_shape("12-12", 12, 12, G12) == Assembly.teacher(12, 12)
    assert message_of(assembly_for_shape, "6-7", 12, 12, [4]) == (
        "dec: no valid 12-layer stack has 7 blocks with modules of granularity 4 (achievable block counts: 12, 9, 6, 3)"
    )
    assert message_of(assembly_for_shape, "1-2", 12, 12, G12).startswith("enc: no valid 12-layer stack has 1 blocks")
    for bad in ("6x6", "6", "-6-6", "a-b", ""):
        assert message_of(assembly_for_shape, bad, 12, 12, G12) == (
            f"cannot parse shape {bad!r}: expected 'E-D', encoder and decoder block counts, e.g. '6-6'"
        )


# ---- cost model -----------------------------------------------------------------------------------------------------


def test_cost_model_figures():
    teacher, a = COST.teacher, Assembly.parse("enc=6,6 dec=4,4,4")
    assert COST.params(teacher) == 1_000_000 + 12 * 200_000 + 12 * 265_000 == 6_580_000
    assert COST.params(a) == 1_000_000 + 2 * 200_000 + 3 * 265_000
    assert COST.size_ratio(teacher) == COST.speed_ratio(teacher) == 1.0
    assert COST.size_ratio(a) == pytest.approx(6_580_000 / 2_195_000)
    assert COST.est_cost(teacher) == 12 * 1.0 + 20 * (12 + 2.0)
    assert COST.est_cost(a) == 2 * 1.0 + 20 * (3 + 2.0)
    assert COST.speed_ratio(a) == pytest.approx(292 / 102)
    assert COST.granularities == G12


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("encoder_layer_params", 0, "CostModel.encoder_layer_params must be a whole number >= 1, got 0"),
        ("fixed_params", -1, "CostModel.fixed_params must be a whole number >= 0, got -1"),
        ("decoder_layers", 2.0, "CostModel.decoder_layers must be a whole number >= 1, got 2.0"),
        ("gen_tokens", 0, "CostModel.gen_tokens must be a whole number >= 1, got 0"),
        ("step_overhead_layers", -0.5, "CostModel.step_overhead_layers must be a finite number >= 0, got -0.5"),
        ("encoder_layer_cost", 0.0, "CostModel.encoder_layer_cost must be a finite number > 0, got 0.0"),
        ("encoder_layer_cost", math.inf, "CostModel.encoder_layer_cost must be a finite number > 0, got inf"),
    ],
)
def test_cost_model_checks_its_fields(field, value, message):
    kwargs = {
        "encoder_layer_params": 1,
        "decoder_layer_params": 1,
        "fixed_params": 0,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "granularities": (2,),
        field: value,
    }
    with pytest.raises(ConfigError) as info:
        CostModel(**kwargs)
    assert str(info.value) == message


# ---- size-first and speed-first -------------------------------------------------------------------------------------


def test_size_first_12_12():
    formats = [a.format() for a in strategy_sequence("size-first", COST)]
    shapes = [a.shape for a in strategy_sequence("size-first", COST)]
    # decoder layers are larger, so the decoder is shrunk until its blocks hold fewer parameters than the encoder's
    assert shapes == [
        "12-12",
        "12-11",
        "12-10",
        "12-9",
        "11-9",
        "11-8",
        "10-8",
        "10-7",
        "9-7",
        "9-6",
        "8-6",
        "7-6",
        "7-5",
        "6-5",
        "6-4",
        "5-4",
        "5-3",
        "4-3",
        "3-3",
        "3-2",
        "2-2",
    ]
    assert formats[0] == Assembly.teacher(12, 12).format()
    assert formats[12] == "enc=1,1,2,2,2,2,2 dec=3,3,2,2,2"
    assert formats[-1] == "enc=6,6 dec=6,6"


def test_size_first_ties_go_to_the_decoder():
    cost = CostModel(100, 100, 0, 4, 4, (2, 4))
    assert [a.shape for a in strategy_sequence("size-first", cost)] == ["4-4", "4-3", "3-3", "3-2", "2-2", "2-1", "1-1"]


def test_size_first_keeps_advancing_the_stack_that_has_entries_left():
    cost = CostModel(1000, 1, 0, 4, 4, ())  # no modules trained: the teacher is the whole sequence
    assert [a.shape for a in strategy_sequence("size-first", cost)] == ["4-4"]
    cost = CostModel(1, 1000, 0, 2, 6, (2, 3))  # the decoder always holds more, yet stops at its last entry
    shapes = [a.shape for a in strategy_sequence("size-first", cost)]
    assert shapes == ["2-6", "2-5", "2-4", "2-3", "2-2", "1-2"]


def test_speed_first_12_12():
    sequence = strategy_sequence("speed-first", COST)
    assert [a.shape for a in sequence] == [f"12-{d}" for d in range(12, 1, -1)] + [f"{e}-2" for e in range(11, 1, -1)]
    assert [a.decoder for a in sequence[:11]] == stack_sequence(12, G12)
    assert [a.encoder for a in sequence[10:]] == stack_sequence(12, G12)


cost_models = st.builds(
    CostModel,
    encoder_layer_params=st.integers(1, 10**6),
    decoder_layer_params=st.integers(1, 10**6),
    fixed_params=st.integers(0, 10**7),
    encoder_layers=st.integers(1, 24),
    decoder_layers=st.integers(1, 24),
    granularities=st.lists(st.integers(2, 24), max_size=4, unique=True).map(tuple),
    gen_tokens=st.integers(1, 100),
    step_overhead_layers=st.floats(0, 10),
    encoder_layer_cost=st.floats(0.01, 10),
)


@settings(max_examples=150, deadline=None)
@given(cost_models)
def test_size_first_rules(cost):
    enc = stack_sequence(cost.encoder_layers, cost.granularities)
    dec = stack_sequence(cost.decoder_layers, cost.granularities)
    sequence = strategy_sequence("size-first", cost)
    assert sequence[0] == cost.teacher and sequence[-1] == Assembly(enc[-1], dec[-1])
    assert len(sequence) == len(enc) + len(dec) - 1
    for before, after in pairwise(sequence):
        after.validate(cost.encoder_layers, cost.decoder_layers, cost.granularities)
        i, j = enc.index(before.encoder), dec.index(before.decoder)
        enc_params, dec_params = (
            len(before.encoder) * cost.encoder_layer_params,
            len(before.decoder) * cost.decoder_layer_params,
        )
        decoder_moves = j < len(dec) - 1 and (i == len(enc) - 1 or dec_params >= enc_params)
        assert after == (Assembly(enc[i], dec[j + 1]) if decoder_moves else Assembly(enc[i + 1], dec[j]))
        assert cost.size_ratio(after) > cost.size_ratio(before)


@settings(max_examples=150, deadline=None)
@given(cost_models)
def test_speed_first_rules(cost):
    enc = stack_sequence(cost.encoder_layers, cost.granularities)
    dec = stack_sequence(cost.decoder_layers, cost.granularities)
    sequence = strategy_sequence("speed-first", cost)
    assert sequence == [Assembly(enc[0], d) for d in dec] + [Assembly(e, dec[-1]) for e in enc[1:]]
    assert sequence[0] == cost.teacher
    for before, after in pairwise(sequence):
        assert cost.speed_ratio(after) > cost.speed_ratio(before)


# ---- choosing by ratio ----------------------------------------------------------------------------------------------


def test_ratio_one_is_the_teacher():
    for name in STRATEGIES:
        assert assembly_for_ratio(name, COST, 1.0) == COST.teacher
        assert assembly_for_ratio(name, COST, 1) == COST.teacher


def test_first_assembly_reaching_the_ratio():
    size_first = strategy_sequence("size-first", COST)
    chosen = assembly_for_ratio("size-first", COST, 2.0)
    assert chosen.format() == "enc=2,2,2,2,2,2 dec=3,3,3,3" and COST.size_ratio(chosen) >= 2.0
    assert all(COST.size_ratio(a) < 2.0 for a in size_first[: size_first.index(chosen)])
    chosen = assembly_for_ratio("speed-first", COST, 2.0)
    assert chosen.format() == "enc=" + ",".join(["1"] * 12) + " dec=3,3,3,3"
    # a ratio reached exactly picks that assembly, not the next one
    for name, measure in (("size-first", COST.size_ratio), ("speed-first", COST.speed_ratio)):
        for a in strategy_sequence(name, COST):
            assert assembly_for_ratio(name, COST, measure(a)) == a


def test_speed_first_uses_the_given_predictor():
    # a predictor under which only the encoder matters: the decoder steps give nothing, so the first encoder step wins
    def predicted(a: Assembly) -> float:
        return 12 / len(a.encoder)

    chosen = assembly_for_ratio("speed-first", COST, 1.05, speed_ratio=predicted)
    assert chosen == Assembly((1,) * 10 + (2,), (6, 6))
    # size-first ignores it
    assert assembly_for_ratio("size-first", COST, 1.05, speed_ratio=predicted) == assembly_for_ratio(
        "size-first", COST, 1.05
    )


def test_ratio_errors():
    assert message_of(assembly_for_ratio, "size-first", COST, 5) == (
        "no size-first assembly reaches a size ratio of 5; the largest is 3.409 (enc=6,6 dec=6,6); "
        "ask for at most that, or train coarser modules"
    )
    assert message_of(assembly_for_ratio, "speed-first", COST, 4.0).startswith(
        "no speed-first assembly reaches a speed ratio of 4; the largest is 3.561 (enc=6,6 dec=6,6)"
    )
    for bad in (0.5, 0, -1, math.nan, math.inf, "2", True):
        assert message_of(assembly_for_ratio, "size-first", COST, bad) == (
            f"a compression ratio must be a finite number >= 1.0 (1.0 is the teacher), got {bad!r}"
        )
    assert message_of(assembly_for_ratio, "fast", COST, 2.0) == (
        "unknown strategy 'fast' (choose from size-first, speed-first)"
    )
    assert message_of(strategy_sequence, "fast", COST).startswith("unknown strategy 'fast'")
