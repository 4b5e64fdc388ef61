"""Refreshing a profile: re-time the teacher now, in every target the profile predicts, and scale its predictions.

A profile's block costs are measured once, in minutes; the machine's speed then moves. On a shared 2-vCPU AMD EPYC VM
the teacher's torch latency, timed 15-30 minutes after its profile, measured 0.91x to 1.15x of the prediction, and
every held-out assembly timed in the same window moved with it: the ranking held (Spearman >= 0.97), the
milliseconds did not (`benchmarks/results/targets.json`, `drift` per cell). Budgets are stated in
milliseconds, so a capacity plan made on such a machine should start from its speed *now*.

`refresh` times the teacher, the one model whose prediction comes straight from a measured call (the profile's
`calibration_generate` rows and the engines' full-depth grid point), at every batch size of the profile (its
shortest source, its longest generation) in every target: torch in this process at the profile's threads and dtype,
engines in their own torch-free process as the profile timed them. The rounds are spread over passes through the
batch sizes (four for torch, eight for an engine, as the profile spreads its own), and summarised by the profile's
statistic: such a VM also has bursts of several seconds in which every call runs up to twice as long, and rounds
timed back to back can all fall inside one (a first version timed 20 rounds in two quick passes and read a
CTranslate2 float32 teacher at 1.46x its prediction, where 21 models round-robin a minute later read 0.95x).

The factor per (target, batch) is the teacher's measured latency over the table's prediction; from then on
`predict` and `EngineCosts` scale every latency of that target by the factor of the nearest batch size (memory is
not scaled). A second refresh replaces the first: its factors are taken against the table, never compounded.
Rankings and speed-ups do not change; milliseconds and which points fit a latency budget do.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from modformer.modular.assembly import Assembly
from modformer.modular.export import export_assembly
from modformer.modular.model import ModularModel
from modformer.profiling.cost_model import predict
from modformer.profiling.engines import EngineCosts, time_engine_models
from modformer.profiling.hardware import torch_dtype
from modformer.profiling.measure import torch_threads
from modformer.profiling.profile import LatencyProfile, Workload
from modformer.profiling.timer import Timer, Timing
from modformer.profiling.validate import check_profile_model, sample_models
from modformer.serving.targets import Target

Progress = Callable[[int, int, str], None]
PASSES = 4  # a refresh's rounds are spread over this many walks through the batch sizes (engines: twice as many)


def refresh_workloads(profile: LatencyProfile) -> list[Workload]:
    """One workload per batch size of the profile: its shortest source and longest generation (a grid point, so the
    engines' fit answers there)."""
    grid = profile.grid
    return [Workload(b, min(grid["src_lens"]), max(grid["gen_lens"])) for b in grid["batch_sizes"]]


def refresh(
    profile: LatencyProfile,
    modular: ModularModel,
    *,
    repeats: int = 20,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> dict:
    """Time the teacher in every target of `profile` now and store the factors in `profile.meta["refresh"]` (see the
    module docstring); returns that record."""
    check_profile_model(profile, modular)
    settings = profile.meta.get("settings", {})
    threads = settings.get("threads") or torch.get_num_threads()
    workloads = refresh_workloads(profile)
    c = modular.config
    teacher = Assembly.teacher(c.encoder_layers, c.decoder_layers)
    profile.meta.pop("refresh", None)  # factors against the table, never against an earlier refresh
    targets = profile.targets
    rows = []

    def tick(done: int, what: str) -> None:
        if on_progress:
            on_progress(done, len(targets), what)

    tick(0, f"{targets[0]}: the teacher, {len(workloads)} batch size(s)")
    with torch_threads(threads), torch.no_grad():
        model = modular.assemble(teacher).to(settings.get("device", "cpu"), torch_dtype(settings.get("dtype", "fp32")))
        timer, vocab = Timer(settings.get("device", "cpu")), int(modular.teacher.config.vocab_size)
        samples: list[list[float]] = [[] for _ in workloads]
        for pass_ in range(PASSES):  # the batch sizes in turn, each pass a share of the rounds
            for w, kept in zip(workloads, samples, strict=True):
                warmup = 2 if pass_ == 0 else 1
                kept += sample_models([model], w, timer, vocab, seed, warmup, -(-repeats // PASSES))[0]
        for w, kept in zip(workloads, samples, strict=True):
            predicted = predict(profile, teacher, w).latency_ms
            rows.append(_row(targets[0], w, predicted, Timing.from_samples(kept), profile.statistic))
        del model
    if len(targets) > 1:
        costs = EngineCosts.of(profile)  # without a refresh: it was taken out above
        with tempfile.TemporaryDirectory() as tmp:
            for n, name in enumerate(targets[1:], start=1):
                tick(n, f"{name}: the teacher, {len(workloads)} batch size(s)")
                target = Target.parse(name)
                folder = Path(tmp) / f"teacher-{n}"
                export_assembly(modular, teacher, folder, target=target)
                # as the profile times engines: twice the rounds, in twice the passes
                timed = time_engine_models(
                    [folder], target, workloads, threads=threads, warmup=3, repeats=2 * repeats, passes=2 * PASSES
                )
                for w, per_model in zip(workloads, timed, strict=True):
                    predicted = float(costs.predict(name, c.encoder_layers, c.decoder_layers, w)[0])
                    rows.append(_row(name, w, predicted, Timing.from_samples(per_model[0]), profile.statistic))
    factors: dict[str, dict[str, float]] = {}
    for row in rows:
        factors.setdefault(row["target"], {})[str(row["batch"])] = row["measured_ms"] / row["predicted_ms"]
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": teacher.format(),
        "repeats": repeats,
        "statistic": profile.statistic,
        "threads": threads,
        "factors": factors,
        "rows": rows,
    }
    profile.meta["refresh"] = record
    tick(len(targets), "done")
    return record


def _row(target: str, w: Workload, predicted_ms: float, timed: Timing, statistic: str) -> dict:
    return {
        "target": target,
        "batch": w.batch,
        "src_len": w.src_len,
        "gen_len": w.gen_len,
        "predicted_ms": float(predicted_ms),
        "measured_ms": float(timed.value(statistic)),
    }
