"""Assembly notation: parse/format/JSON round trips, validation against a model, counting valid stacks."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modformer.errors import AssemblyError, ModformerError
from modformer.modular.assembly import (
    STACKS,
    Assembly,
    all_divisors,
    count_valid_stacks,
    default_granularities,
    module_starts,
    valid_stacks,
)
from modformer.modular.strategies import stack_sequence

G12 = (2, 3, 4, 6)
PARSE_PREFIX = re.compile(
    r"^cannot parse assembly (?:'.*'|\".*\"): expected (?:'enc=N,N,\.\.\. dec=N,N,\.\.\.'|\{.*\}) \(.+\)$"
)
SUM_MSG = re.compile(r"^(enc|dec): spans sum to (\d+) but the teacher has (\d+) layers$")
ALIGN_MSG = re.compile(
    r"^(enc|dec): a (\d+)-module cannot start at layer (\d+) \(\2-modules start at layers? [\d, ]+\)$"
)
GRAN_MSG = re.compile(r"^no module of granularity (\d+) was trained \(trained: ([\d, ]+|none)\)$")


def raises_one_line(fn, *args) -> str:
    with pytest.raises(AssemblyError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# ---- examples -------------------------------------------------------------------------------------------------------


def test_parse_canonical_and_accessors():
    a = Assembly.parse("enc=1,1,2,4,4 dec=6,6")
    assert a == Assembly(encoder=(1, 1, 2, 4, 4), decoder=(6, 6))
    assert a.format() == str(a) == "enc=1,1,2,4,4 dec=6,6"
    assert a.to_json() == {"encoder": [1, 1, 2, 4, 4], "decoder": [6, 6]}
    assert a.blocks("encoder") == a.blocks("enc") == (1, 1, 2, 4, 4)
    assert a.spans("encoder") == [(0, 1), (1, 1), (2, 2), (4, 4), (8, 4)]
    assert a.spans("decoder") == [(0, 6), (6, 6)]
    assert a.shape == "5-2"
    assert a.validate(12, 12, G12) is a
    assert STACKS == ("encoder", "decoder")


@pytest.mark.parametrize(
    "text",
    [
        "enc=1,1,2,4,4 dec=6,6",
        "dec=6,6 enc=1,1,2,4,4",
        "  enc = 1, 1,2 ,4,4   dec= 6 ,6 ",
        "enc=1,1,2,4,4;dec=6,6",
        "enc=1,1,2,4,4 ; dec=6,6",
        "enc=1,1,2,4,4\n\tdec=6,6\n",
        "encoder=1,1,2,4,4 decoder=6,6",
        '{"encoder": [1, 1, 2, 4, 4], "decoder": [6, 6]}',
        ' {"decoder": [6, 6], "encoder": [1, 1, 2, 4, 4]}',
    ],
)
def test_parse_variants(text):
    assert Assembly.parse(text) == Assembly((1, 1, 2, 4, 4), (6, 6))


def test_from_json_dict_and_string_and_lists_become_tuples():
    a = Assembly.from_json({"encoder": [1, 1, 2], "decoder": [4]})
    assert a == Assembly.from_json('{"encoder": [1, 1, 2], "decoder": [4]}') == Assembly([1, 1, 2], [4])
    assert isinstance(a.encoder, tuple) and hash(a) == hash(Assembly((1, 1, 2), (4,)))


def test_teacher():
    t = Assembly.teacher(3, 2)
    assert t.format() == "enc=1,1,1 dec=1,1" and t.shape == "3-2"
    assert t.validate(3, 2, []) is t


def test_default_granularities():
    assert default_granularities(12) == [2, 4, 6]  # the 3-modules dropped: each module trains more (decoder-gap.md)
    assert all_divisors(12) == [2, 3, 4, 6]
    assert default_granularities(6) == [2, 3]  # half the depth is kept even when odd: the two-block stack
    assert default_granularities(24) == [2, 4, 6, 8, 12]
    assert default_granularities(18) == [2, 6, 9]
    assert [len(s) for s in stack_sequence(12, default_granularities(12))] == list(range(12, 1, -1))
    assert default_granularities(7) == []
    assert default_granularities(1) == default_granularities(3) == []
    assert default_granularities(4) == [2]


# ---- error messages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("enc=1,1,2,4,2 dec=6,6", "enc: spans sum to 10 but the teacher has 12 layers"),
        ("enc=1,1,2,4,4 dec=6,6,6", "dec: spans sum to 18 but the teacher has 12 layers"),
        ("enc=1,1,2,4,4 dec=2,4,6", "dec: a 4-module cannot start at layer 2 (4-modules start at layers 0, 4, 8)"),
        (
            "enc=1,2,1,4,4 dec=6,6",
            "enc: a 2-module cannot start at layer 1 (2-modules start at layers 0, 2, 4, 6, 8, 10)",
        ),
        ("enc=1,1,2,4,5 dec=6,6", "no module of granularity 5 was trained (trained: 2, 3, 4, 6)"),
        ("enc=1,1,2,4,4 dec=12", "no module of granularity 12 was trained (trained: 2, 3, 4, 6)"),
    ],
)
def test_validate_messages(spec, message):
    assert raises_one_line(Assembly.parse(spec).validate, 12, 12, G12) == message


def test_validate_single_start_and_no_granularities():
    assert raises_one_line(Assembly((1, 6, 1), (1,)).validate, 8, 1, [6]) == (
        "enc: a 6-module cannot start at layer 1 (6-modules start at layer 0)"
    )
    assert raises_one_line(Assembly((2,), (1,)).validate, 2, 1, []) == (
        "no module of granularity 2 was trained (trained: none)"
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("enc=1,x", "enc: 'x' is not a whole number"),
        ("enc=1,1.5 dec=1", "enc: '1.5' is not a whole number"),
        ("enc=1,2 dec=6,6 enc=1", "enc given twice"),
        ("enc=1 dec=2 dec=2", "dec given twice"),
        ("enc=1,2", "missing 'dec=N,N,...'"),
        ("dec=6", "missing 'enc=N,N,...'"),
        ("enc=0,1 dec=1", "enc: block sizes must be positive, got 0"),
        ("enc=1 dec=-2", "dec: block sizes must be positive, got -2"),
        ("enc= dec=1", "enc: empty stack; give at least one block size"),
        ("enc=1,,2 dec=1", "enc: empty item between commas"),
        ("enc=1,2, dec=1", "enc: empty item between commas"),
        ("enc=1,2dec=6", "enc: '2dec=6' is not a whole number"),
        ("x enc=1 dec=2", "unexpected 'x' before 'enc'"),
        ("enc=1 dec=2 mid=3", "unknown stack 'mid'; use 'enc' and 'dec'"),
        ("", "no 'enc=' or 'dec='"),
        ("1,1,2 6,6", "no 'enc=' or 'dec='"),
        ("enc=12345678901234567890 dec=1", "enc: '12345678901234567890' is too large for a block size"),
    ],
)
def test_parse_messages(text, detail):
    message = raises_one_line(Assembly.parse, text)
    assert message == f"cannot parse assembly {text!r}: expected 'enc=N,N,... dec=N,N,...' ({detail})"


@pytest.mark.parametrize(
    ("obj", "detail"),
    [
        ('{"encoder": [1], "dec": [2]}', "missing key 'decoder'; unexpected key 'dec'"),
        ('{"encoder": [1], "decoder": [2], "x": 1}', "unexpected key 'x'"),
        ('{"encoder": [1], "decoder": []}', "decoder: empty stack; give at least one block size"),
        ('{"encoder": [1.0], "decoder": [2]}', "encoder: 1.0 is not a whole number"),
        ('{"encoder": [true], "decoder": [2]}', "encoder: True is not a whole number"),
        ('{"encoder": [0], "decoder": [2]}', "encoder: block sizes must be positive, got 0"),
        ('{"encoder": "1,2", "decoder": [2]}', "encoder must be a list of block sizes, got str"),
        ("[1, 2]", "a JSON object is needed, got list"),
        ('{"encoder": [1,', "bad JSON: Expecting value at line 1 column 16"),
    ],
)
def test_json_messages(obj, detail):
    expected = f'cannot parse assembly {obj!r}: expected {{"encoder": [N, ...], "decoder": [N, ...]}} ({detail})'
    assert raises_one_line(Assembly.from_json, obj) == expected
    if obj.startswith("{"):
        assert raises_one_line(Assembly.parse, obj) == expected


def test_json_dict_message_and_long_text_is_cut():
    message = raises_one_line(Assembly.from_json, {"encoder": [1]})
    assert message.endswith("(missing key 'decoder')")
    message = raises_one_line(Assembly.parse, "enc=" + ",".join(["1"] * 100) + ",x dec=1")
    assert "...'" in message and len(message) < 200


def test_direct_construction_checks_syntax():
    assert raises_one_line(Assembly, (), (1,)) == "enc: empty stack; give at least one block size"
    assert raises_one_line(Assembly, (1,), (0,)) == "dec: block sizes must be positive, got 0"
    assert raises_one_line(Assembly, (1, "2"), (1,)) == "enc: '2' is not a whole number"
    assert raises_one_line(Assembly, "12", (1,)) == "enc: block sizes must be a sequence of whole numbers"
    assert raises_one_line(Assembly.parse, 12) == "cannot parse assembly from int: expected 'enc=N,N,... dec=N,N,...'"
    assert raises_one_line(Assembly.teacher(2, 2).blocks, "middle") == (
        "unknown stack 'middle' (expected 'encoder' or 'decoder')"
    )
    assert issubclass(AssemblyError, ModformerError)


# ---- counting -------------------------------------------------------------------------------------------------------


def test_issue_sanity_figure_292():
    assert count_valid_stacks(12, [1, 2, 3, 4, 6]) == 292
    assert count_valid_stacks(12, G12) == len(valid_stacks(12, G12)) == 292


def test_count_without_enumerating_24_layers():
    assert count_valid_stacks(24, all_divisors(24)) == 90922
    assert count_valid_stacks(24, default_granularities(24)) == 23888
    assert count_valid_stacks(24, []) == 1
    assert count_valid_stacks(0, G12) == 0 and valid_stacks(0, G12) == []


def test_valid_stacks_small_example():
    assert valid_stacks(4, [2]) == [(1, 1, 1, 1), (1, 1, 2), (2, 1, 1), (2, 2)]
    assert valid_stacks(4, [2, 4]) == [(1, 1, 1, 1), (1, 1, 2), (2, 1, 1), (2, 2), (4,)]
    assert module_starts(4, 12) == [0, 4, 8] and module_starts(4, 10) == [0, 4]


@pytest.mark.parametrize("depth", range(1, 13))
def test_count_matches_enumeration(depth):
    for gs in ([], [2], [3], default_granularities(depth), list(range(2, depth + 1))):
        stacks = valid_stacks(depth, gs)
        assert count_valid_stacks(depth, gs) == len(stacks)
        assert stacks == sorted(set(stacks))  # deterministic: sorted bottom-up, no repeats
        for blocks in stacks:
            Assembly(blocks, (1,)).validate(depth, 1, gs)


# ---- properties -----------------------------------------------------------------------------------------------------


@st.composite
def models(draw, max_depth: int = 24):
    """(encoder depth, decoder depth, trained granularities): any sizes 2..depth, not only divisors."""
    enc = draw(st.integers(1, max_depth))
    dec = draw(st.integers(1, max_depth))
    gs = draw(st.lists(st.integers(2, max(enc, dec, 2)), max_size=5, unique=True))
    return enc, dec, sorted(gs)


@st.composite
def stacks(draw, depth: int, gs: list[int]):
    """A valid block list drawn by walking up the stack, choosing among the sizes allowed at each start."""
    blocks, start = [], 0
    while start < depth:
        size = draw(st.sampled_from([k for k in (1, *gs) if start % k == 0 and start + k <= depth]))
        blocks.append(size)
        start += size
    return tuple(blocks)


@st.composite
def valid_cases(draw):
    enc, dec, gs = draw(models())
    return enc, dec, gs, Assembly(draw(stacks(enc, gs)), draw(stacks(dec, gs)))


@settings(max_examples=300, deadline=None)
@given(valid_cases())
def test_valid_assemblies_round_trip_and_validate(case):
    enc, dec, gs, a = case
    assert a.validate(enc, dec, gs) is a
    assert Assembly.parse(a.format()) == a
    assert Assembly.parse(str(a).replace(",", ", ").replace(" dec", "  ;  dec")) == a
    assert Assembly.parse(f"dec={','.join(map(str, a.decoder))} enc={','.join(map(str, a.encoder))}") == a
    assert Assembly.from_json(a.to_json()) == a
    assert Assembly.from_json(json.dumps(a.to_json())) == a
    assert Assembly.parse(json.dumps(a.to_json())) == a
    for stack, depth in zip(STACKS, (enc, dec), strict=True):
        spans = a.spans(stack)
        assert [size for _, size in spans] == list(a.blocks(stack))
        assert all(start % size == 0 for start, size in spans) and sum(a.blocks(stack)) == depth
    assert a.shape == f"{len(a.encoder)}-{len(a.decoder)}"


@settings(max_examples=200, deadline=None)
@given(valid_cases(), st.sampled_from(STACKS), st.sampled_from(["append", "drop", "depth"]), st.integers(1, 5))
def test_wrong_sum_is_reported(case, stack, how, delta):
    enc, dec, gs, a = case
    blocks = a.blocks(stack)
    if how == "drop" and len(blocks) > 1:
        blocks = blocks[:-1]
    elif how == "depth":  # the stack is fine, the model is deeper than it
        enc, dec = (enc + delta, dec) if stack == "encoder" else (enc, dec + delta)
    else:
        blocks = (*blocks, 1)
    bad = Assembly(**{**a.to_json(), stack: blocks})
    match = SUM_MSG.match(raises_one_line(bad.validate, enc, dec, gs))
    assert match and match.group(1) == stack[:3]
    assert int(match.group(2)) == sum(blocks) and int(match.group(3)) == (enc if stack == "encoder" else dec)


@settings(max_examples=200, deadline=None)
@given(valid_cases(), st.sampled_from(STACKS), st.integers(2, 30), st.data())
def test_untrained_granularity_is_reported(case, stack, size, data):
    enc, dec, gs, a = case
    if size in gs:
        size = max(gs) + 1
    blocks = list(a.blocks(stack))
    blocks.insert(data.draw(st.integers(0, len(blocks))), size)
    bad = Assembly(**{**a.to_json(), stack: tuple(blocks)})
    message = raises_one_line(bad.validate, enc, dec, gs)
    assert message == f"no module of granularity {size} was trained (trained: {', '.join(map(str, gs)) or 'none'})"
    assert GRAN_MSG.match(message)


@settings(max_examples=200, deadline=None)
@given(models(), st.sampled_from(STACKS), st.data())
def test_misaligned_module_is_reported(model, stack, data):
    enc, dec, gs = model
    depth = enc if stack == "encoder" else dec
    fits = [k for k in gs if k < depth]
    if not fits:
        gs, fits = [*gs, 2], [2]
        depth = max(depth, 3)
        enc, dec = (depth, dec) if stack == "encoder" else (enc, depth)
    size = data.draw(st.sampled_from(fits))
    start = data.draw(st.integers(1, depth - size).filter(lambda s: s % size))
    blocks = (1,) * start + (size,) + (1,) * (depth - start - size)
    a = Assembly.teacher(enc, dec)
    bad = Assembly(**{**a.to_json(), stack: blocks})
    message = raises_one_line(bad.validate, enc, dec, gs)
    starts = ", ".join(map(str, module_starts(size, depth)))
    layers = "layer" if len(module_starts(size, depth)) == 1 else "layers"
    assert (
        message
        == f"{stack[:3]}: a {size}-module cannot start at layer {start} ({size}-modules start at {layers} {starts})"
    )
    assert ALIGN_MSG.match(message)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet='encd=,; 0123456789-x{}[]"', max_size=40),
        st.builds(
            lambda s, i, c: s[:i] + c + s[i + 1 :],
            st.just("enc=1,1,2,4,4 dec=6,6"),
            st.integers(0, 20),
            st.text(max_size=2),
        ),
    )
)
def test_garbage_text_is_an_assembly_error_or_an_assembly(text):
    try:
        a = Assembly.parse(text)
    except AssemblyError as e:
        message = str(e)
        assert "\n" not in message
        assert PARSE_PREFIX.match(message), message
    else:
        assert Assembly.parse(a.format()) == a


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"encoder": json_values, "decoder": json_values})))
def test_garbage_json_is_an_assembly_error_or_an_assembly(obj):
    for value in (obj, json.dumps(obj)):
        if not isinstance(value, (dict, str)):
            continue
        try:
            a = Assembly.from_json(value)
        except AssemblyError as e:
            assert "\n" not in str(e) and PARSE_PREFIX.match(str(e)), str(e)
        else:
            assert Assembly.from_json(a.to_json()) == a
