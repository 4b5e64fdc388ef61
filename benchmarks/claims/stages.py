"""The Multi30k and SQuAD stages, in the order of seed_claims.py's docstring. Each appends its rows to `rows` as it
goes, so that a report (--report-only) keeps the rows found before a result that is not cached."""

from __future__ import annotations

import time
from pathlib import Path

from harness import data_args
from transformers import AutoConfig
from transformers.utils import CONFIG_NAME as HF_CONFIG

from claims.config import (
    ABLATIONS,
    COMPARED,
    DEFAULT_SEEDS,
    METHODS,
    MULTI30K_TEACHER,
    NAMED,
    RANDOM_ORDERS,
    TASKS,
    VARIANTS,
)
from claims.plans import planned, profiled
from claims.score import Task, modular_rows, random_orders, score, spread_assemblies, teacher_row
from claims.students import second_seeds, student, student_name, student_row
from claims.timing import add_speed
from claims.train import completed_steps, seeded, train, train_command
from claims.work import NotDone, Work
from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import load_split
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel
from modformer.modular.strategies import assembly_for_shape, strategy_sequence
from modformer.teacher import INFO_NAME as TEACHER_INFO


def multi30k(work: Work, rows: list[dict]) -> None:
    """Stages 1-7 on Multi30k: the modular run, its assemblies and random orders, then the optional stages asked
    for, then the timing of every model scored."""
    settings, teacher = work.settings, MULTI30K_TEACHER
    task = Task("multi30k", load_split(TASKS["multi30k"].spec(), TASKS["multi30k"].test))
    train_cmd = train_command(task.name, teacher, settings.steps, settings.batch_size)
    main = work.folder / "modular"
    wall = train(work, "multi30k-modular", train_cmd, main, settings.steps)
    modular = ModularModel.from_pretrained(main)
    c = modular.config
    teacher_assembly = Assembly.teacher(c.encoder_layers, c.decoder_layers)
    task.teacher_params = modular.cost_model().params(teacher_assembly)

    # teacher and assemblies
    started = time.perf_counter()
    tokenizer = load_tokenizer(teacher)
    task.loaders["teacher"] = lambda: (load_seq2seq(teacher), tokenizer)
    scores = score(work, "multi30k|teacher", task.loaders["teacher"], task.pairs, "teacher", Path(teacher))
    rows.append(teacher_row(task, teacher_assembly, scores, steps=None, wall=None))
    shape_of = shapes_of(modular)
    named = [(NAMED[s], a) for s, a in shape_of.items()]
    spread = [(r, a) for r, a in spread_assemblies(modular, settings.spread) if a not in shape_of.values()]
    rows += modular_rows(work, task, "modular", main, named + spread, settings.steps, wall, model=modular)
    rows += modular_rows(work, task, "modular-random", main, picks(modular)[1], settings.steps, wall, model=modular)
    work.add_wall("multi30k-scoring", time.perf_counter() - started)
    del modular
    for seed in range(1, DEFAULT_SEEDS):  # the default's further seeds: scored as a variant's seeds are
        rows += seed_rows(work, task, "modular", train_cmd, seed, settings.steps)

    if work.asked("students"):
        students(work, task, rows)
    else:
        work.skipped.append("multi30k students")
    if work.asked("ablations"):
        ablations(work, task, rows, train_cmd)
    else:
        work.skipped.append("multi30k ablations")
    if work.asked("variants"):
        variants(work, task, rows)
    else:
        work.skipped.append("multi30k variants")
    if work.asked("seeds") and work.asked("students"):
        try:
            rows += second_seeds(work, task, rows)
        except NotDone as err:  # --report-only
            work.not_done(f"multi30k second seeds: {err}")
    elif not work.asked("seeds"):
        work.skipped.append("multi30k second seeds")
    if work.asked("plans"):
        plans(work, task, rows, main)
    else:
        work.skipped.append("multi30k plans")
    add_speed(work, task, rows)


def students(work: Work, task: Task, rows: list[dict]) -> None:
    """Every method at every compared shape, at every budget a modular run has (like for like with each)."""
    for steps in work.settings.budgets():
        for shape in COMPARED:
            for method in METHODS:
                try:
                    rows.append(student(work, task, method, shape, steps, 0))
                except NotDone as err:
                    work.not_done(err)


def ablations(work: Work, task: Task, rows: list[dict], train_cmd: list) -> None:
    """The modular run without the curriculum / attention distillation, scored at the compared shapes."""
    for name, extra in ABLATIONS.items():
        out = work.folder / f"modular-{name}"
        try:
            ab_wall = train(work, f"multi30k-{name}", [*train_cmd, *extra], out, work.settings.steps)
        except NotDone as err:
            work.not_done(err)
            continue
        started = time.perf_counter()
        model = ModularModel.from_pretrained(out)
        shape_of = shapes_of(model)  # the ablation's own modules (2,3,4,6)
        compared = [(NAMED[s], shape_of[s]) for s in COMPARED]
        rows += modular_rows(work, task, name, out, compared, work.settings.steps, ab_wall, model=model)
        work.add_wall("multi30k-scoring", time.perf_counter() - started)


def variants(work: Work, task: Task, rows: list[dict]) -> None:
    """Each variant of the recipe, each seed: scored at the named shapes, the 2x one and the random orders."""
    settings = work.settings
    for name, variant in VARIANTS.items():
        steps = settings.steps * variant.steps_x
        cmd = train_command(task.name, MULTI30K_TEACHER, steps, settings.batch_size)
        for seed in range(variant.seeds):
            rows += seed_rows(work, task, name, [*cmd, *variant.options], seed, steps)


def shapes_of(modular: ModularModel) -> dict[str, Assembly]:
    """The strategies' assembly of each named shape, from the run's own modules (granularities differ by recipe)."""
    c = modular.config
    return {s: assembly_for_shape(s, c.encoder_layers, c.decoder_layers, c.granularities) for s in NAMED}


def picks(modular: ModularModel) -> tuple[list, list]:
    """What each seed of a run is scored at: the named shapes' assemblies and the size-first one nearest 2x size
    (each with its rule), and the random orders of the compared shapes (seeded: the same for the same modules)."""
    shape_of = shapes_of(modular)
    cost = modular.cost_model()
    at_2x = min(strategy_sequence("size-first", cost), key=lambda a: abs(cost.size_ratio(a) - 2.0))
    picked = [(NAMED[s], a) for s, a in shape_of.items()]
    picked += [("size-first", at_2x)] if at_2x not in shape_of.values() else []
    return picked, [("random", a) for s in COMPARED for a in random_orders(modular, s, RANDOM_ORDERS)]


def seed_rows(work: Work, task: Task, name: str, command: list, seed: int, steps: int) -> list[dict]:
    """One seed of a modular run (`command`, its recipe, without --seed and --out) trained into <name>[-s<seed>] and
    scored at its `picks`; no rows where it is not done (--report-only) or carried (--carry)."""
    out, stage = work.folder / seeded(name, seed), f"multi30k-{seeded(name, seed)}"
    try:
        wall = train(work, stage, [*command, "--seed", seed], out, steps)
    except NotDone as err:
        work.not_done(err)
        return []
    model = ModularModel.from_pretrained(out)  # loaded once: for its picks and every score
    picked, random_pick = picks(model)
    started = time.perf_counter()
    rows = modular_rows(work, task, name, out, picked, steps, wall, seed, model=model)
    rows += modular_rows(work, task, f"{name}-random", out, random_pick, steps, wall, seed, model=model)
    work.add_wall("multi30k-scoring", time.perf_counter() - started)
    return rows


def plans(work: Work, task: Task, rows: list[dict], main: Path) -> None:
    """The planner's pick within half the teacher's parameters, for every modular run (each seed)."""
    runs = [("modular", s) for s in range(DEFAULT_SEEDS)]
    runs += [(name, seed) for name, v in VARIANTS.items() for seed in range(v.seeds)]
    try:
        profile = profiled(work, main)
    except NotDone as err:
        work.not_done(err)
        runs = []
    for name, seed in runs:
        folder = work.folder / seeded(name, seed)
        try:
            chosen = planned(work, seeded(name, seed), folder, profile, task.teacher_params)
        except NotDone as err:
            work.not_done(err)
            continue
        started = time.perf_counter()
        run_steps, run_wall = completed_steps(folder)  # the run's own: variants differ in steps
        rows += modular_rows(work, task, name, folder, [("planned", chosen)], run_steps, run_wall, seed)
        work.add_wall("multi30k-scoring", time.perf_counter() - started)


def squad(work: Work, rows: list[dict]) -> None:
    """Stage 8: a SQuAD QG teacher trained here, one modular run and a KD 6-6 student, scored and timed."""
    settings = work.settings
    folder = work.folder / "squad"
    folder.mkdir(exist_ok=True)
    teacher = folder / "teacher"
    # A teacher folder without teacher.json was written whole, at the end, by a version without checkpoints.
    finished_before = (teacher / HF_CONFIG).is_file() and not (teacher / TEACHER_INFO).is_file()
    if not finished_before:
        cmd = [
            "teacher",
            *data_args("squad_qg"),
            "--preset",
            "base",
            "--steps",
            settings.squad_teacher_steps,
            "--batch-size",
            settings.batch_size,
        ]
        teacher_wall = train(work, "squad-teacher", cmd, teacher, settings.squad_teacher_steps)
    else:
        teacher_wall = work.wall("squad-teacher", None)
    task = Task("squad_qg", load_split(TASKS["squad_qg"].spec(), TASKS["squad_qg"].test, limit=settings.squad_eval))
    tokenizer = load_tokenizer(teacher)
    task.loaders["teacher"] = lambda: (load_seq2seq(teacher), tokenizer)
    # Scored before the modular run, so that a partial benchmark already reports the teacher (a T5: `--preset base`).
    started = time.perf_counter()
    scores = score(work, "squad_qg|teacher", task.loaders["teacher"], task.pairs, "squad teacher", Path(teacher))
    work.add_wall("squad-scoring", time.perf_counter() - started)
    t_config = AutoConfig.from_pretrained(teacher)
    teacher_assembly = Assembly.teacher(t_config.num_layers, t_config.num_decoder_layers)
    rows.append(teacher_row(task, teacher_assembly, scores, settings.squad_teacher_steps, teacher_wall))
    train_cmd = train_command(task.name, teacher, settings.steps, settings.batch_size)
    wall = train(work, "squad-modular", train_cmd, folder / "modular", settings.steps)
    modular = ModularModel.from_pretrained(folder / "modular")
    c = modular.config
    task.teacher_params = modular.cost_model().params(teacher_assembly)
    started = time.perf_counter()
    shapes = [(NAMED[s], assembly_for_shape(s, c.encoder_layers, c.decoder_layers, c.granularities)) for s in COMPARED]
    rows += modular_rows(work, task, "modular", folder / "modular", shapes, settings.steps, wall)
    work.add_wall("squad-scoring", time.perf_counter() - started)
    out = folder / "kd-6-6-s0"
    cmd = [
        "baseline",
        "kd",
        "--teacher",
        teacher,
        "--shape",
        "6-6",
        *data_args("squad_qg"),
        "--steps",
        settings.steps,
        "--batch-size",
        settings.batch_size,
    ]
    train(work, "squad-kd", cmd, out, settings.steps)
    name = student_name("kd", "6-6", settings.steps, 0, settings.steps)
    rows.append(student_row(work, task, "kd", "6-6", out, name))
    add_speed(work, task, rows)
