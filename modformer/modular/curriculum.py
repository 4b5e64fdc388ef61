"""Which spans of the teacher a training step replaces, and with which modules.

Multi-grained module replacing: every step samples one *hybrid* assembly per stack. Walking a stack from the
bottom, at each layer i where at least one module starts (i % k == 0 and i + k <= depth), the walk replaces the
span with probability `replace_rate(p)`; it picks the granularity k among those that fit with weights
`granularity_weights(p)`, and jumps to i + k. Otherwise teacher layer i stays and the walk moves to i + 1. So one
hybrid mixes teacher layers and modules of several granularities, and every module is trained in the company of
the others it will be assembled with.

Curriculum (p = step / total steps, from 0 to 1):
- replacement rate grows linearly from `replace_start` (0.5) to `replace_end` (1.0): early hybrids are mostly
  teacher, so a fresh module learns against inputs close to the teacher's; late hybrids are mostly modules, as
  the assemblies people will deploy are.
- coarse-to-fine: granularity k is drawn with weight k ** (1 - 2p). At p = 0 the weight is proportional to k
  (coarse modules, which have the most to learn, are sampled most); at p = 0.5 all are equal; at p = 1 the weight
  is proportional to 1/k, so the fine modules finish training in hybrids whose coarse parts have settled.
Without the curriculum (`coarse_to_fine=False`) the rate is fixed at `replace_end` and k is drawn with the constant
weight k ** `coarse_bias`: uniform at 0 (the default), proportional to k at 1 (coarse modules, which have the most
to learn and cost the least per layer they replace, drawn most).

Deployed stacks (`deployed_share` > 0): with that probability a stack is not walked but drawn uniformly from the
stacks the strategies deploy (`strategies.stack_sequence`: one preferred stack per block count, the teacher's left
out), so that the stacks people assemble, e.g. `dec=4,4,4`, are trained whole, each module on the input it gets
when deployed. A random walk draws such a stack whole rarely (`dec=4,4,4`: about 2 % of late steps).

Teacher encoder (`teacher_encoder_share` > 0): with that probability the hybrid's encoder is the teacher's own, whole.
Every assembly that keeps the encoder (12-6, 12-3, 12-2, ...: the speed-first end, where the decoder's per-token cost
is cut) feeds its decoder modules the teacher encoder's output, but at a replacement rate of 1 (late in the
curriculum, and always without it) a walk never leaves the whole encoder as the teacher's, so the decoder modules
would never be trained on that input.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from modformer.errors import ConfigError
from modformer.modular.assembly import Assembly
from modformer.modular.strategies import stack_sequence


@dataclass(frozen=True)
class Curriculum:
    replace_start: float = 0.5  # replacement rate at the first step
    replace_end: float = 1.0  # ... and at the last
    coarse_to_fine: bool = True  # False: constant granularity weights k ** coarse_bias and a constant rate
    coarse_bias: float = 0.0  # without the curriculum: weight k ** coarse_bias (0 = uniform)

    def __post_init__(self):
        for name in ("replace_start", "replace_end"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if not -4.0 <= self.coarse_bias <= 4.0:  # also catches NaN
            raise ConfigError(f"coarse_bias must be in [-4, 4], got {self.coarse_bias}")
        if self.coarse_bias != 0.0 and self.coarse_to_fine:
            raise ConfigError(
                "coarse_bias sets constant granularity weights: it needs the curriculum off (--no-curriculum)"
            )

    def replace_rate(self, progress: float) -> float:
        if not self.coarse_to_fine:
            return self.replace_end
        p = min(max(progress, 0.0), 1.0)
        return self.replace_start + (self.replace_end - self.replace_start) * p

    def granularity_weights(self, granularities: Sequence[int], progress: float) -> dict[int, float]:
        if not self.coarse_to_fine:
            return {k: float(k) ** self.coarse_bias for k in granularities}
        p = min(max(progress, 0.0), 1.0)
        return {k: float(k) ** (1.0 - 2.0 * p) for k in granularities}


def sample_stack(
    depth: int, granularities: Sequence[int], rate: float, weights: dict[int, float], rng: random.Random
) -> tuple[int, ...]:
    """One random stack of teacher layers (1) and aligned modules (k), bottom-up."""
    blocks, i = [], 0
    while i < depth:
        fits = [k for k in granularities if i % k == 0 and i + k <= depth]
        if fits and rng.random() < rate:
            k = rng.choices(fits, weights=[weights[k] for k in fits])[0]
        else:
            k = 1
        blocks.append(k)
        i += k
    return tuple(blocks)


def sample_hybrid(
    encoder_layers: int,
    decoder_layers: int,
    granularities: Sequence[int],
    curriculum: Curriculum,
    progress: float,
    rng: random.Random,
    deployed_share: float = 0.0,
    teacher_encoder_share: float = 0.0,
) -> Assembly:
    """A hybrid assembly for one training step; always holds at least one module (else nothing would learn).
    Each stack is, with probability `deployed_share`, one the strategies deploy, and the encoder, with probability
    `teacher_encoder_share`, the teacher's own (module docstring)."""
    rate = curriculum.replace_rate(progress)
    weights = curriculum.granularity_weights(granularities, progress)

    def stack(depth: int) -> tuple[int, ...]:
        if deployed_share > 0 and rng.random() < deployed_share:  # no draw at 0: the walks stay as they were
            return rng.choice(stack_sequence(depth, granularities)[1:])
        return sample_stack(depth, granularities, rate, weights, rng)

    while True:
        if teacher_encoder_share > 0 and rng.random() < teacher_encoder_share:  # no draw at 0, as above
            enc = (1,) * encoder_layers
        else:
            enc = stack(encoder_layers)
        dec = stack(decoder_layers)
        if max(enc + dec) > 1:
            return Assembly(encoder=enc, decoder=dec)
