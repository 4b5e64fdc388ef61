"""Strategies: deterministic sequences of assemblies of growing compression.

**One stack** (``stack_sequence``). For each block count b from the stack's depth down to the smallest reachable one
(counts that no valid block list has are skipped), take the valid block list with b blocks that

1. uses the finest modules (*fine-to-coarse*): compare the block sizes sorted from largest to smallest, and the
   smaller sequence wins. So first the smallest maximum block size, then the fewest blocks of that size, then the
   smallest next size, and so on;
2. among lists made of the same sizes, reads best from the bottom (*coarse at the bottom*): teacher layers lowest,
   then the modules from the coarsest up, so the finest modules sit at the top of the stack. A module starts as the
   bottom layer of its span: at the bottom of the stack its input is what that layer saw in the teacher, and the top
   block, whose output the head (or the decoder's cross-attention) reads, spans the fewest layers. Measured on
   Multi30k val, two seeds at 2,000 and 4,000 steps (docs/decoder-gap.md, sections 8 and 10): in the decoder
   4,4,2,2 above 2,2,4,4, 4,2,2,2,2 above 2,2,2,2,4 and 6,2,2,2 above 2,2,2,6 in every run of both defaults; in the
   encoder 4,4,2,2 above 2,2,4,4 in every run with dropout, a draw without it. Teacher layers stay below the
   modules, as in the seed's rule: there the measurements disagree (teacher layers on top won for an 8-block
   encoder and a 10-block decoder, lost for an 8-block decoder).

For 12 layers with modules {2, 3, 4, 6}: 11 blocks -> 1 x10, 2; 6 -> 2 x6; 5 -> 3,3,2,2,2; 4 -> 3 x4; 3 -> 4 x3;
2 -> 6,6. (Rule 1 compares all sizes, not only the largest: 3,3,2,1,3 also has largest block 3, but it uses three
3-modules where two suffice.) With the default modules {2, 4, 6}: 6 -> 2 x6; 5 -> 4,2,2,2,2; 4 -> 4,4,2,2;
3 -> 4 x3; 2 -> 6,6.

**size-first** (smallest model for a size ratio). Start from the teacher. At each step advance one stack to the next
entry of its stack sequence: the stack whose current blocks hold more parameters (block count x parameters of one
layer of that stack), the decoder on a tie. A stack at the last entry of its sequence is no longer advanced; the
sequence ends when both stacks are at their last entry. Both stacks shrink, keeping their parameters balanced.

**speed-first** (fastest model for a speed ratio). Start from the teacher. Advance the decoder through its whole stack
sequence first (a decoder block runs once per generated token, an encoder block once per input), then the encoder.

Both sequences start with the teacher (ratio 1.0) and every step removes at least one block, so the size ratio
(teacher parameters / assembly parameters) grows strictly along size-first and the estimated speed ratio
(``CostModel.est_cost`` of the teacher / of the assembly) grows strictly along speed-first.

**Choosing by ratio** (``assembly_for_ratio``). The first assembly of the strategy's sequence whose ratio is at least
the requested R: the size ratio for size-first; for speed-first the given ``speed_ratio`` predictor (a measured
latency profile) if any, else ``CostModel.speed_ratio``. R below 1 is an error, and so is an R that no assembly of
the sequence reaches; that error names the largest ratio the strategy reaches.

Pure Python, like ``assembly``: the speed figures here are an estimate used until a hardware profile exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from modformer.errors import AssemblyError, ConfigError
from modformer.modular.assembly import Assembly, normalize_granularities, sizes_at

STRATEGIES = ("size-first", "speed-first")

_SHAPE_RE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
# Ratios are compared with a little slack so that "exactly 2x" is not missed through float rounding.
_RATIO_SLACK = 1e-9


# --------------------------------------------------------------------------------------------------------------------
# One stack
# --------------------------------------------------------------------------------------------------------------------


def _preference(blocks: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[tuple[bool, int], ...]]:
    """Sort key of the rule above: finest sizes first (sizes sorted largest-first), then read from the bottom,
    teacher layers before modules and coarser modules before finer ones."""
    return tuple(sorted(blocks, reverse=True)), tuple((k != 1, -k) for k in blocks)


@lru_cache(maxsize=256)
def _best_by_count(depth: int, gs: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """block count -> preferred valid block list with that many blocks, for the whole stack.

    Dynamic programming over the start layer: best[s][r] is the preferred tiling of layers [s, depth) with r blocks.
    Both parts of the preference survive putting the same block k underneath (sorted sizes compare like count
    vectors, which adding k preserves; a common first element preserves lexicographic order), so the preferred
    tiling from s is k + the preferred tiling from s + k for the best k.
    """
    best: list[dict[int, tuple[int, ...]]] = [{} for _ in range(depth + 1)]
    best[depth][0] = ()
    for s in range(depth - 1, -1, -1):
        here = best[s]
        for k in sizes_at(s, depth, gs):
            for r, rest in best[s + k].items():
                candidate = (k, *rest)
                if r + 1 not in here or _preference(candidate) < _preference(here[r + 1]):
                    here[r + 1] = candidate
    return best[0]


def _stack_table(depth: int, granularities: Sequence[int]) -> dict[int, tuple[int, ...]]:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise AssemblyError(f"a stack needs at least one layer, got depth {depth!r}")
    return _best_by_count(depth, normalize_granularities(granularities))


def stack_sequence(depth: int, granularities: Sequence[int]) -> list[tuple[int, ...]]:
    """The preferred block list for every reachable block count, from ``depth`` blocks (the teacher) down."""
    table = _stack_table(depth, granularities)
    return [table[b] for b in sorted(table, reverse=True)]


def stack_for_blocks(depth: int, granularities: Sequence[int], blocks: int) -> tuple[int, ...]:
    """The preferred block list with exactly ``blocks`` blocks; AssemblyError listing the reachable counts if none."""
    table = _stack_table(depth, granularities)
    if blocks not in table:
        gs = normalize_granularities(granularities)
        trained = ", ".join(map(str, gs)) or "none"
        counts = ", ".join(map(str, sorted(table, reverse=True)))
        raise AssemblyError(
            f"no valid {depth}-layer stack has {blocks} blocks with modules of granularity {trained} "
            f"(achievable block counts: {counts})"
        )
    return table[blocks]


def assembly_for_shape(shape: str, encoder_layers: int, decoder_layers: int, granularities: Sequence[int]) -> Assembly:
    """The preferred assembly with the block counts of ``shape`` ("E-D", e.g. "6-6" or "12-3")."""
    match = _SHAPE_RE.fullmatch(shape) if isinstance(shape, str) else None
    if match is None:
        raise AssemblyError(
            f"cannot parse shape {shape!r}: expected 'E-D', encoder and decoder block counts, e.g. '6-6'"
        )
    stacks = []
    for short, depth, count in (("enc", encoder_layers, match.group(1)), ("dec", decoder_layers, match.group(2))):
        try:
            stacks.append(stack_for_blocks(depth, granularities, int(count)))
        except AssemblyError as e:
            raise AssemblyError(f"{short}: {e}") from None
    return Assembly(encoder=stacks[0], decoder=stacks[1])


# --------------------------------------------------------------------------------------------------------------------
# What a strategy needs to know about the model
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """What a strategy needs to know about the model: parameters of one block in each stack, fixed parameters, and a
    rough per-call cost for the speed estimate. Filled from a real model elsewhere.

    Speed estimate (used until a hardware profile exists): an encoder block runs once per sequence over the whole
    source; a decoder block runs once per generated token; per generated token the loop itself (embedding, LM head,
    search bookkeeping) costs ``step_overhead_layers`` decoder-layer equivalents. The unit is one decoder layer for
    one step. ``encoder_layer_cost`` = 1.0 because an encoder layer over a short source costs about one decoder step
    of one layer on a CPU.
    """

    encoder_layer_params: int  # one block: a module of any granularity is one layer, as large as a teacher layer
    decoder_layer_params: int
    fixed_params: int  # embeddings, final norms, LM head, position tables: present in every assembly
    encoder_layers: int  # the teacher's depths
    decoder_layers: int
    granularities: tuple[int, ...]  # trained module granularities (1 is implied)
    gen_tokens: int = 20  # generated tokens per call
    step_overhead_layers: float = 2.0  # per-token cost of the generation loop, in decoder-layer steps
    encoder_layer_cost: float = 1.0  # one encoder layer over the source, in decoder-layer steps

    def __post_init__(self) -> None:
        for name, low in (
            ("encoder_layer_params", 1),
            ("decoder_layer_params", 1),
            ("fixed_params", 0),
            ("encoder_layers", 1),
            ("decoder_layers", 1),
            ("gen_tokens", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"CostModel.{name} must be a whole number >= {low}, got {value!r}")
        for name, positive in (("step_overhead_layers", False), ("encoder_layer_cost", True)):
            value = getattr(self, name)
            bad = (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (positive and value == 0)
            )
            if bad:
                bound = "> 0" if positive else ">= 0"
                raise ConfigError(f"CostModel.{name} must be a finite number {bound}, got {value!r}")
        object.__setattr__(self, "granularities", normalize_granularities(self.granularities))

    @property
    def teacher(self) -> Assembly:
        return Assembly.teacher(self.encoder_layers, self.decoder_layers)

    def params(self, a: Assembly) -> int:
        return (
            self.fixed_params + len(a.encoder) * self.encoder_layer_params + len(a.decoder) * self.decoder_layer_params
        )

    def size_ratio(self, a: Assembly) -> float:
        """Teacher parameters / assembly parameters: 2.0 means half the size."""
        return self.params(self.teacher) / self.params(a)

    def est_cost(self, a: Assembly) -> float:
        """Estimated cost of one call, in decoder-layer steps (see the class docstring)."""
        return len(a.encoder) * self.encoder_layer_cost + self.gen_tokens * (len(a.decoder) + self.step_overhead_layers)

    def speed_ratio(self, a: Assembly) -> float:
        """Estimated teacher time / assembly time: 2.0 means twice as fast."""
        return self.est_cost(self.teacher) / self.est_cost(a)


# --------------------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------------------


def _check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise AssemblyError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")


def _size_first(cost: CostModel, enc: list[tuple[int, ...]], dec: list[tuple[int, ...]]) -> list[Assembly]:
    i = j = 0
    out = [Assembly(enc[i], dec[j])]
    while i < len(enc) - 1 or j < len(dec) - 1:
        enc_params = len(enc[i]) * cost.encoder_layer_params
        dec_params = len(dec[j]) * cost.decoder_layer_params
        if j < len(dec) - 1 and (i == len(enc) - 1 or dec_params >= enc_params):
            j += 1
        else:
            i += 1
        out.append(Assembly(enc[i], dec[j]))
    return out


def _speed_first(enc: list[tuple[int, ...]], dec: list[tuple[int, ...]]) -> list[Assembly]:
    return [Assembly(enc[0], d) for d in dec] + [Assembly(e, dec[-1]) for e in enc[1:]]


def strategy_sequence(name: str, cost: CostModel) -> list[Assembly]:
    """The strategy's assemblies, teacher first, compression growing (rules in the module docstring)."""
    _check_strategy(name)
    enc = stack_sequence(cost.encoder_layers, cost.granularities)
    dec = stack_sequence(cost.decoder_layers, cost.granularities)
    return _size_first(cost, enc, dec) if name == "size-first" else _speed_first(enc, dec)


def assembly_for_ratio(
    name: str,
    cost: CostModel,
    ratio: float,
    speed_ratio: Callable[[Assembly], float] | None = None,
) -> Assembly:
    """The first assembly of the strategy whose ratio is at least ``ratio``.

    size-first measures ``cost.size_ratio``; speed-first measures ``speed_ratio`` if given (a predictor from a
    latency profile), else ``cost.speed_ratio``. ``speed_ratio`` is ignored by size-first.
    """
    _check_strategy(name)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1.0 or math.isinf(ratio):
        raise AssemblyError(f"a compression ratio must be a finite number >= 1.0 (1.0 is the teacher), got {ratio!r}")
    measure_name = "size" if name == "size-first" else "speed"
    measure = cost.size_ratio if name == "size-first" else (speed_ratio or cost.speed_ratio)
    best: tuple[float, Assembly] | None = None
    for a in strategy_sequence(name, cost):
        r = measure(a)
        if r >= ratio * (1 - _RATIO_SLACK):
            return a
        if best is None or r > best[0]:
            best = (r, a)
    assert best is not None  # the sequence always holds the teacher
    raise AssemblyError(
        f"no {name} assembly reaches a {measure_name} ratio of {ratio:g}; "
        f"the largest is {best[0]:.4g} ({best[1].format()}); ask for at most that, or train coarser modules"
    )
