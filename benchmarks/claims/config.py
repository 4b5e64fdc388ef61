"""The benchmark's fixed choices, and the settings of one run (the command line's)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from harness import DATASETS, TEACHER

from modformer.profiling.profile import Workload

TASKS = {name: DATASETS[name] for name in ("multi30k", "squad_qg")}
MULTI30K_TEACHER = TEACHER
OLD_GRANULARITIES = "2,3,4,6"  # every divisor of 12: the modules of every recipe before the default became 2,4,6
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
COMPARED = ("6-6", "12-3")  # the shapes the students and ablations are trained / scored at
METHODS = ("sft", "kd", "pseudo")
# The recipe that was `modformer train`'s default until the decoder-gap sieves (docs/decoder-gap.md): one hybrid per
# step on the whole batch, the coarse-to-fine curriculum, every loss at weight 1, lr 5e-4. The older runs below are
# this recipe with one setting changed; their options name it whole, so that they mean the same under any default.
SEED_RECIPE = {  # TrainConfig fields (module_exposure.py replays them); seed_recipe() spells them as options
    "hybrids_per_step": 1,
    "split_batch": False,
    "hybrids_per_row": 1,
    "teacher_encoder_share": 0.0,
    "curriculum": True,
    "lr": 5e-4,
    "w_hidden": 1.0,
    "w_attn": 1.0,
    "dropout": True,
}


def seed_recipe(**changes: float | bool) -> list[str]:
    """`modformer train` options of the seed's recipe with some changed (`hybrids_per_step=3`, `curriculum=False`),
    its modules (OLD_GRANULARITIES) included."""
    options: list[str] = ["--granularities", OLD_GRANULARITIES]
    for name, value in (SEED_RECIPE | changes).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            options += [flag, f"{value:g}"]
    return options


ABLATIONS = {"no-curriculum": seed_recipe(curriculum=False), "no-attn": seed_recipe(w_attn=0.0)}  # of the seed recipe


class Variant(NamedTuple):
    """A modular run with some `modformer train` options changed; seed s > 0 trains with `--seed s` in <name>-s<s>."""

    options: list[str]
    seeds: int
    steps_x: int = 1  # a longer budget: --steps times this; its students are trained for the same steps


DEFAULT_SEEDS = 2  # the default run (`modular`, no recipe options) always has two seeds: `modular`, `modular-s1`
# The default of stop 28 (docs/decoder-gap.md section 4): today's recipe with every divisor of 12 as a module size,
# and dropout on.
V1 = ["--granularities", OLD_GRANULARITIES, "--dropout"]
# The default of stops 29-30 (section 6): today's recipe with the modules trained under the teacher's dropout.
V2 = ["--dropout"]
VARIANTS = {
    "modular-2x-steps": Variant([], 2, steps_x=2),  # the default recipe at twice the steps
    "modular-v2": Variant(V2, 2),  # the default before dropout was turned off (docs/decoder-gap.md section 10)
    "modular-v2-2x-steps": Variant(V2, 2, steps_x=2),
    "modular-v1": Variant(V1, 2),  # the default before the 3-modules were dropped (granularities 2,3,4,6)
    "modular-v1-2x-steps": Variant(V1, 2, steps_x=2),
    "modular-v0": Variant(seed_recipe(), 1),  # the seed's recipe, the default until the decoder-gap sieves
    "modular-h3": Variant(seed_recipe(hybrids_per_step=3), 2),
    "modular-h3-no-attn": Variant(seed_recipe(hybrids_per_step=3, w_attn=0.0), 2),
    "modular-h3-no-attn-2x-steps": Variant(seed_recipe(hybrids_per_step=3, w_attn=0.0), 2, steps_x=2),
}
PLAN_SIZE_RATIO = 2.0  # plans ask for assemblies at least this much smaller than the teacher (acceptance line 2)
PLAN_VALIDATE_PAIRS = 500
PLAN_STAGE = "multi30k-plan-"  # a plan's stage name: this and the run's name (multi30k-plan-modular-s1)
RANDOM_ORDERS = 5
CLOSE_BLEU = 0.5  # margins under this get a second seed
TRAIN_ONCE_RATIO = 1.5  # the modular run's wall time at most this many KD 6-6 students' of the same steps
DROP_TARGET_PCT = 5.0  # the largest relative BLEU drop from the teacher allowed at 2x size (acceptance line 2)
TIMING = Workload(batch=1, src_len=32, gen_len=32)
TIMING_REPEATS = 10  # the least of them is a call's cost without interference (see the README's profiling section)
OPTIONAL_STAGES = ("students", "ablations", "variants", "seeds", "plans", "squad")
DECODING = "greedy, max 64 new tokens, batch 64"


def parse_rename(text: str) -> tuple[str, str]:
    """`--carry-as OLD=NEW`: (OLD, NEW); a clear error otherwise."""
    old, sep, new = text.partition("=")
    if not (sep and old.strip() and new.strip()):
        raise argparse.ArgumentTypeError(f"--carry-as takes OLD=NEW (a method name each), got {text!r}")
    return old.strip(), new.strip()


@dataclass(frozen=True)
class Settings:
    """One run of the benchmark, as the command line gave it."""

    work: Path  # every training run, score and timing is cached here
    steps: int = 2000  # optimizer steps of every modular run and student
    batch_size: int = 32
    spread: int = 24  # assemblies spread over 1.1x-6x depth ratio
    squad_teacher_steps: int = 3000
    squad_eval: int = 2000  # SQuAD is scored on the first N valid pairs
    threads: int = 2
    stages: frozenset[str] = frozenset(OPTIONAL_STAGES)
    report_only: bool = False  # train, score and time nothing: report what is cached, listing the rest
    carry: Path | None = None  # an earlier results file whose rows stand in for runs this work folder lacks
    carry_as: tuple[tuple[str, str], ...] = ()  # (old, new) method renames of the carried rows

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            work=args.work,
            steps=args.steps,
            batch_size=args.batch_size,
            spread=args.spread,
            squad_teacher_steps=args.squad_teacher_steps,
            squad_eval=args.squad_eval,
            threads=args.threads,
            stages=frozenset(s.strip() for s in args.stages.split(",") if s.strip()),
            report_only=args.report_only,
            carry=args.carry,
            carry_as=tuple(args.carry_as),  # (old, new) pairs: parse_rename is the option's type
        )

    def budgets(self) -> list[int]:
        """Every modular run's steps: --steps and each longer variant's (students are trained at each)."""
        return sorted({self.steps} | {self.steps * v.steps_x for v in VARIANTS.values()})

    def record(self) -> dict:
        """The `settings` of the results file."""
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "granularities": "the default's (2,4,6 for 12 layers); 2,3,4,6 for modular-v0, -v1, -h3 and the ablations",
            "spread": self.spread,
            "squad_teacher_steps": self.squad_teacher_steps,
            "squad_eval_pairs": self.squad_eval,
            "timing_workload": str(TIMING),
            "decoding": DECODING,
            "multi30k_split": TASKS["multi30k"].test,
            "squad_split": TASKS["squad_qg"].test,
        }
