"""One timer for CPU and CUDA: warm-up, repeats, the minimum, the median and a trimmed range.

On CUDA a call is bracketed by two `torch.cuda.Event(enable_timing=True)` and the device is synchronised before the
start (so queued work from the untimed set-up is not charged) and after the end; on the CPU it is
`time.perf_counter`. The thread count is not touched here: the caller fixes it with `torch.set_num_threads` and
records it (see `hardware.fingerprint`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modformer.errors import ConfigError

DEVICES = ("cpu", "cuda")
# What a set of repeats is summarised by: "min" is a call's cost without interference (stable on a shared machine,
# where other tenants slow some calls by tens of per cent for seconds at a time); "median" is the typical call.
STATISTICS = ("min", "median")
_TRIM = 0.10  # share of samples dropped at each end for the trimmed mean


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings of one call, in milliseconds."""

    median_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    trimmed_mean_ms: float  # mean after dropping the top and bottom 10 %
    repeats: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Timing:
        if not samples_ms:
            raise ConfigError("no timing samples: repeats must be at least 1")
        xs = sorted(float(x) for x in samples_ms)
        n = len(xs)
        cut = int(n * _TRIM)
        kept = xs[cut : n - cut] or xs
        return cls(
            median_ms=statistics.median(xs),
            min_ms=xs[0],
            p10_ms=_quantile(xs, 0.10),
            p90_ms=_quantile(xs, 0.90),
            trimmed_mean_ms=sum(kept) / len(kept),
            repeats=n,
        )

    def value(self, statistic: str) -> float:
        """The figure `statistic` (one of `STATISTICS`) names."""
        check_statistic(statistic)
        return self.min_ms if statistic == "min" else self.median_ms


@dataclass(frozen=True)
class Case:
    """One call to time among others (`Timer.interleaved`): `context` is entered and `setup` run, both untimed."""

    fn: Callable[[], object]
    setup: Callable[[], object] | None = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def _torch():
    """torch, imported only for CUDA: a CPU timer also runs in processes that must not load it
    (`modformer.profiling.engine_process`)."""
    import torch

    return torch


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values (numpy's default rule)."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not _torch().cuda.is_available():
        # "GPU", not "CUDA device": every whole word `device` in the message is shown as the flag by the CLI.
        raise ConfigError("device cuda was asked for but torch sees no CUDA GPU; use device cpu", settings="device")


def check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise ConfigError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")


def _check_rounds(warmup: int, repeats: int) -> None:
    if warmup < 0 or repeats < 1:
        raise ConfigError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}")


class Timer:
    """Times single calls on one device; `measure` adds warm-up and repeats, `interleaved` several calls at once."""

    def __init__(self, device: str = "cpu"):
        check_device(device)
        self.device = device

    def time_once(self, fn: Callable[[], object]) -> float:
        """Milliseconds one call of `fn` takes, with the device idle before and after."""
        if self.device == "cuda":
            torch = _torch()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1e3

    def measure(
        self,
        fn: Callable[[], object],
        *,
        warmup: int = 3,
        repeats: int = 20,
        setup: Callable[[], object] | None = None,
    ) -> Timing:
        """Run `fn` `warmup` times untimed, then `repeats` times timed; `setup` runs untimed before every call."""
        return self.interleaved([Case(fn=fn, setup=setup)], warmup=warmup, repeats=repeats)[0]

    def interleaved(self, cases: Sequence[Case], *, warmup: int = 3, repeats: int = 20) -> list[Timing]:
        """Time several calls round-robin: one call of each case per round, `warmup` untimed rounds first.

        Slow drifts of a shared machine then hit every case alike, so differences between cases stay sound; and a
        case's weights are no hotter in the processor's caches than they are inside a whole model.
        """
        return [Timing.from_samples(s) for s in self.interleaved_samples(cases, warmup=warmup, repeats=repeats)]

    def interleaved_samples(self, cases: Sequence[Case], *, warmup: int = 3, repeats: int = 20) -> list[list[float]]:
        """The raw milliseconds behind `interleaved`, one list per case (for pooling the samples of several runs)."""
        _check_rounds(warmup, repeats)
        samples: list[list[float]] = [[] for _ in cases]
        for round_ in range(warmup + repeats):
            for case, kept in zip(cases, samples, strict=True):
                with case.context():
                    if case.setup is not None:
                        case.setup()
                    elapsed = self.time_once(case.fn)
                if round_ >= warmup:
                    kept.append(elapsed)
        return samples

    def settle(
        self, fn: Callable[[], object], *, window: int = 5, target: float = 1.15, max_seconds: float = 120.0
    ) -> float:
        """Call `fn` in windows of `window` calls until a window's median / minimum is at most `target` (the machine
        is quiet), or `max_seconds` have passed; returns the last window's median / minimum.

        For benchmarks on a shared machine: start measuring in a quiet spell rather than in the middle of a burst.
        """
        if window < 2 or target < 1.0:
            raise ConfigError(f"settle needs window >= 2 and target >= 1, got {window} and {target}")
        started = time.perf_counter()
        while True:
            xs = [self.time_once(fn) for _ in range(window)]
            spread = statistics.median(xs) / min(xs)
            if spread <= target or time.perf_counter() - started >= max_seconds:
                return spread


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    device: str = "cpu",
    setup: Callable[[], object] | None = None,
) -> Timing:
    """Time `fn` on `device` (see `Timer.measure`)."""
    return Timer(device).measure(fn, warmup=warmup, repeats=repeats, setup=setup)
