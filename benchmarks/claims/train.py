"""Training a modular run, a student or a teacher through the CLI, as a user runs it; a stopped run resumes."""

from __future__ import annotations

import json
from pathlib import Path

from harness import data_args, run, shown

from claims.work import NotDone, Work
from modformer.baselines import INFO_NAME as STUDENT_INFO
from modformer.modular.model import CONFIG_NAME as MODULAR_CONFIG
from modformer.recipe import STATE_NAME  # every recipe's trainer checkpoint: a run that has one can be resumed
from modformer.teacher import INFO_NAME as TEACHER_INFO

# Where each kind of run records its progress: (file, the key holding the record, or None for the whole file).
PROGRESS = ((MODULAR_CONFIG, "training"), (STUDENT_INFO, None), (TEACHER_INFO, None))


def seeded(name: str, seed: int) -> str:
    """A run's folder and stage name: seed 0 keeps the name it always had, seed s > 0 adds `-s<s>`."""
    return f"{name}-s{seed}" if seed else name


def train_command(task: str, teacher: Path, steps: int, batch_size: int) -> list:
    """`modformer train` of a modular run of `task` with the default recipe (granularities included), without --out."""
    return ["train", "--teacher", teacher, *data_args(task), "--steps", steps, "--batch-size", batch_size]


def completed_steps(out: Path) -> tuple[int, float | None]:
    """(steps done, training wall seconds) of a modular run, a student or a teacher in `out`; (0, None) if none."""
    for name, key in PROGRESS:
        path = out / name
        if path.is_file():
            info = json.loads(path.read_text())
            info = info.get(key, {}) if key else info
            return int(info.get("completed_steps", 0)), info.get("wall_s")
    return 0, None


def started(out: Path) -> bool:
    """Whether a run (modular, student or teacher) has begun in `out`: a finished step or a trainer checkpoint."""
    return completed_steps(out)[0] > 0 or (out / STATE_NAME).is_file()


def train(work: Work, stage: str, command: list, out: Path, steps: int, before=None) -> float | None:
    """Train (or resume) one run (`command` without --out) into `out`; its cumulative training wall time in seconds.
    `before()` runs first when there is training to do (e.g. the pseudo-labels a pseudo student reads). Raises
    NotDone with --report-only, and Carried where --carry has the run and it has not started here."""
    done, _ = completed_steps(out)
    if done < steps:
        work.check_carried(stage, out, started=started(out))
    if done < steps and work.report_only:
        raise NotDone(f"{stage}: {out.name} at {done}/{steps} steps")
    if done < steps:
        if before is not None:
            before()
        again = ["--resume"] if (out / STATE_NAME).is_file() else ["--overwrite"]
        print(f"[{stage}] {shown(command[:2])} -> {out} ({'resuming at ' + str(done) if done else 'new'})")
        log = out.with_name(f"{out.name}.log")
        work.add_wall(stage, run([*command, "--out", out, *again], log, threads=work.settings.threads))
    return completed_steps(out)[1]
