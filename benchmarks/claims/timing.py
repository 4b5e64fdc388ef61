"""Every model timed round-robin beside the teacher, and the speed ratios of the rows."""

from __future__ import annotations

import time

import torch
from harness import JsonCache

from claims.config import TIMING, TIMING_REPEATS
from claims.score import Task
from claims.work import Work
from modformer.profiling.timer import Timer
from modformer.profiling.validate import time_models

TIMING_NAME = "timing-{task}.json"  # every timing run of a task: each model's least and median ms


def time_all(work: Work, task: Task) -> dict[str, tuple[float, float]]:
    """(least ms of TIMING_REPEATS, the teacher's least ms in the same run) of every model in `task.loaders` (the
    teacher among them). They are timed round-robin in one run; models added to the benchmark later are timed in a
    further run beside the teacher, so every speed ratio divides two timings taken side by side. Cached: every run
    is kept (the median beside the least)."""
    cache = JsonCache(work.folder / TIMING_NAME.format(task=task.name))
    cached, threads = cache.data, work.settings.threads
    if cached.get("statistic") != "min":  # an older statistic: time everything again
        cached = {}
    runs = cached.get("runs") or ([{"ms": cached["ms"], "median_ms": cached["median_ms"]}] if "ms" in cached else [])
    timed = {n for r in runs for n in r["ms"]}
    new = [n for n in task.loaders if n not in timed]
    if new and work.report_only:
        work.not_done(f"{task.name} timing of {len(new)} models")
    elif new:
        names = ["teacher", *(n for n in new if n != "teacher")]
        print(f"[timing] {task.name}: {len(names)} models, round-robin, {TIMING}, {threads} threads")
        models = [task.loaders[n]()[0] for n in names]
        vocab = int(models[0].config.vocab_size)
        torch.set_num_threads(threads)
        started = time.perf_counter()
        timings = time_models(models, TIMING, Timer("cpu"), vocab, 0, 2, TIMING_REPEATS)
        work.add_wall(f"{task.name}-timing", time.perf_counter() - started)
        runs.append(
            {
                "ms": {n: t.min_ms for n, t in zip(names, timings, strict=True)},
                "median_ms": {n: t.median_ms for n, t in zip(names, timings, strict=True)},
            }
        )
        cache.data = {
            "workload": str(TIMING),
            "threads": threads,
            "statistic": "min",
            "repeats": TIMING_REPEATS,
            "runs": runs,
        }
        cache.save()
    out: dict[str, tuple[float, float]] = {}
    for r in runs:  # a model timed in several runs keeps its first
        for n, ms in r["ms"].items():
            if n in task.loaders:
                out.setdefault(n, (ms, r["ms"]["teacher"]))
    return out


def add_speed(work: Work, task: Task, rows: list[dict]) -> None:
    """Fill in latency_ms and speed_ratio (teacher ms / model ms, the same run's) of the task's rows."""
    timed = time_all(work, task)
    for r in rows:
        if r["task"] == task.name:
            ms, teacher_ms = timed.get(r["model"], (None, None))
            r["latency_ms"] = ms
            r["speed_ratio"] = teacher_ms / ms if ms else None
