"""Checking a profile against reality: held-out assemblies measured end to end, compared with `predict`.

The held-out assemblies are random valid assemblies (seeded) that nothing was fitted on: blocks are measured one at
a time, and only the zero-layer model and the teacher calibrate the memory figure. They are spread evenly (on a log
scale) over the *depth ratio*, teacher layers / assembly blocks, from 1.1x to 6x by default (12+12 layers down to
2+2 blocks is 6x). The size ratio cannot serve: embeddings and the LM head stay in every assembly, so for the 12+12,
d_model 128 benchmark teacher the smallest assembly is only 3.3x smaller in parameters.

Each assembly is assembled in memory (`ModularModel.assemble` builds exactly what `export` writes) and timed with the
call the profile's fixed cost was measured with (`generate_fixed`: greedy, exactly G new tokens), all assemblies
round-robin; its peak memory is measured in a fresh process from a saved copy. One assembly is also exported,
reloaded with `AutoModelForSeq2SeqLM.from_pretrained`, and timed side by side with the in-memory model and with a
model of the same config built directly by `transformers` (random weights: the cost does not depend on them), with
twice the validation's rounds; its ratios are medians of per-round ratios (`paired_ratio`).

Figures per batch size (percentages are 0-100; the Spearman correlation is the Pearson correlation of the ranks):
``latency_mape``, ``latency_max_ape``, ``latency_within_10pct``, ``latency_spearman``, the same for memory, and
``speedup_realised_min_fraction``: the least, over the assemblies, of (measured teacher latency / measured assembly
latency) / (predicted teacher latency / predicted assembly latency).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from modformer.errors import CheckpointError, ConfigError
from modformer.modular.assembly import STACKS, Assembly, valid_stacks
from modformer.modular.model import ModularModel
from modformer.profiling.cost_model import predict
from modformer.profiling.hardware import torch_dtype
from modformer.profiling.measure import generate_fixed, torch_threads
from modformer.profiling.memory import peak_memory
from modformer.profiling.profile import LatencyProfile, Workload
from modformer.profiling.timer import Case, Timer, Timing

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------------------------------------------
# Choosing held-out assemblies
# --------------------------------------------------------------------------------------------------------------------


def depth_ratio(assembly: Assembly) -> float:
    """Teacher layers / assembly blocks: 2.0 when the assembly has half as many blocks as the teacher has layers."""
    return (sum(assembly.encoder) + sum(assembly.decoder)) / (len(assembly.encoder) + len(assembly.decoder))


def choose_assemblies(
    encoder_layers: int,
    decoder_layers: int,
    granularities: Sequence[int],
    n: int,
    *,
    seed: int = 0,
    low: float = 1.1,
    high: float = 6.0,
) -> list[Assembly]:
    """`n` distinct random valid assemblies (never the teacher) whose depth ratios spread from `low` to `high`.

    Targets are spaced evenly on a log scale, the top one capped at the largest reachable ratio; each target takes
    a random (encoder blocks, decoder blocks) pair among those nearest to it, then a random block list of each
    count. Seeded: the same arguments give the same list.
    """
    if n < 1:
        raise ConfigError(f"the number of held-out assemblies must be >= 1, got {n}")
    rng = random.Random(seed)
    lists = {s: {} for s in STACKS}
    for stack, depth in zip(STACKS, (encoder_layers, decoder_layers), strict=True):
        for blocks in valid_stacks(depth, granularities):
            lists[stack].setdefault(len(blocks), []).append(blocks)
    teacher = (encoder_layers, decoder_layers)
    total = encoder_layers + decoder_layers
    pairs = [(e, d) for e in lists["encoder"] for d in lists["decoder"] if (e, d) != teacher]
    available = sum(len(lists["encoder"][e]) * len(lists["decoder"][d]) for e, d in pairs)
    if n > available:
        raise ConfigError(f"asked for {n} held-out assemblies but only {available} exist besides the teacher")
    top = min(high, max(total / (e + d) for e, d in pairs))
    targets = np.geomspace(min(low, top), top, n) if n > 1 else np.array([min(low, top)])
    chosen: list[Assembly] = []
    for target in targets:
        distance = {p: abs(math.log(total / sum(p)) - math.log(target)) for p in pairs}
        for _ in range(1000):
            best = min(distance.values())
            near = [p for p, dist in distance.items() if dist <= best + 1e-9]
            e, d = rng.choice(sorted(near))
            a = Assembly(encoder=rng.choice(lists["encoder"][e]), decoder=rng.choice(lists["decoder"][d]))
            if a not in chosen:
                chosen.append(a)
                break
            if _exhausted(lists, (e, d), chosen):
                distance.pop((e, d))
    return chosen


def _exhausted(lists: dict, pair: tuple[int, int], chosen: list[Assembly]) -> bool:
    e, d = pair
    taken = sum(1 for a in chosen if (len(a.encoder), len(a.decoder)) == pair)
    return taken >= len(lists["encoder"][e]) * len(lists["decoder"][d])


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------


def default_workloads(profile: LatencyProfile) -> list[Workload]:
    """One workload per measured batch size, at the middle source length (between grid points when the grid has
    two: interpolation is checked too) and the longest generation length."""
    grid = profile.grid
    srcs = grid["src_lens"]
    return [Workload(b, (min(srcs) + max(srcs)) // 2, max(grid["gen_lens"])) for b in grid["batch_sizes"]]


def check_profile_model(profile: LatencyProfile, modular: ModularModel) -> None:
    """Refuse to validate a profile with another model's checkpoint."""
    recorded = profile.meta.get("model", {})
    c = modular.config
    for key, value in (
        ("teacher_config_fingerprint", c.teacher_config_fingerprint),
        ("encoder_layers", c.encoder_layers),
        ("decoder_layers", c.decoder_layers),
    ):
        if recorded.get(key) != value:
            raise CheckpointError(
                f"the profile was measured on another model ({key} {recorded.get(key)!r}, these modules: {value!r})"
            )


def fixed_inputs(vocab: int, w: Workload, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random source ids (and their all-ones mask) of `w`'s shape; the same for the same (vocab, w, seed)."""
    g = torch.Generator().manual_seed(seed * 7919 + w.batch * 31 + w.src_len)
    ids = torch.randint(4, vocab, (w.batch, w.src_len), generator=g).to(device)
    return ids, torch.ones_like(ids)


def sample_models(
    models: list[nn.Module], w: Workload, timer: Timer, vocab: int, seed: int, warmup: int, repeats: int
) -> list[list[float]]:
    """The milliseconds of every round of each model's `generate_fixed`, the models called round-robin."""
    ids, mask = fixed_inputs(vocab, w, seed, timer.device)
    cases = [Case(fn=lambda m=m: generate_fixed(m, ids, mask, w.gen_len)) for m in models]
    with torch.no_grad():
        return timer.interleaved_samples(cases, warmup=warmup, repeats=repeats)


def time_models(
    models: list[nn.Module], w: Workload, timer: Timer, vocab: int, seed: int, warmup: int, repeats: int
) -> list[Timing]:
    """Timings of each model's `generate_fixed`, round-robin (`sample_models`, summarised)."""
    return [Timing.from_samples(s) for s in sample_models(models, w, timer, vocab, seed, warmup, repeats)]


def paired_ratio(a_ms: Sequence[float], b_ms: Sequence[float]) -> float:
    """Median over rounds of a's time / b's time in the same round.

    Two calls of one round run seconds apart at most, so a burst of load from other tenants slows both and cancels
    out of their ratio; the median then drops the rounds a burst hit only one of. (A ratio of two minima compares
    the single luckiest call of each, which on a shared machine can come from different minutes.)
    """
    if len(a_ms) != len(b_ms) or not a_ms:
        raise ConfigError("paired timings need the same, non-zero number of rounds")
    return float(np.median(np.asarray(a_ms, dtype=float) / np.asarray(b_ms, dtype=float)))


@dataclass(frozen=True)
class _Bench:
    """How one validation measures: on the profile's device, dtype and thread count, summarising rounds by the
    profile's statistic, with one seed; `tick` reports each step's start."""

    modular: ModularModel
    timer: Timer
    dtype_name: str
    statistic: str
    vocab: int
    seed: int
    warmup: int
    repeats: int
    tick: Callable[[str], None]

    @property
    def device(self) -> str:
        return self.timer.device

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype_name)


class _Steps:
    """Counts a validation's steps for `on_progress`: `tick` before each, `finish` at the end."""

    def __init__(self, total: int, on_progress: Progress | None):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def tick(self, info: str) -> None:
        if self.on_progress:
            self.on_progress(self.done, self.total, info)
        self.done += 1

    def finish(self) -> None:
        if self.on_progress:
            self.on_progress(self.total, self.total, "done")


def validate(
    profile: LatencyProfile,
    modular: ModularModel,
    n: int = 20,
    workloads: Sequence[Workload] | None = None,
    *,
    seed: int = 0,
    warmup: int = 2,
    repeats: int = 20,
    memory: bool | None = None,
    export_check: bool = True,
    on_progress: Progress | None = None,
) -> dict:
    """Measure `n` held-out assemblies end to end and compare with `predict`; store and return the figures.

    Runs on the profile's device, dtype and thread count, and summarises the repeats by the profile's statistic
    (its blocks' minimum or median: like with like); both the minimum and the median are kept per row. `memory`
    (default: when the profile holds memory measurements) adds one fresh process per assembly and workload. The
    result is also kept in `profile.meta["validation"]`.
    """
    check_profile_model(profile, modular)
    settings = profile.meta.get("settings", {})
    workloads = list(workloads) if workloads else default_workloads(profile)
    memory = bool((profile.table["kind"] == "peak_memory").any()) if memory is None else memory
    c = modular.config
    held_out = choose_assemblies(c.encoder_layers, c.decoder_layers, c.granularities, n, seed=seed)
    assemblies = [Assembly.teacher(c.encoder_layers, c.decoder_layers), *held_out]
    steps = _Steps(
        len(workloads) * (1 + (len(held_out) if memory else 0)) + (len(workloads) if export_check else 0),
        on_progress,
    )
    bench = _Bench(
        modular=modular,
        timer=Timer(settings.get("device", "cpu")),
        dtype_name=settings.get("dtype", "fp32"),
        statistic=profile.statistic,
        vocab=int(modular.teacher.config.vocab_size),
        seed=seed,
        warmup=warmup,
        repeats=repeats,
        tick=steps.tick,
    )
    export: dict = {}
    with torch_threads(settings.get("threads")), tempfile.TemporaryDirectory() as tmp:
        models = [modular.assemble(a).to(device=bench.device, dtype=bench.dtype) for a in assemblies]
        rows = _latency_rows(bench, profile, assemblies, models, workloads)
        if memory:
            _measure_peak_memory(bench, rows, dict(zip(held_out, models[1:], strict=True)), workloads, Path(tmp))
        if export_check:
            # Three models only, and a ratio of two of them is the figure: twice the rounds, for a steadier minimum.
            twice = dataclasses.replace(bench, repeats=2 * repeats)
            export = _export_check(twice, held_out[0], models[1], workloads, Path(tmp))
    result = _result(pd.DataFrame(rows), bench, workloads, export, held_out=len(held_out))
    profile.meta["validation"] = result
    steps.finish()
    return result


def _latency_rows(
    bench: _Bench,
    profile: LatencyProfile,
    assemblies: list[Assembly],
    models: list[nn.Module],
    workloads: list[Workload],
) -> list[dict]:
    """One row per assembly and workload: predicted and measured latency (the first assembly is the teacher)."""
    rows = []
    for w in workloads:
        bench.tick(f"end-to-end latency, {w}")
        timings = time_models(models, w, bench.timer, bench.vocab, bench.seed, bench.warmup, bench.repeats)
        for a, model, t in zip(assemblies, models, timings, strict=True):
            p = predict(profile, a, w)
            rows.append(
                {
                    "assembly": a.format(),
                    "shape": a.shape,
                    "held_out": a != assemblies[0],
                    "depth_ratio": depth_ratio(a),
                    "params": _params(model),
                    "batch": w.batch,
                    "src_len": w.src_len,
                    "gen_len": w.gen_len,
                    "predicted_ms": p.latency_ms,
                    "measured_ms": t.value(bench.statistic),
                    "measured_median_ms": t.median_ms,
                    "measured_min_ms": t.min_ms,
                    "predicted_mem_bytes": p.memory_bytes,
                    "measured_mem_bytes": None,
                    "extrapolated": p.extrapolated,
                }
            )
    return rows


def _measure_peak_memory(
    bench: _Bench, rows: list[dict], models: dict[Assembly, nn.Module], workloads: list[Workload], tmp: Path
) -> None:
    """Fill in `measured_mem_bytes` of `rows`: each model saved under `tmp`, then run in a fresh process."""
    saved = {}
    for i, (a, model) in enumerate(models.items(), start=1):
        saved[a] = tmp / f"a{i}"
        model.save_pretrained(saved[a])
    for w in workloads:
        for a, folder in saved.items():
            bench.tick(f"peak memory {a.shape}, {w}")
            peak = peak_memory(
                folder,
                batch=w.batch,
                src_len=w.src_len,
                gen_len=w.gen_len,
                device=bench.device,
                dtype=bench.dtype_name,
                threads=torch.get_num_threads(),
                seed=bench.seed,
            )
            key = (a.format(), w.batch, w.src_len, w.gen_len)
            for r in rows:
                if (r["assembly"], r["batch"], r["src_len"], r["gen_len"]) == key:
                    r["measured_mem_bytes"] = peak


def _result(rows: pd.DataFrame, bench: _Bench, workloads: list[Workload], export: dict, *, held_out: int) -> dict:
    """The validation record kept in the profile's metadata."""
    if rows["extrapolated"].any():
        log.warning("some validation workloads lie outside the profile's grid: their predictions are extrapolated")
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "n": held_out,
        "seed": bench.seed,
        "repeats": bench.repeats,
        "statistic": bench.statistic,
        "workloads": [vars(w) for w in workloads],
        "selection": "random valid assemblies, depth ratio spread log-evenly over 1.1x-6x (capped at the largest)",
        "per_batch": summarise(rows),
        "export": export,
        "rows": rows.astype(object).where(rows.notna(), None).to_dict(orient="records"),
    }


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _export_check(
    bench: _Bench, assembly: Assembly, in_memory: nn.Module, workloads: list[Workload], tmp: Path
) -> dict:
    """Export one assembly, reload it with transformers alone, and time it beside the in-memory assembly and a
    model of the same config built directly by transformers."""
    from transformers import AutoModelForSeq2SeqLM

    from modformer.modular.export import export_assembly

    out = tmp / "export"
    export_assembly(bench.modular, assembly, out)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out, dtype=bench.dtype).to(bench.device).eval()
    torch.manual_seed(bench.seed)
    native = reloaded.__class__(reloaded.config).to(device=bench.device, dtype=bench.dtype).eval()
    native.generation_config = reloaded.generation_config
    per_workload = []
    for w in workloads:
        bench.tick(f"export vs native, {w}")
        per_workload.append(_export_figures(bench, w, in_memory, reloaded, native))
    worst = max(per_workload, key=lambda r: abs(r["export_vs_native_ratio"] - 1.0))
    return {
        "assembly": assembly.format(),
        "per_workload": per_workload,
        "export_vs_native_ratio": worst["export_vs_native_ratio"],
        "outputs_match": all(r["outputs_match"] for r in per_workload),
    }


def _export_figures(bench: _Bench, w: Workload, in_memory: nn.Module, reloaded: nn.Module, native: nn.Module) -> dict:
    """One workload of the export check: whether the reloaded export generates the same ids, and the timings."""
    ids, mask = fixed_inputs(bench.vocab, w, bench.seed, bench.device)
    with torch.no_grad():
        same = torch.equal(
            generate_fixed(in_memory, ids, mask, w.gen_len), generate_fixed(reloaded, ids, mask, w.gen_len)
        )
    samples = sample_models(
        [in_memory, reloaded, native], w, bench.timer, bench.vocab, bench.seed, bench.warmup, bench.repeats
    )
    ms = [Timing.from_samples(s).value(bench.statistic) for s in samples]
    return {
        "batch": w.batch,
        "src_len": w.src_len,
        "gen_len": w.gen_len,
        "assembled_ms": ms[0],
        "exported_ms": ms[1],
        "native_ms": ms[2],
        "export_vs_native_ratio": paired_ratio(samples[1], samples[2]),
        "export_vs_native_ratio_of_statistic": ms[1] / ms[2],
        "export_vs_assembled_ratio": paired_ratio(samples[1], samples[0]),
        "outputs_match": bool(same),
    }


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def _errors(predicted: pd.Series, measured: pd.Series) -> dict:
    ape = ((predicted - measured).abs() / measured * 100.0).astype(float)
    return {
        "mape": float(ape.mean()),
        "max_ape": float(ape.max()),
        "within_10pct": float((ape <= 10.0).mean() * 100.0),
        "spearman": float(predicted.rank().corr(measured.rank())) if len(ape) > 1 else float("nan"),
    }


def summarise(rows: pd.DataFrame) -> dict[str, dict]:
    """Validation figures per batch size from the per-assembly rows (see the module docstring)."""
    out = {}
    for batch, group in rows.groupby("batch"):
        held = group[group["held_out"]]
        teacher = group[~group["held_out"]]
        figures = {f"latency_{k}": v for k, v in _errors(held["predicted_ms"], held["measured_ms"]).items()}
        mem = held.dropna(subset=["measured_mem_bytes", "predicted_mem_bytes"])
        if not mem.empty:
            errors = _errors(mem["predicted_mem_bytes"].astype(float), mem["measured_mem_bytes"].astype(float))
            figures.update({f"memory_{k}": v for k, v in errors.items()})
        if not teacher.empty:
            t_pred, t_meas = float(teacher["predicted_ms"].iloc[0]), float(teacher["measured_ms"].iloc[0])
            fraction = (t_meas / held["measured_ms"]) / (t_pred / held["predicted_ms"])
            figures["speedup_realised_min_fraction"] = float(fraction.min())
            figures["teacher_latency_ape"] = abs(t_pred - t_meas) / t_meas * 100.0
        figures["assemblies"] = len(held)
        out[str(int(batch))] = figures
    return out
