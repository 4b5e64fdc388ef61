"""Planning over serving targets: assemblies x (engine, precision), in one frontier.

The search scores assemblies with the proxy (teacher-forced loss, in torch) and the torch cost model. An engine
target adds, for every block-count class (e encoder blocks, d decoder blocks) that the search scored, the class's
best-proxy assembly served in that engine: inside the engine every assembly of a class costs the same
(`modformer.profiling.engines`), so within a class only the best proxy can be on a frontier. The proxy cannot see
what a precision costs in quality: validation measures it, by generating in the target itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from modformer.errors import ConfigError
from modformer.evaluation import text_scores
from modformer.modular.assembly import Assembly
from modformer.modular.export import export_assembly
from modformer.modular.model import ModularModel
from modformer.planner.space import Budget, SearchSpace
from modformer.profiling.engines import EngineCosts, time_engine_models
from modformer.profiling.profile import LatencyProfile, Workload
from modformer.serving.ctranslate2_engine import CTranslate2Generator
from modformer.serving.targets import Target


def plan_targets(profile: LatencyProfile, wanted: list[str] | None) -> tuple[str, list[str]]:
    """(the torch target the search costs, the engine targets to add): `wanted` (None: every target the profile
    measured) checked against what the profile can predict."""
    torch_target, *engines = profile.targets
    if wanted is None:
        return torch_target, engines
    wanted = [str(Target.parse(t)) for t in wanted]
    unknown = [t for t in wanted if t not in profile.targets]
    if unknown:
        raise ConfigError(
            f"the profile predicts {', '.join(profile.targets)}, not {', '.join(unknown)}: profile them first",
            settings="targets",
        )
    if torch_target not in wanted:
        raise ConfigError(
            f"targets must include {torch_target}: the search scores assemblies in it", settings="targets"
        )
    return torch_target, [t for t in engines if t in wanted]


def engine_rows(
    scored: pd.DataFrame,
    space: SearchSpace,
    profile: LatencyProfile,
    workload: Workload,
    budget: Budget,
    targets: list[str],
) -> pd.DataFrame:
    """For each engine target, the best-proxy scored assembly of every block-count class, with the target's costs
    (`speed_ratio`: the teacher's predicted torch latency over this one's)."""
    if not targets or profile.engines is None:
        return scored.iloc[0:0]
    costs = EngineCosts.of(profile)
    counts = pd.DataFrame(
        [(len(a.encoder), len(a.decoder)) for a in map(Assembly.parse, scored["assembly"])],
        columns=["encoder_blocks", "decoder_blocks"],
        index=scored.index,
    )
    best = scored.join(counts).sort_values("proxy_loss").groupby(["encoder_blocks", "decoder_blocks"]).head(1)
    teacher_ms = float(space.latency_ms(*space.teacher))
    rows = []
    for target in targets:
        latency, memory = costs.predict(target, best["encoder_blocks"], best["decoder_blocks"], workload)
        rows.append(
            best.drop(columns=["encoder_blocks", "decoder_blocks"]).assign(
                target=target,
                latency_ms=latency,
                memory_mb=memory,
                speed_ratio=teacher_ms / latency,
                violation=budget.violation(latency, memory, best["params"].to_numpy(float) / 1e6),
            )
        )
    return pd.concat(rows, ignore_index=True)


def validate_engine_points(
    modular: ModularModel,
    points: list[tuple[str, str]],
    pairs,
    workload: Workload,
    *,
    threads: int,
    max_new_tokens: int,
    statistic: str,
    repeats: int = 5,
    max_source_len: int = 128,
    on_progress=None,
) -> list[dict]:
    """For each (assembly, engine target): export it to the target, generate for `pairs` (sources cut to
    `max_source_len` tokens; scores) and time it at `workload` with `threads` threads (the rounds' `statistic`)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (text, target_name) in enumerate(points):
            if on_progress:
                on_progress(n, len(points), f"generating with {text} in {target_name}")
            target = Target.parse(target_name)
            folder = Path(tmp) / f"point-{n}"
            export_assembly(modular, Assembly.parse(text), folder, target=target)
            # one intra-op thread here: this process runs torch, whose OpenMP runtime slows CTranslate2's threads;
            # the timing runs in a process of its own, with `threads`
            generator = CTranslate2Generator(folder, target, threads=1)
            hypotheses = generator.generate(
                list(pairs.sources), max_new_tokens=max_new_tokens, max_source_len=max_source_len
            )
            del generator
            samples = time_engine_models([folder], target, [workload], threads=threads, warmup=1, repeats=repeats)[0][0]
            ms = float(np.min(samples) if statistic == "min" else np.median(samples))
            rows.append(
                {
                    "assembly": text,
                    "target": target_name,
                    **text_scores(hypotheses, pairs.reference_lists()),
                    "measured_latency_ms": ms,
                }
            )
    return rows
