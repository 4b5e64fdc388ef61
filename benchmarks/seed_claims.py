"""The seed's claims on real data: one modular run against SFT, KD and pseudo-labelling students of fixed shapes.

    python benchmarks/seed_claims.py [--work runs/seed-claims] [--steps 2000] [--stages all]

Every training run and every score is cached under --work; a rerun skips what is done, and a run that was stopped
mid-training continues from its last checkpoint (`--resume`), so the benchmark can be interrupted at any time.
Training goes through the CLI exactly as a user runs it; scoring and timing load the results in this process.

Multi30k En->De (../shared/data/multi30k_en_de; train to train, val for held-out losses, every reported figure on
test_2016_flickr, greedy, sacrebleu BLEU and chrF). Teacher: ../shared/models/multi30k-t5-12x12, used as any
user's checkpoint.

1. modular: `modformer train` (granularities 2,3,4,6; --steps, --batch-size).
2. assemblies: the teacher; 12-6, 6-6, 4-4 (size-first shapes), 12-3, 12-2 (speed-first), 3-3, 2-2; and --spread
   assemblies from the size-first and speed-first sequences with depth ratios (teacher layers / assembly blocks)
   spread log-evenly over 1.1x-6x.
3. random orders: at 6-6 and 12-3, up to 5 other valid assemblies with the same block counts, drawn at random
   (granularities and their order): the same modules, no training.
4. students: `modformer baseline sft|kd|pseudo` at 6-6 and 12-3, the modular run's steps and batch size; and again
   at every longer variant's steps (5b), so that each modular run is compared with students of its own budget
   (`students/<method>-<shape>-<steps>steps-s0`). The teacher's greedy outputs for the 29,000 training sources are
   generated once (timed) and shared by every pseudo student (`--pseudo-labels`).
5. ablations: `modformer train --no-curriculum` and `--w-attn 0` (same steps), scored at 6-6 and 12-3.
5b. variants: the modular run with one setting changed (`--hybrids-per-step 3`: three hybrids share each step's
   teacher pass, so every module gets about three times the updates in the same steps and batch size), two seeds,
   each scored at the named shapes, the size-first assembly nearest 2x, and the same random orders as 3; claims
   reported for it (means over its seeds) beside the default run's. And the same without attention distillation
   (`--w-attn 0`), two seeds; and that recipe once more at twice the steps (two seeds), which asks whether a longer
   budget closes the gaps. It is compared with students trained for its steps (4).
6. seeds: where a modular run's assembly (the default run or a variant, mean over its seeds) and a student of the
   same shape and steps are within 0.5 BLEU, the student gets a second seed (and the default run too; a variant has
   its two) and the comparison uses the means.
6b. plans: `modformer profile` once, then `modformer plan` of every modular run (each seed) with the budget
   `params_m<=` half the teacher's parameters (at least 2x smaller), searched and validated on `val` (500 pairs);
   the chosen assembly is scored on test like the others (rule `planned`).
7. timing: every Multi30k model above and the teacher, round-robin in one run (`generate` of exactly 32 new tokens
   for a 32-token source, batch 1, the profiler's timer and thread count; the least of 10 rounds, as the profiler's
   default statistic): speed_ratio = teacher ms / model ms. Models added to the benchmark after that run are timed
   in a further round-robin run together with the teacher, and their ratio uses the teacher's time from that run.
8. squad: SQuAD question generation (../shared/data/squad_qg): a 12+12 teacher trained with `modformer teacher
   --preset base`, one modular run and a KD 6-6 student (same steps); BLEU-4 (sacrebleu) and ROUGE-L on the first
   --squad-eval pairs of `valid`, timed like 7.

Writes benchmarks/results/seed_claims.json (`rows`: one per model), seed_claims.md (the tables), seed_claims.png,
with the command, the machine and the wall time of each stage. A partial run writes them too, marking what is missing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from modformer.baselines import INFO_NAME, PSEUDO_NAME, pseudo_labels  # noqa: E402
from modformer.checkpoints import load_seq2seq, load_tokenizer  # noqa: E402
from modformer.data import DataSpec, load_split  # noqa: E402
from modformer.evaluation import score_model  # noqa: E402
from modformer.io import atomic_path, write_json  # noqa: E402
from modformer.modular.assembly import Assembly, valid_stacks  # noqa: E402
from modformer.modular.model import ModularModel  # noqa: E402
from modformer.modular.strategies import assembly_for_shape, strategy_sequence  # noqa: E402
from modformer.profiling.hardware import fingerprint  # noqa: E402
from modformer.profiling.profile import Workload  # noqa: E402
from modformer.profiling.timer import Timer  # noqa: E402
from modformer.profiling.validate import depth_ratio, time_models  # noqa: E402
from modformer.teacher import INFO_NAME as TEACHER_INFO  # noqa: E402

SHARED = ROOT.parent / "shared"
CLI = [sys.executable, "-m", "modformer.cli"]
TASKS = {
    "multi30k": {
        "data": SHARED / "data" / "multi30k_en_de",
        "src_ext": "en",
        "tgt_ext": "de",
        "val": "val",
        "test": "test_2016_flickr",
    },
    "squad_qg": {
        "data": SHARED / "data" / "squad_qg",
        "src_ext": "src",
        "tgt_ext": "tgt",
        "val": "valid",
        "test": "valid",
    },
}
GRANULARITIES = "2,3,4,6"
NAMED = {
    "12-6": "size-first",
    "6-6": "size-first",
    "4-4": "size-first",
    "12-3": "speed-first",
    "12-2": "speed-first",
    "3-3": "size-first",
    "2-2": "size-first",
}
TEACHER_DEPTHS = (12, 12)  # both teachers here are 12+12 (checked when their modules load)
GRANULARITY_LIST = tuple(int(g) for g in GRANULARITIES.split(","))
COMPARED = ("6-6", "12-3")  # the shapes the students and ablations are trained / scored at
METHODS = ("sft", "kd", "pseudo")
ABLATIONS = {"no-curriculum": ["--no-curriculum"], "no-attn": ["--w-attn", "0"]}


class Variant(NamedTuple):
    """A modular run with some `modformer train` options changed; seed s > 0 trains with `--seed s` in <name>-s<s>."""

    options: list[str]
    seeds: int
    steps_x: int = 1  # a longer budget: --steps times this. Its students stay at --steps (no second seeds for it)


VARIANTS = {
    "modular-h3": Variant(["--hybrids-per-step", "3"], 2),
    "modular-h3-no-attn": Variant(["--hybrids-per-step", "3", "--w-attn", "0"], 2),
    "modular-h3-no-attn-2x-steps": Variant(["--hybrids-per-step", "3", "--w-attn", "0"], 2, steps_x=2),
}
PLAN_SIZE_RATIO = 2.0  # plans ask for assemblies at least this much smaller than the teacher (acceptance line 2)
PLAN_VALIDATE_PAIRS = 500
RANDOM_ORDERS = 5
CLOSE_BLEU = 0.5  # margins under this get a second seed
DROP_TARGET_PCT = 5.0  # the largest relative BLEU drop from the teacher allowed at 2x size (acceptance line 2)
TIMING = Workload(batch=1, src_len=32, gen_len=32)
TIMING_REPEATS = 10  # the least of them is a call's cost without interference (see the README's profiling section)


# --------------------------------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------------------------------
class NotDone(Exception):
    """--report-only: this result is not in the cache (the report leaves it out and lists it as missing)."""


REPORT_ONLY = False  # set by --report-only: train nothing, score nothing, time nothing; report what is cached
MISSING: list[str] = []


class Work:
    """The work folder: cached scores, stage wall times, logs."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.scores_path, self.walls_path = folder / "scores.json", folder / "walls.json"
        self.scores = json.loads(self.scores_path.read_text()) if self.scores_path.exists() else {}
        self.walls = json.loads(self.walls_path.read_text()) if self.walls_path.exists() else {}

    def save(self) -> None:
        if REPORT_ONLY:  # a report leaves the cache to the run that fills it
            return
        write_json(self.scores_path, self.scores)
        write_json(self.walls_path, self.walls)

    def add_wall(self, stage: str, seconds: float) -> None:
        if REPORT_ONLY:  # a report's cache look-ups are not a stage's work
            return
        self.walls[stage] = round(self.walls.get(stage, 0.0) + seconds, 1)
        self.save()


def run(cmd: list, log: Path) -> float:
    """Run a CLI command, its output appended to `log`; the wall time in seconds. Stops the benchmark on failure."""
    started = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd[2:]))}\n")
        f.flush()
        code = subprocess.call([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"{' '.join(map(str, cmd[2:]))} failed (exit {code}); see {log}")
    return time.perf_counter() - started


def seeded(name: str, seed: int) -> str:
    """A run's folder and stage name: seed 0 keeps the name it always had, seed s > 0 adds `-s<s>`."""
    return f"{name}-s{seed}" if seed else name


def data_args(task: str, *, val: bool = True) -> list:
    t = TASKS[task]
    args = ["--data", t["data"], "--src-ext", t["src_ext"], "--tgt-ext", t["tgt_ext"]]
    return [*args, "--val-split", t["val"]] if val else args


def train_command(task: str, teacher: Path, steps: int, batch_size: int) -> list:
    """`modformer train` of a modular run of `task` (granularities GRANULARITIES), without --out."""
    return [
        *CLI,
        "train",
        "--teacher",
        teacher,
        *data_args(task),
        "--granularities",
        GRANULARITIES,
        "--steps",
        steps,
        "--batch-size",
        batch_size,
    ]


def completed_steps(out: Path) -> tuple[int, float | None]:
    """(steps done, training wall seconds) of a modular run, a student or a teacher in `out`; (0, None) if none."""
    for name, key in (("modular_config.json", "training"), (INFO_NAME, None), (TEACHER_INFO, None)):
        path = out / name
        if path.is_file():
            info = json.loads(path.read_text())
            info = info.get(key, {}) if key else info
            return int(info.get("completed_steps", 0)), info.get("wall_s")
    return 0, None


def train(work: Work, stage: str, command: list, out: Path, steps: int) -> float | None:
    """Train (or resume) one run through the CLI; its cumulative training wall time in seconds."""
    done, _ = completed_steps(out)
    if done < steps and REPORT_ONLY:
        raise NotDone(f"{stage}: {out.name} at {done}/{steps} steps")
    if done < steps:
        again = ["--resume"] if (out / "trainer_state.pt").is_file() else ["--overwrite"]
        print(
            f"[{stage}] {' '.join(map(str, command[2:4]))} -> {out} ({'resuming at ' + str(done) if done else 'new'})"
        )
        work.add_wall(stage, run([*command, "--out", out, *again], out.with_name(f"{out.name}.log")))
    return completed_steps(out)[1]


# --------------------------------------------------------------------------------------------------------------------
# What to score
# --------------------------------------------------------------------------------------------------------------------
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


def score(work: Work, key: str, load, pairs, desc: str) -> dict:
    """Scores of one model on `pairs` (cached by `key`)."""
    if key not in work.scores and REPORT_ONLY:
        raise NotDone(f"scores of {key}")
    if key not in work.scores:
        model, tokenizer = load()
        started = time.perf_counter()
        scores = score_model(model, tokenizer, pairs, batch_size=64, max_new_tokens=64).to_json()
        scores["score_s"] = round(time.perf_counter() - started, 1)
        print(f"  {desc}: BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} ({scores['score_s']:.0f} s)")
        work.scores[key] = scores
        work.save()
    return work.scores[key]


def time_all(work: Work, task: str, loaders: dict, threads: int) -> dict[str, tuple[float, float]]:
    """(least ms of TIMING_REPEATS, the teacher's least ms in the same run) of every model in `loaders` (the teacher
    among them). They are timed round-robin in one run; models added to the benchmark later are timed in a further
    run beside the teacher, so every speed ratio divides two timings taken side by side. Cached: timing-<task>.json
    keeps every run (the median beside the least)."""
    path = work.folder / f"timing-{task}.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if cached.get("statistic") != "min":  # an older statistic: time everything again
        cached = {}
    runs = cached.get("runs") or ([{"ms": cached["ms"], "median_ms": cached["median_ms"]}] if "ms" in cached else [])
    timed = {n for r in runs for n in r["ms"]}
    new = [n for n in loaders if n not in timed]
    if new and REPORT_ONLY:
        MISSING.append(f"{task} timing of {len(new)} models")
    elif new:
        names = ["teacher", *(n for n in new if n != "teacher")]
        print(f"[timing] {task}: {len(names)} models, round-robin, {TIMING}, {threads} threads")
        models = [loaders[n]()[0] for n in names]
        vocab = int(models[0].config.vocab_size)
        torch.set_num_threads(threads)
        started = time.perf_counter()
        timings = time_models(models, TIMING, Timer("cpu"), vocab, 0, 2, TIMING_REPEATS)
        work.add_wall(f"{task}-timing", time.perf_counter() - started)
        runs.append(
            {
                "ms": {n: t.min_ms for n, t in zip(names, timings, strict=True)},
                "median_ms": {n: t.median_ms for n, t in zip(names, timings, strict=True)},
            }
        )
        write_json(
            path,
            {"workload": str(TIMING), "threads": threads, "statistic": "min", "repeats": TIMING_REPEATS, "runs": runs},
        )
    out: dict[str, tuple[float, float]] = {}
    for r in runs:  # a model timed in several runs keeps its first
        for n, ms in r["ms"].items():
            if n in loaders:
                out.setdefault(n, (ms, r["ms"]["teacher"]))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------------
def modular_rows(
    work: Work,
    task: str,
    method: str,
    folder: Path,
    assemblies: list[tuple[str, Assembly]],
    pairs,
    loaders: dict,
    steps: int,
    wall: float | None,
    seed: int = 0,
) -> list[dict]:
    """Score assemblies of one modular checkpoint; a row each (speed filled in later)."""
    holder: dict = {}

    def modular() -> ModularModel:
        if "m" not in holder:
            holder["m"] = ModularModel.from_pretrained(folder)
        return holder["m"]

    tokenizer = load_tokenizer(modular().config.teacher)  # the modules' own teacher's
    rows = []
    named = {str(assembly_for_shape(s, *TEACHER_DEPTHS, GRANULARITY_LIST)) for s in NAMED}
    for rule, a in assemblies:
        name = f"{method}|{a}" + (f"|s{seed}" if seed else "")  # seed 0 keeps the key it always had
        loaders[name] = lambda a=a: (modular().assemble(a), tokenizer)
        try:
            scores = score(work, f"{task}|{name}", loaders[name], pairs, f"{method} {a}")
        except NotDone as missing:
            MISSING.append(str(missing))
            del loaders[name]
            continue
        cost = modular().cost_model()
        rows.append(
            {
                "task": task,
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


MULTI30K_TEACHER = SHARED / "models" / "multi30k-t5-12x12"


def student_name(method: str, shape: str, steps: int, seed: int, base_steps: int) -> str:
    """A student's model key, `sft|6-6|s0`; a student at other steps than --steps says them: `sft|6-6|4000steps|s0`.
    Its folder under students/ is the same with `-` for `|`."""
    return "|".join([method, shape, *([f"{steps}steps"] if steps != base_steps else []), f"s{seed}"])


def student(
    work: Work, args, method: str, shape: str, steps: int, seed: int, test, loaders: dict, teacher_params: int
) -> dict:
    """Train (or resume) one Multi30k student through `modformer baseline` and score it: its row. Stage
    `multi30k-<method>[-<steps>steps][-s<seed>]`; pseudo students read the shared labels and count their time."""
    name = student_name(method, shape, steps, seed, args.steps)
    out = work.folder / "students" / name.replace("|", "-")
    extra = ["--pseudo-labels", work.folder / PSEUDO_NAME] if method == "pseudo" else []
    cmd = [
        *CLI,
        "baseline",
        method,
        "--teacher",
        MULTI30K_TEACHER,
        "--shape",
        shape,
        *data_args("multi30k"),
        "--steps",
        steps,
        "--batch-size",
        args.batch_size,
        *(["--seed", seed] if seed else []),
        *extra,
    ]
    budget = f"-{steps}steps" if steps != args.steps else ""
    train(work, seeded(f"multi30k-{method}{budget}", seed), cmd, out, steps)
    started = time.perf_counter()
    labels_wall = work.walls.get("multi30k-pseudo-labels", 0.0) if method == "pseudo" else 0.0
    row = student_row(work, "multi30k", method, shape, out, test, loaders, teacher_params, name, labels_wall, seed)
    work.add_wall("multi30k-scoring", time.perf_counter() - started)
    return row


def student_row(
    work: Work,
    task: str,
    method: str,
    shape: str,
    folder: Path,
    pairs,
    loaders: dict,
    teacher_params: int,
    name: str,
    extra_wall: float = 0.0,
    seed: int = 0,
) -> dict:
    """Score one student in `folder` (cached by `name`, from student_name) and time it later: its row."""
    load = lambda: (load_seq2seq(folder), load_tokenizer(folder))  # noqa: E731
    scores = score(work, f"{task}|{name}", load, pairs, f"{method} {name.split('|', 1)[1].replace('|', ' ')}")
    loaders[name] = load  # timed only once scored
    info = json.loads((folder / INFO_NAME).read_text())
    return {
        "task": task,
        "method": method,
        "assembly": f"student {shape} (teacher layers {info['layers']})",
        "shape": shape,
        "rule": "student",
        "size_ratio": teacher_params / info["parameters"],
        "depth_ratio": None,
        "steps": info["completed_steps"],
        "wall_s": info["wall_s"] + extra_wall,
        "seed": seed,
        "model": name,
        **scores,
    }


def multi30k(work: Work, args, rows: list[dict], missing: list[str]) -> None:
    task, teacher = "multi30k", MULTI30K_TEACHER
    spec = DataSpec(str(TASKS[task]["data"]), src_ext="en", tgt_ext="de")
    test = load_split(spec, TASKS[task]["test"])
    loaders: dict = {}
    train_cmd = train_command(task, teacher, args.steps, args.batch_size)
    main = work.folder / "modular"
    wall = train(work, "multi30k-modular", train_cmd, main, args.steps)
    modular = ModularModel.from_pretrained(main)
    c = modular.config
    teacher_assembly = Assembly.teacher(c.encoder_layers, c.decoder_layers)
    teacher_params = modular.cost_model().params(teacher_assembly)

    # teacher and assemblies
    started = time.perf_counter()
    tokenizer = load_tokenizer(teacher)
    loaders["teacher"] = lambda: (load_seq2seq(teacher), tokenizer)
    t = score(work, f"{task}|teacher", loaders["teacher"], test, "teacher")
    rows.append(
        {
            "task": task,
            "method": "teacher",
            "assembly": str(teacher_assembly),
            "shape": "12-12",
            "rule": "teacher",
            "size_ratio": 1.0,
            "depth_ratio": 1.0,
            "steps": None,
            "wall_s": None,
            "seed": 0,
            "model": "teacher",
            **t,
        }
    )
    shape_of = {s: assembly_for_shape(s, c.encoder_layers, c.decoder_layers, c.granularities) for s in NAMED}
    named = [(NAMED[s], a) for s, a in shape_of.items()]
    spread = [(r, a) for r, a in spread_assemblies(modular, args.spread) if a not in shape_of.values()]
    rows += modular_rows(work, task, "modular", main, named + spread, test, loaders, args.steps, wall)
    random_pick = [("random", a) for s in COMPARED for a in random_orders(modular, s, RANDOM_ORDERS)]
    rows += modular_rows(work, task, "modular-random", main, random_pick, test, loaders, args.steps, wall)
    work.add_wall("multi30k-scoring", time.perf_counter() - started)
    cost = modular.cost_model()
    at_2x = min(strategy_sequence("size-first", cost), key=lambda a: abs(cost.size_ratio(a) - 2.0))
    del modular

    # students
    if "students" in args.stages:
        labels_path = work.folder / PSEUDO_NAME
        if not labels_path.is_file() and not REPORT_ONLY:
            started = time.perf_counter()
            print("[pseudo-labels] teacher's greedy outputs for the training sources")
            sources = load_split(spec, "train").sources
            pseudo_labels(load_seq2seq(teacher), tokenizer, sources, work.folder, batch_size=64)
            work.add_wall("multi30k-pseudo-labels", time.perf_counter() - started)
        # at every budget a modular run has: --steps, and a longer variant's (like for like with it)
        budgets = sorted({args.steps} | {args.steps * v.steps_x for v in VARIANTS.values()})
        for steps in budgets:
            for shape in COMPARED:
                for method in METHODS:
                    try:
                        rows.append(student(work, args, method, shape, steps, 0, test, loaders, teacher_params))
                    except NotDone as err:
                        MISSING.append(str(err))
    else:
        missing.append("multi30k students")

    # ablations
    if "ablations" in args.stages:
        for name, extra in ABLATIONS.items():
            out = work.folder / f"modular-{name}"
            try:
                ab_wall = train(work, f"multi30k-{name}", [*train_cmd, *extra], out, args.steps)
            except NotDone as err:
                MISSING.append(str(err))
                continue
            started = time.perf_counter()
            rows += modular_rows(
                work, task, name, out, [(NAMED[s], shape_of[s]) for s in COMPARED], test, loaders, args.steps, ab_wall
            )
            work.add_wall("multi30k-scoring", time.perf_counter() - started)
    else:
        missing.append("multi30k ablations")

    # variants of the recipe: scored at the named shapes, the 2x one and the random orders, like the default run
    if "variants" in args.stages:
        picked = named + ([("size-first", at_2x)] if at_2x not in shape_of.values() else [])
        for name, variant in VARIANTS.items():
            steps = args.steps * variant.steps_x
            cmd = train_command(task, teacher, steps, args.batch_size)
            for seed in range(variant.seeds):
                out, stage = work.folder / seeded(name, seed), f"multi30k-{seeded(name, seed)}"
                try:
                    v_wall = train(work, stage, [*cmd, *variant.options, "--seed", seed], out, steps)
                except NotDone as err:
                    MISSING.append(str(err))
                    continue
                started = time.perf_counter()
                rows += modular_rows(work, task, name, out, picked, test, loaders, steps, v_wall, seed)
                rows += modular_rows(work, task, f"{name}-random", out, random_pick, test, loaders, steps, v_wall, seed)
                work.add_wall("multi30k-scoring", time.perf_counter() - started)
    else:
        missing.append("multi30k variants")

    # second seeds where the margin is small
    if "seeds" in args.stages and "students" in args.stages:
        try:
            rows += second_seeds(work, task, args, rows, shape_of, train_cmd, test, loaders, teacher_params)
        except NotDone as err:  # --report-only
            MISSING.append(f"multi30k second seeds: {err}")
    elif "seeds" not in args.stages:
        missing.append("multi30k second seeds")

    # plans: the planner's pick within half the teacher's parameters, for every modular run
    if "plans" in args.stages:
        runs = [("modular", 0)] + [(name, seed) for name, v in VARIANTS.items() for seed in range(v.seeds)]
        try:
            profile = profiled(work, main, args.threads)
        except NotDone as err:
            MISSING.append(str(err))
            runs = []
        for name, seed in runs:
            folder = work.folder / seeded(name, seed)
            try:
                chosen = planned(work, seeded(name, seed), folder, profile, teacher_params)
            except NotDone as err:
                MISSING.append(str(err))
                continue
            started = time.perf_counter()
            run_steps, run_wall = completed_steps(folder)  # the run's own: variants differ in steps
            rows += modular_rows(
                work, task, name, folder, [("planned", chosen)], test, loaders, run_steps, run_wall, seed
            )
            work.add_wall("multi30k-scoring", time.perf_counter() - started)
    else:
        missing.append("multi30k plans")

    add_speed(work, task, rows, loaders, args.threads)


def second_seeds(
    work: Work,
    task: str,
    args,
    rows: list[dict],
    shape_of: dict,
    train_cmd: list,
    test,
    loaders: dict,
    teacher_params: int,
) -> list[dict]:
    """Seed 1 of each student within CLOSE_BLEU of a modular run at its shape and steps (the default run's and
    every variant's named assembly, mean over the run's seeds), and seed 1 of the default run where it is close:
    their rows. A variant has its seeds already (VARIANTS)."""
    new: list[dict] = []
    students: set[tuple[str, str, int]] = set()  # (method, shape, steps) given seed 1: once, even if close to several
    for shape in COMPARED:
        for method, steps_x in (("modular", 1), *((name, v.steps_x) for name, v in VARIANTS.items())):
            steps = args.steps * steps_x
            mod = mean_bleu(rows + new, method, shape, named_only=True)
            if mod is None:
                continue
            close = [
                r
                for r in rows
                if r["rule"] == "student"
                and r["shape"] == shape
                and r["seed"] == 0
                and r["steps"] == steps
                and abs(mod[0] - r["bleu"]) < CLOSE_BLEU
            ]
            if close and method == "modular" and mod[1] == 1:
                out = work.folder / seeded("modular", 1)
                s1_wall = train(work, f"multi30k-{seeded('modular', 1)}", [*train_cmd, "--seed", "1"], out, args.steps)
                new += modular_rows(
                    work,
                    task,
                    "modular",
                    out,
                    [(NAMED[shape], shape_of[shape])],
                    test,
                    loaders,
                    args.steps,
                    s1_wall,
                    seed=1,
                )
            for r in close:
                if (r["method"], shape, steps) in students:
                    continue
                students.add((r["method"], shape, steps))
                new.append(student(work, args, r["method"], shape, steps, 1, test, loaders, teacher_params))
    return new


def profiled(work: Work, modules: Path, threads: int) -> Path:
    """A latency profile of the teacher's layers and these modules on this machine (made once, cached)."""
    path = work.folder / "profile.json"
    if not path.is_file():
        if REPORT_ONLY:
            raise NotDone("multi30k-profile: no profile.json")
        print(f"[multi30k-profile] modformer profile -> {path}")
        cmd = [*CLI, "profile", "--modules", modules, "--out", path, "--threads", threads]
        work.add_wall("multi30k-profile", run(cmd, work.folder / "profile.log"))
    return path


def planned(work: Work, name: str, modules: Path, profile: Path, teacher_params: int) -> Assembly:
    """`modformer plan` of one modular run within half the teacher's parameters (validated on `val`); its chosen
    assembly. Cached: the plan folder is written whole when the plan is done."""
    out, stage = work.folder / "plans" / name, f"multi30k-plan-{name}"
    if not (out / "chosen.json").is_file():
        if REPORT_ONLY:
            raise NotDone(f"{stage}: no plan in {out}")
        limit = math.floor(teacher_params / PLAN_SIZE_RATIO) / 1e6  # millions, rounded down: at least 2x smaller
        out.parent.mkdir(exist_ok=True)
        cmd = [
            *CLI,
            "plan",
            "--modules",
            modules,
            "--profile",
            profile,
            *data_args("multi30k", val=False),
            "--split",
            TASKS["multi30k"]["val"],
            "--budget",
            f"params_m<={limit:.6f}",
            "--validate-samples",
            PLAN_VALIDATE_PAIRS,
            "--out",
            out,
        ]
        print(f"[{stage}] modformer plan --budget params_m<={limit:.6f} -> {out}")
        work.add_wall(stage, run(cmd, out.with_name(f"{out.name}.log")))
    return Assembly.parse(json.loads((out / "chosen.json").read_text())["assembly"])


def squad(work: Work, args, rows: list[dict], missing: list[str]) -> None:
    task = "squad_qg"
    folder = work.folder / "squad"
    folder.mkdir(exist_ok=True)
    teacher = folder / "teacher"
    # A teacher folder without teacher.json was written whole, at the end, by a version without checkpoints.
    finished_before = (teacher / "config.json").is_file() and not (teacher / TEACHER_INFO).is_file()
    if not finished_before:
        cmd = [
            *CLI,
            "teacher",
            *data_args(task),
            "--preset",
            "base",
            "--steps",
            args.squad_teacher_steps,
            "--batch-size",
            args.batch_size,
        ]
        teacher_wall = train(work, "squad-teacher", cmd, teacher, args.squad_teacher_steps)
    else:
        teacher_wall = work.walls.get("squad-teacher")
    spec = DataSpec(str(TASKS[task]["data"]), src_ext="src", tgt_ext="tgt")
    pairs = load_split(spec, TASKS[task]["test"], limit=args.squad_eval)
    loaders: dict = {}
    tokenizer = load_tokenizer(teacher)
    loaders["teacher"] = lambda: (load_seq2seq(teacher), tokenizer)
    # Scored before the modular run, so that a partial benchmark already reports the teacher (a T5: `--preset base`).
    started = time.perf_counter()
    t = score(work, f"{task}|teacher", loaders["teacher"], pairs, "squad teacher")
    work.add_wall("squad-scoring", time.perf_counter() - started)
    t_config = json.loads((teacher / "config.json").read_text())
    teacher_assembly = Assembly.teacher(t_config["num_layers"], t_config["num_decoder_layers"])
    rows.append(
        {
            "task": task,
            "method": "teacher",
            "assembly": str(teacher_assembly),
            "shape": "12-12",
            "rule": "teacher",
            "size_ratio": 1.0,
            "depth_ratio": 1.0,
            "steps": args.squad_teacher_steps,
            "wall_s": teacher_wall,
            "seed": 0,
            "model": "teacher",
            **t,
        }
    )
    train_cmd = train_command(task, teacher, args.steps, args.batch_size)
    wall = train(work, "squad-modular", train_cmd, folder / "modular", args.steps)
    modular = ModularModel.from_pretrained(folder / "modular")
    c = modular.config
    teacher_params = modular.cost_model().params(teacher_assembly)
    started = time.perf_counter()
    shapes = [(NAMED[s], assembly_for_shape(s, c.encoder_layers, c.decoder_layers, c.granularities)) for s in COMPARED]
    rows += modular_rows(work, task, "modular", folder / "modular", shapes, pairs, loaders, args.steps, wall)
    work.add_wall("squad-scoring", time.perf_counter() - started)
    out = folder / "kd-6-6-s0"
    cmd = [
        *CLI,
        "baseline",
        "kd",
        "--teacher",
        teacher,
        "--shape",
        "6-6",
        *data_args(task),
        "--steps",
        args.steps,
        "--batch-size",
        args.batch_size,
    ]
    train(work, "squad-kd", cmd, out, args.steps)
    name = student_name("kd", "6-6", args.steps, 0, args.steps)
    rows.append(student_row(work, task, "kd", "6-6", out, pairs, loaders, teacher_params, name))
    add_speed(work, task, rows, loaders, args.threads)


def add_speed(work: Work, task: str, rows: list[dict], loaders: dict, threads: int) -> None:
    timed = time_all(work, task, loaders, threads)
    for r in rows:
        if r["task"] == task:
            ms, teacher_ms = timed.get(r["model"], (None, None))
            r["latency_ms"] = ms
            r["speed_ratio"] = teacher_ms / ms if ms else None


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------
def mean_bleu(
    rows: list[dict], method: str, shape: str, named_only: bool = False, steps: int | None = None
) -> tuple[float, int] | None:
    """(mean BLEU, how many) of a method's Multi30k rows at a shape (and at `steps`, if given); None if none."""
    picked = [
        r["bleu"]
        for r in rows
        if r["method"] == method
        and r["shape"] == shape
        and r["task"] == "multi30k"
        and (not named_only or r.get("named"))
        and (steps is None or r["steps"] == steps)
    ]
    return (float(np.mean(picked)), len(picked)) if picked else None


def drop(bleu: float, teacher_bleu: float) -> dict:
    """BLEU against the teacher's: the relative drop and whether it is within DROP_TARGET_PCT."""
    pct = 100 * (1 - bleu / teacher_bleu)
    return {
        "bleu": bleu,
        "teacher_bleu": teacher_bleu,
        "relative_drop_pct": pct,
        "target_pct": DROP_TARGET_PCT,
        "met": pct <= DROP_TARGET_PCT,
    }


def method_claims(rows: list[dict], method: str, walls: dict) -> dict:
    """The acceptance lines that concern one modular run (`method`, its random orders `method`-random), against the
    students trained for the same steps."""
    out: dict = {}
    m30 = [r for r in rows if r["task"] == "multi30k"]
    teacher = next((r for r in m30 if r["method"] == "teacher"), None)
    first = next((r for r in m30 if r["method"] == method and r["seed"] == 0), None)
    steps = first["steps"] if first else None
    for shape in COMPARED:
        mod = mean_bleu(rows, method, shape, named_only=True)
        entry: dict = {
            "modular_bleu": mod[0] if mod else None,
            "modular_seeds": mod[1] if mod else 0,
            "students_steps": steps,
        }
        for student in METHODS:
            b = mean_bleu(rows, student, shape, steps=steps)
            entry[f"{student}_bleu"], entry[f"{student}_seeds"] = (b[0], b[1]) if b else (None, 0)
        done = [entry[f"{m}_bleu"] for m in METHODS if entry[f"{m}_bleu"] is not None]
        entry["modular_at_least_every_student"] = (
            mod is not None and len(done) == len(METHODS) and all(mod[0] >= b for b in done)
        )
        rnd = mean_bleu(rows, f"{method}-random", shape)
        entry["random_order_mean_bleu"] = rnd[0] if rnd else None
        entry["random_orders"] = rnd[1] if rnd else 0
        out[shape] = entry
    if teacher:
        size_first = [r for r in m30 if r["method"] == method and r["rule"] == "size-first" and r["seed"] == 0]
        at2 = min(size_first, key=lambda r: abs(r["size_ratio"] - 2.0), default=None)
        if at2:
            seeds = [r["bleu"] for r in m30 if r["method"] == method and r["assembly"] == at2["assembly"]]
            out["at_2x_size"] = {
                "assembly": at2["assembly"],
                "size_ratio": at2["size_ratio"],
                "seeds": len(seeds),
                **drop(float(np.mean(seeds)), teacher["bleu"]),
            }
    plans = [r for r in m30 if r["method"] == method and r["rule"] == "planned"]
    if teacher and plans:
        out["at_2x_size_planned"] = {
            "assemblies": [r["assembly"] for r in plans],
            "size_ratios": [r["size_ratio"] for r in plans],
            "seeds": len(plans),
            **drop(float(np.mean([r["bleu"] for r in plans])), teacher["bleu"]),
            "how": f"`modformer plan --budget params_m<=` teacher / {PLAN_SIZE_RATIO:g}, chosen on val "
            f"({PLAN_VALIDATE_PAIRS} pairs), scored on test",
        }
    beats = {
        s: (out[s]["modular_bleu"] > out[s]["random_order_mean_bleu"])
        for s in COMPARED
        if out[s]["modular_bleu"] is not None and out[s]["random_order_mean_bleu"] is not None
    }
    out["deterministic_beats_random"] = {"per_shape": beats, "met": bool(beats) and all(beats.values())}
    # Training wall time as each run records it (pseudo students: plus the shared labels' generation, counted once).
    students = [r for r in m30 if r["rule"] == "student" and r["seed"] == 0 and r["steps"] == steps]
    labels = walls.get("multi30k-pseudo-labels", 0.0)
    replaced = sum(r["wall_s"] for r in students) - labels * max(sum(r["method"] == "pseudo" for r in students) - 1, 0)
    out["train_once"] = {
        "modular_wall_s": first["wall_s"] if first else None,
        "students_wall_s": replaced,
        "students_runs": len(students),
        "students_steps": steps,
        "pseudo_labels_s": labels,
        "students": f"{len(METHODS)} methods x {len(COMPARED)} shapes (pseudo-labels once)",
        "note": "the modular run serves every shape; each student serves one",
    }
    return out


def claims(rows: list[dict], walls: dict) -> dict:
    """The issue's acceptance lines, each with the figures behind it: for the default modular run, then for each
    variant of its recipe."""
    out = method_claims(rows, "modular", walls)
    for shape in COMPARED:
        for name in ABLATIONS:
            a = mean_bleu(rows, name, shape)
            out[shape][f"{name}_bleu"] = a[0] if a else None
    m30 = [r for r in rows if r["task"] == "multi30k"]
    for name, variant in VARIANTS.items():
        first = next((r for r in m30 if r["method"] == name and r["seed"] == 0), None)
        if first is not None:
            out.setdefault("variants", {})[name] = {
                "options": " ".join(variant.options),
                "steps": first["steps"],
                "wall_s": first["wall_s"],
                **method_claims(rows, name, walls),
            }
    return out


def markdown(rows: list[dict], result: dict) -> str:
    lines = [
        f"# Seed claims: results\n\nCommand: `{result['command']}`  \nMachine: {result['machine_summary']}  \n"
        f"Complete: {result['complete']}"
        + (f" (missing: {', '.join(result['missing'])})" if result["missing"] else "")
        + "\n"
    ]
    for task in TASKS:
        picked = [r for r in rows if r["task"] == task]
        if not picked:
            continue
        metric = "ROUGE-L" if task == "squad_qg" else "chrF"
        lines += [
            f"\n## {task}\n",
            f"| method | shape | assembly | size x | speed x | BLEU | {metric} | steps | train s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(picked, key=lambda r: (r["method"] != "teacher", r["method"], r["size_ratio"])):
            other = r["rougeL"] if task == "squad_qg" else r["chrf"]
            speed = f"{r['speed_ratio']:.2f}" if r.get("speed_ratio") else "-"
            wall = f"{r['wall_s']:.0f}" if r.get("wall_s") else "-"
            method = (
                r["method"]
                + (" planned" if r["rule"] == "planned" else "")
                + (f" (seed {r['seed']})" if r["seed"] else "")
            )
            lines.append(
                f"| {method} | {r['shape']} | `{r['assembly']}` | {r['size_ratio']:.2f} | {speed} | "
                f"{r['bleu']:.2f} | {other:.2f} | {r['steps'] or '-'} | {wall} |"
            )
    lines += [
        "\n## Claims\n",
        "```json",
        json.dumps(result["claims"], indent=2),
        "```",
        "\n## Stage wall times (s)\n",
        "```json",
        json.dumps(result["walls"], indent=2),
        "```",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    m30 = [r for r in rows if r["task"] == "multi30k"]
    if not m30:
        return
    base = next((r["steps"] for r in m30 if r["method"] == "modular"), None)

    def budget(r: dict) -> int | None:
        """A student's steps where they differ from the modular run's (plotted hollow, labelled); else None."""
        return r["steps"] if r["rule"] == "student" and r["steps"] != base else None

    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    for ax, x in zip(axes, ("size_ratio", "speed_ratio"), strict=True):
        for rule, color in (("size-first", "C0"), ("speed-first", "C9")):
            mod = sorted(
                (r for r in m30 if r["method"] == "modular" and r["seed"] == 0 and r["rule"] == rule and r.get(x)),
                key=lambda r: r[x],
            )
            ax.plot([r[x] for r in mod], [r["bleu"] for r in mod], "o-", color=color, label=f"modular, {rule}")
            for r in mod:
                if r["named"]:
                    ax.annotate(r["shape"], (r[x], r["bleu"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        styles = {
            "modular-random": ("x", "C7"),
            "sft": ("s", "C1"),
            "kd": ("^", "C2"),
            "pseudo": ("v", "C3"),
            "no-curriculum": ("D", "C4"),
            "no-attn": ("P", "C5"),
            "teacher": ("*", "k"),
            **dict(zip(VARIANTS, itertools.cycle((("h", "C6"), ("h", "C8"), ("p", "goldenrod"))))),
        }
        for method, (marker, color) in styles.items():
            pts = [r for r in m30 if r["method"] == method and r.get(x)]
            for steps in sorted({budget(r) for r in pts}, key=lambda b: b or 0):
                at = [r for r in pts if budget(r) == steps]
                ax.scatter(
                    [r[x] for r in at],
                    [r["bleu"] for r in at],
                    marker=marker,
                    s=60,
                    zorder=3,
                    label=method + (f", {steps} steps" if steps else ""),
                    **({"facecolors": "none", "edgecolors": color} if steps else {"color": color}),
                )
        planned = [r for r in m30 if r["rule"] == "planned" and r.get(x)]
        if planned:  # ringed: the planner's pick within half the teacher's parameters, of each run
            ax.scatter(
                [r[x] for r in planned],
                [r["bleu"] for r in planned],
                s=160,
                facecolors="none",
                edgecolors="k",
                label="planner's pick, <= half the parameters",
                zorder=4,
            )
        ax.set_xlabel(
            {
                "size_ratio": "size ratio (teacher params / model params)",
                "speed_ratio": "measured speed ratio (teacher ms / model ms, batch 1)",
            }[x]
        )
        ax.set_ylabel("BLEU, Multi30k test_2016_flickr")
        ax.grid(alpha=0.3)
    # below both panels: inside either, it hides points
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.suptitle("One modular run vs. students trained per shape (Multi30k En-De)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "seed-claims")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps of every modular run and student")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--spread", type=int, default=24, help="assemblies spread over 1.1x-6x depth ratio")
    parser.add_argument("--squad-teacher-steps", type=int, default=3000)
    parser.add_argument("--squad-eval", type=int, default=2000, help="score SQuAD on the first N valid pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--stages",
        default="students,ablations,variants,seeds,plans,squad",
        help="optional stages to run, comma-separated (Multi30k modular + assemblies always run)",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train, score and time nothing: write the results from what is cached, listing the rest",
    )
    args = parser.parse_args()
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    args.stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    torch.set_num_threads(args.threads)
    work = Work(args.work)
    rows: list[dict] = []
    missing: list[str] = []
    for name, stage in (("multi30k", multi30k), ("squad", squad)):
        if name == "multi30k" or name in args.stages:
            try:
                stage(work, args, rows, missing)
            except NotDone as err:  # --report-only: the stage's rows so far are kept
                MISSING.append(f"{name} from here on: {err}")
        else:
            missing.append("squad_qg")
    missing += MISSING
    machine = fingerprint("cpu", "fp32", args.threads)
    result = {
        "command": "python benchmarks/seed_claims.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "machine_summary": f"{machine.get('cpu_model')}, {machine.get('logical_cores')} cores, "
        f"torch {machine.get('torch')}, {args.threads} threads, {platform.system()}",
        "settings": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "granularities": GRANULARITIES,
            "spread": args.spread,
            "squad_teacher_steps": args.squad_teacher_steps,
            "squad_eval_pairs": args.squad_eval,
            "timing_workload": str(TIMING),
            "decoding": "greedy, max 64 new tokens, batch 64",
            "multi30k_split": TASKS["multi30k"]["test"],
            "squad_split": "valid",
        },
        "complete": not missing,
        "missing": missing,
        "walls": work.walls,
        "claims": claims(rows, work.walls),
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "seed_claims.json", result)
    with atomic_path(args.results / "seed_claims.md") as tmp:
        Path(tmp).write_text(markdown(rows, result), encoding="utf-8")
    plot(rows, args.results / "seed_claims.png")
    print(json.dumps(result["claims"], indent=2))


if __name__ == "__main__":
    main()
