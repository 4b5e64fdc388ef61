"""The SFT / KD / pseudo-label students (`modformer baseline`), and second seeds where a margin is small."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import data_args

from claims.config import CLOSE_BLEU, COMPARED, MULTI30K_TEACHER, TASKS, VARIANTS
from claims.report import mean_bleu
from claims.score import Task, score
from claims.train import seeded, train
from claims.work import NotDone, Work
from modformer.baselines import INFO_NAME, PSEUDO_NAME, pseudo_labels
from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import load_split

LABELS_STAGE = "multi30k-pseudo-labels"


def student_name(method: str, shape: str, steps: int, seed: int, base_steps: int) -> str:
    """A student's model key, `sft|6-6|s0`; a student at other steps than --steps says them: `sft|6-6|4000steps|s0`.
    Its folder under students/ is the same with `-` for `|`."""
    return "|".join([method, shape, *([f"{steps}steps"] if steps != base_steps else []), f"s{seed}"])


def ensure_pseudo_labels(work: Work) -> None:
    """The teacher's greedy outputs for the training sources, generated once (timed) for every pseudo student."""
    if (work.folder / PSEUDO_NAME).is_file() or work.report_only:
        return
    started = time.perf_counter()
    print("[pseudo-labels] teacher's greedy outputs for the training sources")
    teacher = MULTI30K_TEACHER
    sources = load_split(TASKS["multi30k"].spec(), "train").sources
    pseudo_labels(load_seq2seq(teacher), load_tokenizer(teacher), sources, work.folder, batch_size=64)
    work.add_wall(LABELS_STAGE, time.perf_counter() - started)


def student(work: Work, task: Task, method: str, shape: str, steps: int, seed: int) -> dict:
    """Train (or resume) one Multi30k student through `modformer baseline` and score it: its row. Stage
    `multi30k-<method>[-<steps>steps][-s<seed>]`; pseudo students read the shared labels and count their time."""
    base = work.settings.steps
    name = student_name(method, shape, steps, seed, base)
    out = work.folder / "students" / name.replace("|", "-")
    extra = ["--pseudo-labels", work.folder / PSEUDO_NAME] if method == "pseudo" else []
    cmd = [
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
        work.settings.batch_size,
        *(["--seed", seed] if seed else []),
        *extra,
    ]
    budget = f"-{steps}steps" if steps != base else ""
    labels = (lambda: ensure_pseudo_labels(work)) if method == "pseudo" else None  # made when a pseudo student trains
    train(work, seeded(f"multi30k-{method}{budget}", seed), cmd, out, steps, before=labels)
    started = time.perf_counter()
    labels_wall = work.wall(LABELS_STAGE) if method == "pseudo" else 0.0
    row = student_row(work, task, method, shape, out, name, labels_wall, seed)
    work.add_wall("multi30k-scoring", time.perf_counter() - started)
    return row


def student_row(
    work: Work, task: Task, method: str, shape: str, folder: Path, name: str, extra_wall: float = 0.0, seed: int = 0
) -> dict:
    """Score one student in `folder` (cached by `name`, from student_name) and time it later: its row."""

    def load():
        return load_seq2seq(folder), load_tokenizer(folder)

    desc = f"{method} {name.split('|', 1)[1].replace('|', ' ')}"
    scores = score(work, f"{task.name}|{name}", load, task.pairs, desc, folder)
    task.loaders[name] = load  # timed only once scored
    info = json.loads((folder / INFO_NAME).read_text())
    return {
        "task": task.name,
        "method": method,
        "assembly": f"student {shape} (teacher layers {info['layers']})",
        "shape": shape,
        "rule": "student",
        "size_ratio": task.teacher_params / info["parameters"],
        "depth_ratio": None,
        "steps": info["completed_steps"],
        "wall_s": info["wall_s"] + extra_wall,
        "seed": seed,
        "model": name,
        **scores,
    }


def second_seeds(work: Work, task: Task, rows: list[dict]) -> list[dict]:
    """Seed 1 of each student within CLOSE_BLEU of a modular run at its shape and steps (the default run's and
    every variant's named assembly, mean over the run's seeds): their rows. Every modular run has its seeds already
    (DEFAULT_SEEDS, VARIANTS). Rows --carry brings in count as measured ones: a carried student close to a new
    run gets its second seed here."""
    rows = work.carry.merge(rows, {})[0] if work.carry is not None else rows
    new: list[dict] = []
    students: set[tuple[str, str, int]] = set()  # (method, shape, steps) given seed 1: once, even if close to several
    base = work.settings.steps
    for shape in COMPARED:
        for method, steps_x in (("modular", 1), *((name, v.steps_x) for name, v in VARIANTS.items())):
            steps = base * steps_x
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
            for r in close:
                if (r["method"], shape, steps) in students:
                    continue
                students.add((r["method"], shape, steps))
                try:
                    new.append(student(work, task, r["method"], shape, steps, 1))
                except NotDone as err:  # carried, or not done (--report-only): the other seeds' rows are kept
                    work.not_done(err)
    return new
