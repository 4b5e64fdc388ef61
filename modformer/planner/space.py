"""The planner's search space as data: every valid assembly, with its predicted cost, and budgets over that cost.

An assembly is a pair (encoder stack, decoder stack); the space is the product of each stack's valid block lists
(`valid_stacks`: teacher layers and modules mixed). The profile's prediction is a sum over blocks plus a fixed
part (see `profiling.cost_model`): latency = fixed + sum of block latencies, memory = zero-layer peak + alpha *
(block parameter and cache bytes). So each stack's share is computed once per stack, and the cost of all pairs is
one outer sum: 85,264 assemblies of a 12+12 teacher cost two vectors of 292, not 85,264 predictions.

A profile measured without memory (`ProfileConfig(memory=False)`) has no measured peak: memory is then the blocks'
parameter and key/value-cache bytes (`memory_source: arithmetic`), which ranks assemblies the same way but is not a
peak figure.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from modformer.errors import ConfigError
from modformer.modular.assembly import STACKS, Assembly, valid_stacks
from modformer.modular.model import ModularModel
from modformer.profiling.cost_model import predict, workload_costs, zero_floor_ms
from modformer.profiling.profile import LatencyProfile, Workload

Stack = tuple[int, ...]

BUDGET_KEYS = {
    "latency_ms": "predicted latency (ms)",
    "memory_mb": "predicted peak memory (MB)",
    "params_m": "parameters (millions, exact count)",
}
# A lower limit: `speedup>=2` asks for at least twice the speed of the teacher served in torch fp32 (its predicted
# latency on the plan's workload), and becomes a latency limit once the search space is built (`Budget.resolved`).
SPEEDUP_KEY = "speedup"
MB = 1e6


@dataclass(frozen=True)
class Budget:
    """Upper limits on predicted cost; None means no limit."""

    latency_ms: float | None = None
    memory_mb: float | None = None
    params_m: float | None = None  # a size limit: teacher parameters / 2 / 1e6 asks for at least 2x smaller
    speedup: float | None = None  # at least this many times faster than the teacher in torch fp32 (see SPEEDUP_KEY)

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        """`"latency_ms<=40,memory_mb<=80,params_m<=30"` and/or `"speedup>=2"`; any part may be left out; `inf` is
        allowed for the upper limits."""
        if text is None or not text.strip():
            return cls()
        limits: dict[str, float] = {}
        for part in text.split(","):
            match = re.fullmatch(r"\s*([a-z_]+)\s*(<=|>=)\s*([^\s]+)\s*", part)
            if not match:
                raise ConfigError(
                    f"budget part {part.strip()!r} is not KEY<=NUMBER or speedup>=NUMBER "
                    "(e.g. latency_ms<=40,memory_mb<=80 or speedup>=2)"
                )
            key, op, value = match.groups()
            if key not in (*BUDGET_KEYS, SPEEDUP_KEY):
                raise ConfigError(f"unknown budget key {key!r}; known: {', '.join([*BUDGET_KEYS, SPEEDUP_KEY])}")
            if (op == ">=") != (key == SPEEDUP_KEY):
                right = f"{SPEEDUP_KEY}>=" if key == SPEEDUP_KEY else f"{key}<="
                raise ConfigError(
                    f"budget {part.strip()!r}: write it {right}{value} ({key} is a {'lower' if key == SPEEDUP_KEY else 'upper'} limit)"
                )
            if key in limits:
                raise ConfigError(f"budget key {key!r} given twice")
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"budget {key}: {value!r} is not a number") from None
            if math.isnan(number) or number < 0:
                raise ConfigError(f"budget {key} must be a number >= 0 (or inf), got {value}")
            if key == SPEEDUP_KEY and not (0 < number < math.inf):
                raise ConfigError(f"budget {SPEEDUP_KEY} must be a finite number > 0, got {value}")
            limits[key] = number
        return cls(**limits)

    def resolved(self, teacher_latency_ms: float) -> Budget:
        """The speed-up limit as a latency limit, given the teacher's predicted latency (the tighter of the two
        where both are given); the speed-up is kept for display."""
        if self.speedup is None:
            return self
        limit = teacher_latency_ms / self.speedup
        latency = limit if self.latency_ms is None else min(self.latency_ms, limit)
        return dataclasses.replace(self, latency_ms=latency)

    def for_search(self) -> Budget:
        """The limits the proxy search can apply to torch costs when engine targets are planned too: parameters
        only. An engine's latency and memory differ from torch's, so an assembly too slow in torch may meet the
        budget in CTranslate2; each (assembly, target) row is checked against the whole budget afterwards."""
        return Budget(params_m=self.params_m)

    def __str__(self) -> str:
        parts = [f"{k}<={_num(getattr(self, k))}" for k in BUDGET_KEYS if getattr(self, k) is not None]
        if self.speedup is not None:
            parts.append(f"{SPEEDUP_KEY}>={_num(self.speedup)}")
        return ",".join(parts) or "none"

    def violation(self, latency_ms: np.ndarray, memory_mb: np.ndarray, params_m: np.ndarray) -> np.ndarray:
        """How far past the budget, summed over limits as fractions of each limit (0 = feasible).

        A limit of 0 counts any positive cost as a violation of size cost/1 (nothing meets it).
        """
        total = np.zeros(np.broadcast(latency_ms, memory_mb, params_m).shape)
        for limit, cost in ((self.latency_ms, latency_ms), (self.memory_mb, memory_mb), (self.params_m, params_m)):
            if limit is None or math.isinf(limit):
                continue
            over = np.maximum(np.asarray(cost, dtype=float) - limit, 0.0)
            total = total + over / (limit if limit > 0 else 1.0)
        return total

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in (*BUDGET_KEYS, SPEEDUP_KEY)}


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def _memory_bytes(blocks, measured: bool) -> float:
    if measured:
        return float(blocks["memory_bytes"].sum())
    return float(blocks["param_bytes"].sum() + blocks["cache_bytes"].sum())


def space_stacks(config) -> dict[str, list[Stack]]:
    """Every valid block list of each stack of a `ModularConfig`, in the order the search space indexes them."""
    return {
        "encoder": valid_stacks(config.encoder_layers, [1, *config.granularities]),
        "decoder": valid_stacks(config.decoder_layers, [1, *config.granularities]),
    }


@dataclass
class SearchSpace:
    """Every valid assembly of one modular checkpoint, with predicted costs on one workload.

    Pair (i, j) is `Assembly(encoder=encoder[i], decoder=decoder[j])`. Cost arrays are per stack; `latency_ms`,
    `memory_mb` and `params` give any pairs' totals.
    """

    encoder: list[Stack]
    decoder: list[Stack]
    workload: Workload
    fixed_latency_ms: float
    enc_latency_ms: np.ndarray
    dec_latency_ms: np.ndarray
    fixed_memory_mb: float
    enc_memory_mb: np.ndarray
    dec_memory_mb: np.ndarray
    fixed_params: int
    enc_params: np.ndarray
    dec_params: np.ndarray
    teacher: tuple[int, int]  # (i, j) of the teacher
    floor_latency_ms: float = 0.0  # no pair is predicted faster than the zero-layer call (`cost_model.predict`)
    memory_source: str = "measured"  # or "arithmetic": the profile has no peak memory; blocks' parameter + cache bytes

    @classmethod
    def build(cls, modular: ModularModel, profile: LatencyProfile, workload: Workload) -> SearchSpace:
        cfg = modular.config
        stacks = space_stacks(cfg)
        costs = workload_costs(profile, workload)
        measured_memory = costs.mem_alpha is not None
        # One prediction gives the fixed parts and checks the profile covers this checkpoint's blocks.
        teacher = Assembly.teacher(cfg.encoder_layers, cfg.decoder_layers)
        base = predict(profile, teacher, workload)
        fixed = base.breakdown[base.breakdown["block"] == "fixed"].iloc[0]
        cost_model = modular.cost_model()
        layer_params = {"encoder": cost_model.encoder_layer_params, "decoder": cost_model.decoder_layer_params}
        per_stack = {}
        for stack in STACKS:
            lat, mem, params = [], [], []
            for blocks in stacks[stack]:
                a = (
                    Assembly(encoder=blocks, decoder=teacher.decoder)
                    if stack == "encoder"
                    else Assembly(encoder=teacher.encoder, decoder=blocks)
                )
                parts = predict(profile, a, workload).breakdown
                mine = parts[parts["stack"] == stack]
                lat.append(float(mine["latency_ms"].sum()))
                mem.append(_memory_bytes(mine, measured_memory) / MB)
                params.append(len(blocks) * layer_params[stack])
            per_stack[stack] = (np.array(lat), np.array(mem), np.array(params, dtype=np.int64))
        return cls(
            encoder=stacks["encoder"],
            decoder=stacks["decoder"],
            workload=workload,
            fixed_latency_ms=float(fixed["latency_ms"]),
            enc_latency_ms=per_stack["encoder"][0],
            dec_latency_ms=per_stack["decoder"][0],
            fixed_memory_mb=float(fixed["memory_bytes"]) / MB if measured_memory else 0.0,
            enc_memory_mb=per_stack["encoder"][1],
            dec_memory_mb=per_stack["decoder"][1],
            fixed_params=cost_model.fixed_params,
            enc_params=per_stack["encoder"][2],
            dec_params=per_stack["decoder"][2],
            teacher=(stacks["encoder"].index(teacher.encoder), stacks["decoder"].index(teacher.decoder)),
            floor_latency_ms=zero_floor_ms(profile, workload),
            memory_source="measured" if measured_memory else "arithmetic",
        )

    # --- pairs ----------------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.encoder) * len(self.decoder)

    def assembly(self, i: int, j: int) -> Assembly:
        return Assembly(encoder=self.encoder[i], decoder=self.decoder[j])

    def index(self, assembly: Assembly) -> tuple[int, int]:
        try:
            return self.encoder.index(tuple(assembly.encoder)), self.decoder.index(tuple(assembly.decoder))
        except ValueError:
            raise ConfigError(f"assembly {assembly} is not in this search space") from None

    def all_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(i, j) index arrays of every assembly, encoder-major."""
        i, j = np.meshgrid(np.arange(len(self.encoder)), np.arange(len(self.decoder)), indexing="ij")
        return i.ravel(), j.ravel()

    # --- costs (vectorised over pairs) ----------------------------------------------------------------------------
    def latency_ms(self, i, j) -> np.ndarray:
        return np.maximum(
            self.fixed_latency_ms + self.enc_latency_ms[i] + self.dec_latency_ms[j], self.floor_latency_ms
        )

    def memory_mb(self, i, j) -> np.ndarray:
        return self.fixed_memory_mb + self.enc_memory_mb[i] + self.dec_memory_mb[j]

    def params(self, i, j) -> np.ndarray:
        return self.fixed_params + self.enc_params[i] + self.dec_params[j]

    def size_ratio(self, i, j) -> np.ndarray:
        return self.params(*self.teacher) / self.params(i, j)

    def speed_ratio(self, i, j) -> np.ndarray:
        return self.latency_ms(*self.teacher) / self.latency_ms(i, j)

    def violation(self, budget: Budget, i, j) -> np.ndarray:
        return budget.violation(self.latency_ms(i, j), self.memory_mb(i, j), self.params(i, j) / 1e6)
