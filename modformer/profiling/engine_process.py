"""Time a CTranslate2 model, or measure its peak memory, in a fresh process of its own that never loads torch.

Why a process of its own: a server runs the engine without torch beside it, and torch's OpenMP runtime beside
CTranslate2's changes what the engine's threads cost. On a 2-vCPU AMD EPYC VM, the 1+12-layer depth model of the
12+12 Multi30k teacher in float32 at batch 1, with two intra-op threads, took 187 ms in a process where torch had run
with two threads. The same model took 14.1 ms where torch kept one thread. So the profile's engine grid, the plan's
validation timing and the benchmarks' held-out points all go through `time_models` here.

This removes the one cause that the process has; it does not make two intra-op threads fast on every machine. On
the same VM, in such a fresh process, two threads later took 25-29 ms against 13-17 ms for one. The two-thread grid
of one profile ran about 10x the one-thread grid. OpenMP threads that spin at a barrier suffer when the hypervisor
deschedules a sibling vCPU. Profile the thread count you will serve with, and compare thread counts on your machine.

The parent gives the tokens (it has the tokenizer). The child loads only `ctranslate2` and this module's torch-free
helpers (`modformer.profiling.timer`, `modformer.profiling.memory`), and answers with one JSON line.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from modformer.errors import ConfigError
from modformer.io import die_with_parent

_MARKER = "modformer-engine-process "


def _run(spec: dict, what: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "modformer.profiling.engine_process"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=die_with_parent,  # a killed profile or plan leaves no engine timing behind
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    if done.returncode != 0 or not lines:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ConfigError(f"{what} failed in its own process: {reason[0][-300:]}")
    answer = json.loads(lines[-1][len(_MARKER) :])
    if answer["torch_loaded"]:  # a helper imported by the child started importing torch: its timings would be off
        raise RuntimeError(f"{what}: the engine's process loaded torch (see modformer.profiling.engine_process)")
    return answer


def time_models(
    folders: Sequence[str | Path],
    compute_type: str,
    device: str,
    workloads: Sequence[tuple[list[list[str]], int]],
    *,
    threads: int,
    warmup: int,
    repeats: int,
    passes: int = 1,
) -> list[list[list[float]]]:
    """Milliseconds per workload, per model: `repeats` rounds in all, round-robin over the models (one warm call of
    each per round, after `warmup` untimed rounds), split over `passes` walks through the workloads so that each
    workload's rounds are spread over the whole measurement rather than a few seconds of it (a burst of load from
    another tenant then spoils a share of every workload's rounds, not all of one's). A workload is (source tokens,
    exact number of tokens to generate). In a fresh process."""
    spec = {"mode": "time", "folders": [str(f) for f in folders], "compute_type": compute_type, "device": device}
    spec |= {"threads": threads, "workloads": [list(w) for w in workloads], "warmup": warmup}
    spec |= {"repeats": repeats, "passes": passes}
    return _run(spec, f"timing {len(folders)} CTranslate2 model(s)")["samples"]


def peak_memory(
    folder: str | Path, compute_type: str, device: str, tokens: list[list[str]], gen_len: int, *, threads: int
) -> int:
    """Peak resident bytes of loading the model in `folder` and running one call, above the fresh process's resident
    set after importing the engine (as `profiling.memory` measures torch)."""
    spec = {"mode": "peak", "folders": [str(folder)], "compute_type": compute_type, "device": device}
    spec |= {"threads": threads, "workloads": [[tokens, gen_len]]}
    return int(_run(spec, f"measuring the peak memory of {folder}")["peak_bytes"])


def _child() -> None:
    import ctranslate2

    from modformer.profiling.memory import peak_bytes, reset_peak, rss_bytes, trim_heap
    from modformer.profiling.timer import Case, Timer

    spec = json.loads(sys.stdin.read())
    if spec["mode"] == "peak":
        trim_heap()
        reset_peak()
        before = rss_bytes()

    def load(folder: str):
        return ctranslate2.Translator(
            folder,
            device=spec["device"],
            compute_type=spec["compute_type"],
            intra_threads=spec["threads"],
            inter_threads=1,
        )

    def call(translator, tokens: list[list[str]], g: int) -> None:
        translator.translate_batch(
            tokens, beam_size=1, min_decoding_length=g, max_decoding_length=g, max_batch_size=len(tokens)
        )

    if spec["mode"] == "peak":
        call(load(spec["folders"][0]), *spec["workloads"][0])
        answer = {"peak_bytes": peak_bytes() - before}
    else:
        translators = [load(folder) for folder in spec["folders"]]
        passes = spec["passes"]
        rounds = max(1, -(-spec["repeats"] // passes))  # each pass's share, rounded up (as the torch profile's)
        samples = [[[] for _ in translators] for _ in spec["workloads"]]
        for pass_ in range(passes):
            for (tokens, g), kept in zip(spec["workloads"], samples, strict=True):
                # a warm call before each timed one: a served model answers call after call with its weights cached
                calls = [functools.partial(call, t, tokens, g) for t in translators]
                cases = [Case(fn=c, setup=c) for c in calls]
                warm = spec["warmup"] if pass_ == 0 else min(spec["warmup"], 1)
                for model, timed in enumerate(Timer("cpu").interleaved_samples(cases, warmup=warm, repeats=rounds)):
                    kept[model] += timed
        answer = {"samples": samples}
    answer["torch_loaded"] = "torch" in sys.modules  # what the parent checks: it must never be
    print(_MARKER + json.dumps(answer), flush=True)


if __name__ == "__main__":
    _child()
