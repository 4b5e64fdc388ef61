"""The profile of the Multi30k modules, and the planner's pick within half the teacher's parameters."""

from __future__ import annotations

import math
from pathlib import Path

from harness import data_args, run

from claims.config import PLAN_SIZE_RATIO, PLAN_STAGE, PLAN_VALIDATE_PAIRS
from claims.train import completed_steps
from claims.work import Carried, NotDone, Work
from modformer.modular.assembly import Assembly
from modformer.planner.artifact import Plan
from modformer.profiling.profile import profile_paths


def profiled(work: Work, modules: Path) -> Path:
    """A latency profile of the teacher's layers and these modules on this machine (made once, cached in the work
    folder); its .json path."""
    path = profile_paths(work.folder)[1]
    if not path.is_file():
        if work.report_only:
            raise NotDone(f"multi30k-profile: no {path.name}")
        print(f"[multi30k-profile] modformer profile -> {path}")
        args = ["profile", "--modules", modules, "--out", path, "--threads", work.settings.threads]
        work.add_wall("multi30k-profile", run(args, path.with_suffix(".log"), threads=work.settings.threads))
    return path


def planned(work: Work, name: str, modules: Path, profile: Path, teacher_params: int) -> Assembly:
    """`modformer plan` of one modular run within half the teacher's parameters (validated on `val`); its chosen
    assembly. Cached: the plan folder is written whole when the plan is done."""
    out, stage = work.folder / "plans" / name, f"{PLAN_STAGE}{name}"
    if not Plan.is_complete(out):
        work.check_carried(stage, out, started=False)  # a plan is written whole: one not complete starts afresh
        if completed_steps(modules)[0] == 0:  # no modules here to plan with
            if work.carries(modules):  # the run's rows (and its plan's, where the file has one) are the file's
                raise Carried(f"{stage}: {modules.name} is carried; its modules are not here to plan with")
            raise NotDone(f"{stage}: {modules.name} has no trained modules here")
        if work.report_only:
            raise NotDone(f"{stage}: no plan in {out}")
        limit = math.floor(teacher_params / PLAN_SIZE_RATIO) / 1e6  # millions, rounded down: at least 2x smaller
        out.parent.mkdir(exist_ok=True)
        args = [
            "plan",
            "--modules",
            modules,
            "--profile",
            profile,
            *data_args("multi30k", split_option="--split"),
            "--budget",
            f"params_m<={limit:.6f}",
            "--validate-samples",
            PLAN_VALIDATE_PAIRS,
            "--out",
            out,
        ]
        print(f"[{stage}] modformer plan --budget params_m<={limit:.6f} -> {out}")
        work.add_wall(stage, run(args, out.with_name(f"{out.name}.log"), threads=work.settings.threads))
    return Assembly.parse(Plan.load(out).chosen["assembly"])
