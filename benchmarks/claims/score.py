"""Which assemblies to score, and scoring models into rows (every score cached by its key)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from claims.config import NAMED, TEACHER_DEPTHS
from claims.work import NotDone, Work
from modformer.checkpoints import load_tokenizer
from modformer.data import Seq2SeqData
from modformer.evaluation import score_model
from modformer.modular.assembly import Assembly, valid_stacks
from modformer.modular.model import ModularModel
from modformer.modular.strategies import assembly_for_shape, strategy_sequence
from modformer.profiling.validate import depth_ratio


@dataclass
class Task:
    """One task being scored: its name, the pairs every figure is taken on, the loader of every model scored so far
    (key -> () -> (model, tokenizer); all of them are timed at the end) and the teacher's parameter count."""

    name: str
    pairs: Seq2SeqData
    teacher_params: int = 0
    loaders: dict = field(default_factory=dict)


def spread_assemblies(modular: ModularModel, count: int) -> list[tuple[str, Assembly]]:
    """`count` assemblies of the size-first and speed-first sequences, depth ratios log-even over 1.1x-6x; each with
    the first sequence it belongs to."""
    cost = modular.cost_model()
    pool, rule = {}, {}
    for name in ("size-first", "speed-first"):
        for a in strategy_sequence(name, cost):
            pool.setdefault(str(a), a)
            rule.setdefault(str(a), name)
    ratios = {text: depth_ratio(a) for text, a in pool.items()}
    chosen: list[str] = []
    for target in np.geomspace(1.1, min(6.0, max(ratios.values())), count):
        free = [t for t in pool if t not in chosen]
        if free:
            chosen.append(min(free, key=lambda t: (abs(math.log(ratios[t] / target)), t)))
    return [(rule[t], pool[t]) for t in sorted(chosen, key=lambda t: ratios[t])]


def random_orders(modular: ModularModel, shape: str, count: int, seed: int = 0) -> list[Assembly]:
    """Up to `count` valid assemblies with the block counts of `shape` other than the deterministic one."""
    c = modular.config
    enc_blocks, dec_blocks = (int(x) for x in shape.split("-"))
    encs = [s for s in valid_stacks(c.encoder_layers, c.granularities) if len(s) == enc_blocks]
    decs = [s for s in valid_stacks(c.decoder_layers, c.granularities) if len(s) == dec_blocks]
    rule = assembly_for_shape(shape, c.encoder_layers, c.decoder_layers, c.granularities)
    others = [Assembly(e, d) for e in encs for d in decs if Assembly(e, d) != rule]
    return random.Random(f"{seed}-{shape}").sample(others, min(count, len(others)))


def score(work: Work, key: str, load, pairs, desc: str, folder: Path) -> dict:
    """Scores of one model (its weights in `folder`) on `pairs`, cached by `key` for those weights."""
    scores = work.cached_scores(key, folder)
    if scores is None and work.report_only:
        raise NotDone(f"scores of {key}")
    if scores is None:
        model, tokenizer = load()
        started = time.perf_counter()
        scores = score_model(model, tokenizer, pairs, batch_size=64, max_new_tokens=64).to_json()
        scores["score_s"] = round(time.perf_counter() - started, 1)
        print(f"  {desc}: BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} ({scores['score_s']:.0f} s)")
        work.save_scores(key, folder, scores)
    return scores


def modular_rows(
    work: Work,
    task: Task,
    method: str,
    folder: Path,
    assemblies: list[tuple[str, Assembly]],
    steps: int,
    wall: float | None,
    seed: int = 0,
    model: ModularModel | None = None,
) -> list[dict]:
    """Score assemblies (each with its rule) of the modular checkpoint in `folder` (`model`, where the caller has it
    loaded already); a row each (speed filled in later). One not in the cache (--report-only) is listed as missing."""
    holder: dict = {} if model is None else {"m": model}

    def modular() -> ModularModel:
        if "m" not in holder:
            holder["m"] = ModularModel.from_pretrained(folder)
        return holder["m"]

    tokenizer = load_tokenizer(modular().config.teacher)  # the modules' own teacher's
    rows = []
    named = {str(assembly_for_shape(s, *TEACHER_DEPTHS, modular().config.granularities)) for s in NAMED}
    for rule, a in assemblies:
        name = f"{method}|{a}" + (f"|s{seed}" if seed else "")  # seed 0 keeps the key it always had
        task.loaders[name] = lambda a=a: (modular().assemble(a), tokenizer)
        try:
            scores = score(work, f"{task.name}|{name}", task.loaders[name], task.pairs, f"{method} {a}", folder)
        except NotDone as missing:
            work.not_done(missing)
            del task.loaders[name]
            continue
        cost = modular().cost_model()
        rows.append(
            {
                "task": task.name,
                "method": method,
                "assembly": str(a),
                "shape": f"{len(a.encoder)}-{len(a.decoder)}",
                "rule": rule,
                "named": str(a) in named,
                "size_ratio": cost.size_ratio(a),
                "depth_ratio": depth_ratio(a),
                "steps": steps,
                "wall_s": wall,
                "seed": seed,
                "model": name,
                **scores,
            }
        )
    return rows


def teacher_row(task: Task, assembly: Assembly, scores: dict, steps: int | None, wall: float | None) -> dict:
    return {
        "task": task.name,
        "method": "teacher",
        "assembly": str(assembly),
        "shape": "12-12",
        "rule": "teacher",
        "size_ratio": 1.0,
        "depth_ratio": 1.0,
        "steps": steps,
        "wall_s": wall,
        "seed": 0,
        "model": "teacher",
        **scores,
    }
