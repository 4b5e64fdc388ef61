"""Costs of assemblies served in an engine that runs the whole model natively (CTranslate2), and their prediction.

Inside such an engine every block of a stack is one layer of the teacher's shape (a module of size k is one layer
too), so what an assembly costs depends on its *block counts* (encoder blocks e, decoder blocks d) and the workload
only, not on which modules it uses. Per target and workload point the profile measures a 3 x 3 grid of depths, with
random weights in the teacher's shape (the cost does not depend on the values: every call generates exactly
`gen_len` tokens; a 2+11-layer cut of the 12+12 teacher and a random model of that depth timed side by side in
float32 took 13.0 and 13.2 ms):

    e in (1, ceil(E/2), E)  x  d in (1, ceil(D/2), D)        E, D: the teacher's depths

timed round-robin in a fresh process that never loads torch (one warm call of every depth per round,
`time_engine_models`, as a server runs the engine: see `modformer.profiling.engine_process`), so that a
burst of load from another process slows one round of every depth rather than every round of one depth; with twice
the block profile's rounds and passes (a whole-model call is cheap, and a deep float32 model's cost swings with how
much of the shared cache other processes hold: each workload's rounds are spread over four walks through all the
workloads, so that a burst of a few seconds spoils a share of them, not all), and predicts any (e, d) by the
least-squares fit  latency = a + b*e + c*d + q*d^2 + r*e*d  through them: each layer adds the same work (the
encoder's once per call, the decoder's once per generated token), and a decoder step slows down a little as the
model outgrows the processor's caches, the more so the more layers it holds (the d^2 and e*d terms). Measured on the
12+12 teacher in float32 (2-core AMD EPYC, 18 held-out depths, `benchmarks/targets.py` and a 4 x 4 grid beside it):
without the d^2 term the fit over-predicted mid-depth assemblies by 9 % on average; without e*d, latency MAPE was
4.3 % at batch 1, with it 2.8 %. Peak memory is measured the same way (a fresh process loads the model and runs one
call, `engine_peak_memory`) and predicted by a fit in 1, e, d, d^2 (memory has no cache effect); where it
was not measured, the model's weights as the engine stores them (the converted file) stand in.

Rows of the engine table (`EngineCosts.table`): target, threads, batch, src_len, gen_len, encoder_layers,
decoder_layers, latency_ms (the rounds' statistic), weight_bytes, peak_bytes (empty where not measured).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSeq2SeqLM

from modformer.checkpoints import load_tokenizer
from modformer.errors import ConfigError
from modformer.modular.families import adapter_for
from modformer.profiling import engine_process
from modformer.profiling.profile import LatencyProfile, Workload, refresh_factor
from modformer.profiling.timer import Timing, check_statistic
from modformer.serving.ctranslate2_engine import TOKENIZER_DIR, convert
from modformer.serving.targets import Target

Progress = Callable[[int, int, str], None]
ENGINE_COLUMNS = [
    "target",
    "threads",
    "batch",
    "src_len",
    "gen_len",
    "encoder_layers",
    "decoder_layers",
    "latency_ms",
    "weight_bytes",
    "peak_bytes",
]


def depth_grid(encoder_layers: int, decoder_layers: int) -> list[tuple[int, int]]:
    """The depths measured per target: one, half and all layers of each stack, crossed, each once."""
    enc = dict.fromkeys([1, math.ceil(encoder_layers / 2), encoder_layers])
    dec = dict.fromkeys([1, math.ceil(decoder_layers / 2), decoder_layers])
    return [(e, d) for e in enc for d in dec]


@dataclass
class EngineCosts:
    """Measured engine costs (`table`) and the fit through them per (target, threads, workload)."""

    table: pd.DataFrame
    refresh: dict | None = None  # a profile's refresh record (`modformer.profiling.refresh`): latencies scaled by it

    @classmethod
    def of(cls, profile: LatencyProfile) -> EngineCosts:
        """The engine costs a profile predicts, with its refresh (if any)."""
        if profile.engines is None:
            raise ConfigError("the profile measured no engine target")
        return cls(profile.engines, profile.meta.get("refresh"))

    def __post_init__(self) -> None:
        if "peak_bytes" not in self.table.columns:
            self.table = self.table.assign(peak_bytes=np.nan)
        missing = [c for c in ENGINE_COLUMNS if c not in self.table.columns]
        if missing:
            raise ConfigError(f"engine table lacks the column(s) {', '.join(missing)}")
        self.table = self.table[ENGINE_COLUMNS].reset_index(drop=True)
        self._fits: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(self.table["target"]))

    def _fit(self, target: str, w: Workload) -> tuple[np.ndarray, np.ndarray]:
        key = (target, w.batch, w.src_len, w.gen_len)
        if key not in self._fits:
            rows = self.table[
                (self.table["target"] == target)
                & (self.table["batch"] == w.batch)
                & (self.table["src_len"] == w.src_len)
                & (self.table["gen_len"] == w.gen_len)
            ]
            if rows.empty:
                measured = self.table[self.table["target"] == target]
                if measured.empty:
                    raise ConfigError(f"the profile has no measurements for the target {target}")
                grid = sorted({(r.batch, r.src_len, r.gen_len) for r in measured.itertuples()})
                raise ConfigError(
                    f"the profile measured {target} at (batch, src_len, gen_len) {grid}, not at {w}: "
                    "profile that workload or plan for a measured one"
                )
            e, d = rows["encoder_layers"], rows["decoder_layers"]
            latency = np.linalg.lstsq(_features(e, d), rows["latency_ms"].to_numpy(float), rcond=None)[0]
            peak = rows["peak_bytes"].to_numpy(float)
            memory = peak if np.isfinite(peak).all() else rows["weight_bytes"].to_numpy(float)
            weights = np.linalg.lstsq(_features(e, d, memory=True), memory, rcond=None)[0]
            self._fits[key] = (latency, weights)
        return self._fits[key]

    def predict(self, target: str, encoder_blocks, decoder_blocks, w: Workload) -> tuple[np.ndarray, np.ndarray]:
        """(latency_ms, memory_mb) of assemblies with these block counts (scalars or arrays) served in `target`."""
        latency, memory = self._fit(target, w)
        e, d = np.atleast_1d(encoder_blocks), np.atleast_1d(decoder_blocks)
        shape = np.shape(encoder_blocks)
        scale = refresh_factor(self.refresh, target, w.batch)
        return (scale * (_features(e, d) @ latency)).reshape(shape), (_features(e, d, memory=True) @ memory).reshape(
            shape
        ) / 2**20


def _features(encoder_layers, decoder_layers, *, memory: bool = False) -> np.ndarray:
    """The fit's terms: 1, e, d, d^2 and, for latency, e*d (see the module docstring)."""
    e, d = np.asarray(encoder_layers, dtype=float), np.asarray(decoder_layers, dtype=float)
    terms = [np.ones_like(e), e, d, d * d] + ([] if memory else [e * d])
    return np.column_stack(terms)


def depth_model_folder(teacher: torch.nn.Module, tokenizer, encoder_layers: int, decoder_layers: int, out: Path):
    """A random-weight model of the teacher's shape with the given depths, saved with the tokenizer in `out`."""
    config = adapter_for(teacher.config).with_depths(teacher.config, encoder_layers, decoder_layers)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    model.generation_config = teacher.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fixed_length_tokens(tok, w: Workload, seed: int) -> list[list[str]]:
    """`batch` sources of exactly `src_len` tokens of tokenizer `tok` (random ordinary tokens, then the end token)."""
    special = set(tok.all_special_ids)
    ordinary = np.array([i for i in range(len(tok)) if i not in special])
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(w.batch):
        ids = rng.choice(ordinary, size=max(w.src_len - 1, 1)).tolist() + [tok.eos_token_id]
        rows.append(tok.convert_ids_to_tokens(ids))
    return rows


def time_engine_models(
    folders: Sequence[Path],
    target: Target,
    workloads: Sequence[Workload],
    *,
    threads: int,
    warmup: int,
    repeats: int,
    passes: int = 1,
    seed: int = 0,
) -> list[list[list[float]]]:
    """Milliseconds per workload, per converted model in `folders`: `repeats` rounds round-robin over the models,
    split over `passes` walks through the workloads; each call generates exactly `gen_len` tokens for `batch` sources
    of `src_len` tokens, after a warm call: a served model answers call after call with its weights in the
    processor's caches, and so is each model timed among others (without the warm call, a call after another
    model's paid to fetch its weights back from memory: 10-15 % more for depths of the 12+12 teacher in float32 on a
    2-core AMD EPYC, while a warm call in the round takes what the model alone does).

    In a fresh process that never loads torch (`modformer.profiling.engine_process`: torch's OpenMP runtime beside the
    engine's slowed CTranslate2's two-thread calls up to 10x)."""
    tok = load_tokenizer(Path(folders[0]) / TOKENIZER_DIR)
    return engine_process.time_models(
        folders,
        target.compute_type,
        target.device,
        [(fixed_length_tokens(tok, w, seed), w.gen_len) for w in workloads],
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        passes=passes,
    )


def profile_engines(
    teacher: torch.nn.Module,
    tokenizer,
    targets: Sequence[Target],
    workloads: Sequence[Workload],
    *,
    threads: int = 1,
    warmup: int = 2,
    repeats: int = 10,
    statistic: str = "min",
    passes: int = 1,
    memory: bool = True,
    on_progress: Progress | None = None,
) -> EngineCosts:
    """Measure every engine target at every depth of `depth_grid` and every workload (see the module docstring)."""
    check_statistic(statistic)
    targets = [t for t in targets if not t.is_torch]
    config = teacher.config
    adapter = adapter_for(config)
    depths = depth_grid(adapter.depth(config, "encoder"), adapter.depth(config, "decoder"))
    steps = len(depths) + len(targets) * (1 + memory * len(workloads))
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        if on_progress:
            on_progress(done, steps, what)
        done += 1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders: dict[tuple[str, int, int], Path] = {}
        for e, d in depths:
            tick(f"converting {e}+{d} layers")
            hf = depth_model_folder(teacher, tokenizer, e, d, Path(tmp) / f"hf-{e}-{d}")
            for target in targets:
                folders[str(target), e, d] = convert(hf, Path(tmp) / f"{target.compute_type}-{e}-{d}", target)
        for target in targets:
            models = [folders[str(target), e, d] for e, d in depths]
            tick(f"{target}: {len(depths)} depths round-robin, {len(workloads)} workloads in {passes} pass(es)")
            samples = time_engine_models(
                models, target, workloads, threads=threads, warmup=warmup, repeats=repeats, passes=passes
            )
            for w, per_model in zip(workloads, samples, strict=True):
                for (e, d), timed in zip(depths, per_model, strict=True):
                    rows.append(
                        {
                            "target": str(target),
                            "threads": threads,
                            "batch": w.batch,
                            "src_len": w.src_len,
                            "gen_len": w.gen_len,
                            "encoder_layers": e,
                            "decoder_layers": d,
                            "latency_ms": Timing.from_samples(timed).value(statistic),
                            "weight_bytes": (folders[str(target), e, d] / "model.bin").stat().st_size,
                            "peak_bytes": None,
                        }
                    )
            if memory:  # in a fresh process per model: after the timing, which it would disturb
                for w in workloads:
                    tick(f"{target} B={w.batch} S={w.src_len} G={w.gen_len}, peak memory")
                    for row in rows[-len(depths) * len(workloads) :]:
                        if (row["batch"], row["src_len"], row["gen_len"]) == (w.batch, w.src_len, w.gen_len):
                            folder = folders[str(target), row["encoder_layers"], row["decoder_layers"]]
                            row["peak_bytes"] = engine_peak_memory(folder, target, w, threads=threads)
    if on_progress:
        on_progress(steps, steps, "engines measured")
    return EngineCosts(pd.DataFrame(rows, columns=ENGINE_COLUMNS))


def profile_engine_targets(modular, config, targets: Sequence[Target], *, on_progress: Progress | None = None):
    """The engine table for the engine targets among `targets`, on `config`'s grid (every batch size, source length
    and generation length), threads and statistic; None when `targets` names no engine."""
    engines = [t for t in targets if not t.is_torch]
    if not engines:
        return None
    workloads = [
        Workload(batch=b, src_len=s, gen_len=g)
        for b in config.batch_sizes
        for s in config.src_lens
        for g in config.gen_lens
    ]
    costs = profile_engines(
        modular.teacher,
        load_tokenizer(modular.config.teacher),
        engines,
        workloads,
        threads=config.threads or torch.get_num_threads(),
        repeats=2 * config.repeats,  # a whole-model call is cheap: more rounds, more chances of a quiet one
        statistic=config.statistic,
        passes=2
        * config.passes,  # as the block profile, with twice its rounds: each workload spread over the whole run
        memory=config.memory,
        on_progress=on_progress,
    )
    return costs.table


def engine_peak_memory(folder: Path, target: Target, w: Workload, *, threads: int = 1, seed: int = 0) -> int:
    """Peak resident memory (bytes) of loading the CTranslate2 model in `folder` and running one call of `w`, in a
    fresh process, above the process's resident set after importing the engine (as `profiling.memory` for torch)."""
    tokens = fixed_length_tokens(load_tokenizer(Path(folder) / TOKENIZER_DIR), w, seed)  # the model loads only there
    return engine_process.peak_memory(folder, target.compute_type, target.device, tokens, w.gen_len, threads=threads)
