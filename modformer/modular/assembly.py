"""Assemblies: which block stands at each position of the encoder and decoder stacks.

An assembly lists, for each stack and from the bottom up, how many teacher layers each block stands for:
``enc=1,1,2,4,4 dec=6,6``. A 1 is the teacher's own layer; k > 1 is the trained module of granularity k at that
position. Modules are trained on aligned spans ``[i*k, (i+1)*k)``, so a block of size k starting at layer s is valid
only if ``s % k == 0``. The sizes of a stack must sum to the teacher's depth, and every k > 1 must be a trained
granularity.

Two steps, kept apart: ``Assembly.parse`` / ``Assembly.from_json`` check syntax only (positive whole numbers, both
stacks present once); ``Assembly.validate`` checks an assembly against a model's depths and trained granularities.
Every error is an ``AssemblyError`` whose message is one line saying what to change.

Pure Python on purpose: the planner and the CLI reason about assemblies without importing torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modformer.errors import AssemblyError
from modformer.limits import MAX_ASSEMBLY_CHARS

STACKS = ("encoder", "decoder")
SHORT_NAMES = {"encoder": "enc", "decoder": "dec"}
# The notation's keys; the long names are accepted too, so a stack can be written the way the JSON spells it.
_KEY_TO_STACK = {"enc": "encoder", "dec": "decoder", "encoder": "encoder", "decoder": "decoder"}

NOTATION_HINT = "expected 'enc=N,N,... dec=N,N,...'"
JSON_HINT = 'expected {"encoder": [N, ...], "decoder": [N, ...]}'

# A key starts the text or follows whitespace or ';', so "enc=1,2dec=6" is an error rather than a guess.
_KEY_RE = re.compile(r"(?:^|(?<=[\s;]))([A-Za-z_]\w*)\s*=")
_WHOLE_RE = re.compile(r"[+-]?[0-9]+")
_MAX_QUOTED = 60
_MAX_DIGITS = 9


# --------------------------------------------------------------------------------------------------------------------
# Small pure helpers (shared with strategies.py)
# --------------------------------------------------------------------------------------------------------------------


def stack_name(stack: str) -> str:
    """The long name ("encoder"/"decoder") for either spelling; unknown names raise."""
    try:
        return _KEY_TO_STACK[stack]
    except (KeyError, TypeError):
        raise AssemblyError(f"unknown stack {stack!r} (expected 'encoder' or 'decoder')") from None


def normalize_granularities(granularities: Sequence[int]) -> tuple[int, ...]:
    """Sorted distinct trained granularities above 1 (a 1 is the teacher's own layer, always allowed)."""
    out = set()
    for k in granularities:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise AssemblyError(f"granularities must be positive whole numbers, got {k!r}")
        if k > 1:
            out.add(k)
    return tuple(sorted(out))


def sizes_at(start: int, depth: int, granularities: Sequence[int]) -> tuple[int, ...]:
    """Block sizes that may start at layer ``start`` of a ``depth``-layer stack, smallest first.

    Assumes ``granularities`` is normalized; callers in loops normalize once.
    """
    return tuple(k for k in (1, *granularities) if start % k == 0 and start + k <= depth)


def module_starts(size: int, depth: int) -> list[int]:
    """Layers where a module of granularity ``size`` can start: the aligned spans that fit in the stack."""
    return list(range(0, depth - size + 1, size))


def default_granularities(depth: int) -> list[int]:
    """The even divisors of ``depth`` up to depth // 2, and depth // 2 itself (the two-block stack): 12 -> [2, 4, 6],
    6 -> [2, 3], 24 -> [2, 4, 6, 8, 12].

    Fewer granularities give each module more of the training: without the curriculum a module of a 12-layer stack
    is in a third of the hybrids with [2, 4, 6] and in a quarter with every divisor [2, 3, 4, 6], and a 12-layer
    stack still reaches every block count from 12 down to 2 (4-4 is then 4,4,2,2 where it was 3,3,3,3).
    Measured on the 12+12 Multi30k teacher in docs/decoder-gap.md (section 5); ``all_divisors`` gives the old set.
    """
    half = depth // 2
    return [k for k in all_divisors(depth) if k % 2 == 0 or k == half]


def all_divisors(depth: int) -> list[int]:
    """Divisors of ``depth`` between 2 and depth // 2: every module size that tiles the stack, 12 -> [2, 3, 4, 6]."""
    return [k for k in range(2, depth // 2 + 1) if depth % k == 0]


def valid_stacks(depth: int, granularities: Sequence[int]) -> list[tuple[int, ...]]:
    """Every valid block list for one stack, in lexicographic order read from the bottom.

    Grows fast with depth (see ``count_valid_stacks``); meant for small stacks and tests.
    """
    gs = normalize_granularities(granularities)
    return list(_stacks_from(0, depth, gs)) if depth > 0 else []


def _stacks_from(start: int, depth: int, gs: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    if start == depth:
        yield ()
        return
    for k in sizes_at(start, depth, gs):
        for rest in _stacks_from(start + k, depth, gs):
            yield (k, *rest)


def count_valid_stacks(depth: int, granularities: Sequence[int]) -> int:
    """How many valid block lists one stack has, by dynamic programming over the start layer (no enumeration).

    ways[s] counts the tilings of layers [s, depth); ways[depth] = 1 (the empty tiling).
    """
    if depth <= 0:
        return 0
    gs = normalize_granularities(granularities)
    ways = [0] * (depth + 1)
    ways[depth] = 1
    for s in range(depth - 1, -1, -1):
        ways[s] = sum(ways[s + k] for k in sizes_at(s, depth, gs))
    return ways[0]


def _quote(text: str) -> str:
    """repr() of a (possibly long) input, cut short so the message stays one readable line."""
    shown = text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."
    return repr(shown)


def _short_repr(value: Any) -> str:
    """repr() of any value, cut short like ``_quote``."""
    shown = repr(value)
    return shown if len(shown) <= _MAX_QUOTED else shown[: _MAX_QUOTED - 3] + "..."


def _parse_error(text: str, detail: str, hint: str = NOTATION_HINT) -> AssemblyError:
    return AssemblyError(f"cannot parse assembly {_quote(text)}: {hint} ({detail})")


def _block_problem(value: Any) -> str | None:
    """Why ``value`` is not a block size, or None if it is one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{_short_repr(value)} is not a whole number"
    if value < 1:
        return f"block sizes must be positive, got {value}"
    return None


def _parse_blocks(key: str, value: str, text: str) -> tuple[int, ...]:
    """'1, 1,2' -> (1, 1, 2), or a parse error naming the stack and the bad item."""
    value = value.strip().rstrip(";").strip()
    if not value:
        raise _parse_error(text, f"{key}: empty stack; give at least one block size")
    blocks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise _parse_error(text, f"{key}: empty item between commas")
        if not _WHOLE_RE.fullmatch(item):
            raise _parse_error(text, f"{key}: {_quote(item)} is not a whole number")
        if len(item.lstrip("+-0")) > _MAX_DIGITS:  # no stack is that deep; also keeps int() off huge strings
            raise _parse_error(text, f"{key}: {_quote(item)} is too large for a block size")
        size = int(item)
        if size < 1:
            raise _parse_error(text, f"{key}: block sizes must be positive, got {size}")
        blocks.append(size)
    return tuple(blocks)


def _parse_notation(text: str) -> dict[str, tuple[int, ...]]:
    """'enc=1,1,2 dec=6,6' -> {"encoder": (1, 1, 2), "decoder": (6, 6)}; syntax only."""
    keys = list(_KEY_RE.finditer(text))
    if not keys:
        raise _parse_error(text, "no 'enc=' or 'dec='")
    lead = text[: keys[0].start()].strip()
    if lead:
        raise _parse_error(text, f"unexpected {_quote(lead)} before {_quote(keys[0].group(1))}")
    stacks: dict[str, tuple[int, ...]] = {}
    for i, match in enumerate(keys):
        key = match.group(1)
        stack = _KEY_TO_STACK.get(key.lower())
        if stack is None:
            raise _parse_error(text, f"unknown stack {_quote(key)}; use 'enc' and 'dec'")
        if stack in stacks:
            raise _parse_error(text, f"{SHORT_NAMES[stack]} given twice")
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        stacks[stack] = _parse_blocks(SHORT_NAMES[stack], text[match.end() : end], text)
    for stack in STACKS:
        if stack not in stacks:
            raise _parse_error(text, f"missing '{SHORT_NAMES[stack]}=N,N,...'")
    return stacks


def _json_stacks(obj: Any, shown: str) -> dict[str, tuple[int, ...]]:
    """{"encoder": [...], "decoder": [...]} -> tuples, or a parse error; ``shown`` is what the message quotes."""
    if not isinstance(obj, Mapping):
        raise _parse_error(shown, f"a JSON object is needed, got {type(obj).__name__}", JSON_HINT)
    keys = set(obj)
    if keys != set(STACKS):
        missing = sorted(set(STACKS) - keys)
        extra = sorted(map(str, keys - set(STACKS)))
        parts = [
            f"{what} key{'s' if len(names) > 1 else ''} {', '.join(map(_quote, names))}"
            for what, names in (("missing", missing), ("unexpected", extra))
            if names
        ]
        raise _parse_error(shown, "; ".join(parts), JSON_HINT)
    stacks = {}
    for stack in STACKS:
        value = obj[stack]
        if not isinstance(value, (list, tuple)):
            raise _parse_error(shown, f"{stack} must be a list of block sizes, got {type(value).__name__}", JSON_HINT)
        if not value:
            raise _parse_error(shown, f"{stack}: empty stack; give at least one block size", JSON_HINT)
        for item in value:
            problem = _block_problem(item)
            if problem:
                raise _parse_error(shown, f"{stack}: {problem}", JSON_HINT)
        stacks[stack] = tuple(value)
    return stacks


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:  # the message stays one line: no document echo, just where it broke
        raise _parse_error(text, f"bad JSON: {e.msg} at line {e.lineno} column {e.colno}", JSON_HINT) from None
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise _parse_error(text, f"bad JSON: {_quote(str(e))}", JSON_HINT) from None
    except RecursionError:
        raise _parse_error(text, "bad JSON: nested too deeply", JSON_HINT) from None


# --------------------------------------------------------------------------------------------------------------------
# The Assembly
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assembly:
    """Block sizes of each stack, bottom-up. Construction checks syntax only; ``validate`` checks fit to a model."""

    encoder: tuple[int, ...]
    decoder: tuple[int, ...]

    def __post_init__(self) -> None:
        for stack in STACKS:
            blocks = getattr(self, stack)
            if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
                raise AssemblyError(f"{SHORT_NAMES[stack]}: block sizes must be a sequence of whole numbers")
            if not blocks:
                raise AssemblyError(f"{SHORT_NAMES[stack]}: empty stack; give at least one block size")
            for item in blocks:
                problem = _block_problem(item)
                if problem:
                    raise AssemblyError(f"{SHORT_NAMES[stack]}: {problem}")
            object.__setattr__(self, stack, tuple(blocks))  # lists in, tuples kept: hashable and immutable

    # ---- text and JSON ----

    @classmethod
    def parse(cls, text: str) -> Assembly:
        """Read the notation (``enc=1,1,2 dec=6,6``, keys in either order) or the JSON form; syntax only."""
        if not isinstance(text, str):
            raise AssemblyError(f"cannot parse assembly from {type(text).__name__}: {NOTATION_HINT}")
        if len(text) > MAX_ASSEMBLY_CHARS:
            raise AssemblyError(
                f"assembly is {len(text):,} characters, past the limit of {MAX_ASSEMBLY_CHARS:,}: {NOTATION_HINT}",
                settings="assembly",
            )
        if text.lstrip().startswith("{"):
            return cls.from_json(text)
        return cls(**_parse_notation(text))

    @classmethod
    def from_json(cls, obj: dict | str) -> Assembly:
        """Read ``{"encoder": [...], "decoder": [...]}`` given as a dict or as JSON text; exactly those two keys."""
        if isinstance(obj, str):
            return cls(**_json_stacks(_loads(obj), obj))
        return cls(**_json_stacks(obj, repr(obj)))

    def to_json(self) -> dict:
        return {"encoder": list(self.encoder), "decoder": list(self.decoder)}

    def format(self) -> str:
        """The canonical notation: ``enc=1,1,2,4,4 dec=6,6``."""
        return " ".join(f"{SHORT_NAMES[s]}={','.join(map(str, self.blocks(s)))}" for s in STACKS)

    def __str__(self) -> str:
        return self.format()

    # ---- structure ----

    def blocks(self, stack: str) -> tuple[int, ...]:
        return getattr(self, stack_name(stack))

    def spans(self, stack: str) -> list[tuple[int, int]]:
        """(start layer, size) of each block, bottom-up: ``(1, 1, 2)`` -> ``[(0, 1), (1, 1), (2, 2)]``."""
        out, start = [], 0
        for size in self.blocks(stack):
            out.append((start, size))
            start += size
        return out

    @property
    def shape(self) -> str:
        """Block counts ``"E-D"``: how many layers each stack of the assembled model has, e.g. ``"12-6"``."""
        return f"{len(self.encoder)}-{len(self.decoder)}"

    @classmethod
    def teacher(cls, encoder_layers: int, decoder_layers: int) -> Assembly:
        """The teacher itself: every block is the teacher's own layer."""
        return cls(encoder=(1,) * encoder_layers, decoder=(1,) * decoder_layers)

    # ---- fit to a model ----

    def validate(self, encoder_layers: int, decoder_layers: int, granularities: Sequence[int]) -> Assembly:
        """Check against the teacher's depths and the trained granularities; return self so calls can chain.

        Checks, bottom-up per stack, encoder first: every k > 1 was trained, the sizes sum to the depth, every
        module starts on its aligned span. With the sum right, a misaligned module is the only remaining fault.
        """
        gs = normalize_granularities(granularities)
        for stack, depth in zip(STACKS, (encoder_layers, decoder_layers), strict=True):
            _check_stack(SHORT_NAMES[stack], self.blocks(stack), depth, gs)
        return self


def _check_stack(short: str, blocks: tuple[int, ...], depth: int, gs: tuple[int, ...]) -> None:
    for size in blocks:
        if size > 1 and size not in gs:
            trained = ", ".join(map(str, gs)) or "none"
            raise AssemblyError(f"no module of granularity {size} was trained (trained: {trained})")
    total = sum(blocks)
    if total != depth:
        raise AssemblyError(f"{short}: spans sum to {total} but the teacher has {depth} layers")
    start = 0
    for size in blocks:
        if start % size:
            starts = module_starts(size, depth)
            where = f"layer {starts[0]}" if len(starts) == 1 else f"layers {', '.join(map(str, starts))}"
            raise AssemblyError(
                f"{short}: a {size}-module cannot start at layer {start} ({size}-modules start at {where})"
            )
        start += size
