"""Rows carried over from an earlier results file, for runs whose caches this work folder does not have.

The benchmark's runs take hours each, and a work folder does not outlive its machine. `--carry FILE` (an earlier
`seed_claims.json`, e.g. the committed one) stands in for what this folder lacks: a run that has not started here
and that FILE has (its training stage in FILE's `walls`, or rows from its folder: older runs did not always keep
their stage times) is not trained again (`Carried`); after the stages, each (task, method, steps, seed) group of
FILE's rows that this run did not measure is added, marked `carried` with FILE's date. A run this folder has, or
that FILE does not know, is trained and measured as usual, and its rows replace FILE's. `--carry-as OLD=NEW` renames
a method of FILE's rows (and its stages), for when the recipe a name stands for changed: `--carry-as
modular=modular-v0` keeps the old default's rows as the seed recipe's when the default recipe is new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import read_results

from claims.config import ABLATIONS, PLAN_STAGE
from claims.students import student_name
from claims.train import seeded
from claims.work import Carried

TASK_PREFIXES = (PLAN_STAGE, "multi30k-", "squad-")  # stage names: <prefix><method or run>[-s<seed>]


def renamed_method(method: str, renames: dict[str, str]) -> str:
    """A row's method after `--carry-as`: OLD itself and its random orders (OLD-random)."""
    for old, new in renames.items():
        if method == old:
            return new
        if method == f"{old}-random":
            return f"{new}-random"
    return method


def renamed_stage(stage: str, renames: dict[str, str]) -> str:
    """A stage name after `--carry-as`: multi30k-OLD, multi30k-OLD-s1, multi30k-plan-OLD, squad-OLD (squad-modular)."""
    for prefix in TASK_PREFIXES:
        if not stage.startswith(prefix):
            continue
        rest = stage[len(prefix) :]
        for old, new in renames.items():
            match = re.fullmatch(rf"{re.escape(old)}(-s\d+)?", rest)
            if match:
                return f"{prefix}{new}{match.group(1) or ''}"
        return stage
    return stage


def run_folder(row: dict, base_steps: int) -> str | None:
    """The work folder (relative) of the Multi30k run a row came from, as the stages name it; None for the teacher
    and SQuAD (whose stages are named in `walls`)."""
    if row["task"] != "multi30k" or row["rule"] == "teacher":
        return None
    if row["rule"] == "student":
        name = student_name(row["method"], row["shape"], row["steps"], row["seed"], base_steps)
        return "students/" + name.replace("|", "-")
    method = row["method"].removesuffix("-random")
    name = seeded(f"modular-{method}" if method in ABLATIONS else method, row["seed"])
    return f"plans/{name}" if row["rule"] == "planned" else name


def group(row: dict) -> tuple:
    """The rows one run gives: a modular run's assemblies (its random orders and its plan apart), or one student."""
    kind = row["rule"] if row["rule"] in ("planned", "teacher") else row["shape"] if row["rule"] == "student" else ""
    return (row["task"], row["method"], row["steps"], row["seed"], kind)


@dataclass
class Carry:
    """An earlier results file's rows and stages, renamed; what this run carried from it."""

    source: str
    date: str
    rows: list[dict]
    walls: dict[str, float]
    renames: dict[str, str] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)  # the runs this run did not train because the file has them
    runs: set[str] = field(default_factory=set)  # the run folders (relative to --work) the file's rows came from

    @classmethod
    def load(cls, path: Path, renames: dict[str, str], base_steps: int = 2000) -> Carry:
        recorded = read_results(path)
        rows = [{**r, "method": renamed_method(r["method"], renames)} for r in recorded["rows"]]
        walls = {renamed_stage(k, renames): v for k, v in recorded["walls"].items()}
        runs = {f for r in rows if (f := run_folder(r, base_steps)) is not None}
        return cls(str(path), recorded["date"], rows, walls, dict(renames), runs=runs)

    def check(self, stage: str, run: str, started: bool) -> None:
        """Raise Carried if the run `stage` into the folder `run` (relative to --work) has not started here and the
        file has it (its stage in `walls`, or rows from that folder)."""
        # A student's stage (multi30k-<method>[-<steps>steps][-s<seed>]) names no shape: 12-3's seed 1 shares it
        # with 6-6's, so a student is carried only by its folder.
        by_stage = stage in self.walls and not run.startswith("students/")
        if not started and (by_stage or run in self.runs):
            self.stages.append(stage)
            raise Carried(f"{stage}: carried from {self.source} ({self.date})")

    def merge(self, rows: list[dict], walls: dict[str, float]) -> tuple[list[dict], dict[str, float]]:
        """`rows` plus each group of the file's rows this run did not measure (marked carried); `walls` plus the
        file's stages this run has none of."""
        measured = {group(r) for r in rows}
        carried = [{**r, "carried": self.date} for r in self.rows if group(r) not in measured]
        return rows + carried, {**{k: v for k, v in self.walls.items() if k not in walls}, **walls}

    def record(self) -> dict:
        """The results file's `carried`: where from, what was renamed, the runs not trained here."""
        return {"from": self.source, "date": self.date, "renamed": self.renames, "stages": sorted(set(self.stages))}
