"""Time a CTranslate2 model, or measure its peak memory, in a fresh process of its own that never loads torch.

Why a process of its own: torch and CTranslate2 each bring an OpenMP runtime. In a process where torch has run with
two threads, CTranslate2 with two intra-op threads is about 10x slower (1+12-layer depth model of the 12+12
Multi30k teacher, float32, batch 1, 2-core AMD EPYC: 187 ms against 14.1 ms in a process where torch kept one thread;
batch 8: 281 against 38.9 ms), and `OMP_WAIT_POLICY=PASSIVE` makes it slow everywhere (235 ms). A server runs the
engine in a process of its own, so that is where its costs are measured: the profile's engine grid, the plan's
validation timing and the benchmarks' held-out points all go through `time_models` here.

The parent gives the tokens (it has the tokenizer); the child loads only `ctranslate2` and this module's
torch-free helpers (`modformer.profiling.timer`, `modformer.profiling.memory`), and answers with one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from modformer.errors import ConfigError

_MARKER = "modformer-engine-process "


def _run(spec: dict, what: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "modformer.serving.engine_process"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    if done.returncode != 0 or not lines:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ConfigError(f"{what} failed in its own process: {reason[0][-300:]}")
    answer = json.loads(lines[-1][len(_MARKER) :])
    if answer["torch_loaded"]:  # a helper imported by the child started importing torch: its timings would be off
        raise RuntimeError(f"{what}: the engine's process loaded torch (see modformer.serving.engine_process)")
    return answer


def time_models(
    folders: Sequence[str | Path],
    compute_type: str,
    device: str,
    tokens: list[list[str]],
    gen_len: int,
    *,
    threads: int,
    warmup: int,
    repeats: int,
) -> list[list[float]]:
    """Milliseconds of `repeats` rounds per model, round-robin (one warm call of each per round, after `warmup`
    untimed rounds), each call generating exactly `gen_len` tokens for the source `tokens`; in a fresh process."""
    spec = {"mode": "time", "folders": [str(f) for f in folders], "compute_type": compute_type, "device": device}
    spec |= {"threads": threads, "tokens": tokens, "gen_len": gen_len, "warmup": warmup, "repeats": repeats}
    return _run(spec, f"timing {len(folders)} CTranslate2 model(s)")["samples"]


def peak_memory(
    folder: str | Path, compute_type: str, device: str, tokens: list[list[str]], gen_len: int, *, threads: int
) -> int:
    """Peak resident bytes of loading the model in `folder` and running one call, above the fresh process's resident
    set after importing the engine (as `profiling.memory` measures torch)."""
    spec = {"mode": "peak", "folders": [str(folder)], "compute_type": compute_type, "device": device}
    spec |= {"threads": threads, "tokens": tokens, "gen_len": gen_len}
    return int(_run(spec, f"measuring the peak memory of {folder}")["peak_bytes"])


def _child() -> None:
    import ctranslate2

    from modformer.profiling.memory import peak_bytes, reset_peak, rss_bytes, trim_heap
    from modformer.profiling.timer import Case, Timer

    spec = json.loads(sys.stdin.read())
    g, tokens = spec["gen_len"], spec["tokens"]
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

    def call(translator) -> None:
        translator.translate_batch(
            tokens, beam_size=1, min_decoding_length=g, max_decoding_length=g, max_batch_size=len(tokens)
        )

    if spec["mode"] == "peak":
        call(load(spec["folders"][0]))
        answer = {"peak_bytes": peak_bytes() - before}
    else:
        # a warm call before each timed one: a served model answers call after call with its weights in the caches
        cases = [Case(fn=lambda t=t: call(t), setup=lambda t=t: call(t)) for t in map(load, spec["folders"])]
        answer = {"samples": Timer("cpu").interleaved_samples(cases, warmup=spec["warmup"], repeats=spec["repeats"])}
    answer["torch_loaded"] = "torch" in sys.modules  # what the parent checks: it must never be
    print(_MARKER + json.dumps(answer), flush=True)


if __name__ == "__main__":
    _child()
