"""Kill a real training run with SIGKILL at a random moment, resume it, and compare with an uninterrupted run.

    python benchmarks/resume.py [--teacher ../shared/models/multi30k-t5-12x12] [--steps 60] [--save-every 10]
    python benchmarks/resume.py --from-results benchmarks/results/resume.json --results DIR

Both runs are the real CLI (`modformer train`) in subprocesses, same seed and settings. The interrupted one is
killed with SIGKILL at a random time (seeded) after its first checkpoint, then continued with `--resume`. The figure
is the held-out loss (mean over the uniform assemblies) at the last step. Writes benchmarks/results/resume.json;
its verdict (`relative_difference`) is computed from the two losses by `report()`, which `--from-results` reruns on a
results file's losses.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from harness import (
    RUNS,
    TEACHER,
    Results,
    add_results_options,
    cli,
    cli_env,
    data_args,
    measured_or_recorded,
    provenance,
)

from modformer.modular.model import CONFIG_NAME
from modformer.recipe import TrainerCheckpoint

NAME = "resume"  # results/resume.json
TARGET = "relative_difference <= 0.01"
DERIVED = ("relative_difference", "target")  # computed by report()


def train_cmd(args, out: Path, *extra: str) -> list[str]:
    return cli(
        "train",
        "--teacher",
        args.teacher,
        *data_args("multi30k", split_option=None),
        "--out",
        out,
        "--steps",
        args.steps,
        "--save-every",
        args.save_every,
        "--eval-every",
        args.steps,
        "--seed",
        "0",
        *extra,
    )


def completed_steps(out: Path) -> int:
    try:
        return json.loads((out / CONFIG_NAME).read_text())["training"]["completed_steps"]
    except (OSError, ValueError, KeyError):
        return 0


def final_loss(out: Path) -> float:
    """The held-out loss (mean over the uniform assemblies) of the run's last evaluation."""
    return float(TrainerCheckpoint.load(out).state.history[-1]["mean"])


def measure(args) -> dict:
    """An uninterrupted run, and one killed after a random checkpoint and resumed: the measured record."""
    work = Path(args.work)
    rng = random.Random(args.seed)
    env = cli_env(None)
    straight, killed = work / "uninterrupted", work / "killed"
    for path in (straight, killed):
        shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(train_cmd(args, straight), check=True, env=env, stdout=subprocess.DEVNULL)
    straight_s = time.perf_counter() - started

    # Kill after a random checkpoint, at a random moment before the next one.
    kill_after = rng.randrange(args.save_every, args.steps - args.save_every, args.save_every)
    linger = rng.uniform(0.0, 1.0)
    proc = subprocess.Popen(train_cmd(args, killed), env=env, stdout=subprocess.DEVNULL)
    while completed_steps(killed) < kill_after and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(linger)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = completed_steps(killed)
    subprocess.run(train_cmd(args, killed, "--resume"), check=True, env=env, stdout=subprocess.DEVNULL)
    return {
        **provenance(),
        "teacher": args.teacher,
        "steps": args.steps,
        "save_every": args.save_every,
        "killed_with": "SIGKILL",
        "killed_after_checkpoint_step": at_kill,
        "killed_seconds_after_that_checkpoint": round(linger, 3),
        "uninterrupted_loss": final_loss(straight),
        "resumed_loss": final_loss(killed),
        "uninterrupted_seconds": round(straight_s, 1),
    }


def report(measured: dict) -> dict:
    """The measured record with its verdict: the relative difference of the two final losses."""
    uninterrupted, resumed = measured["uninterrupted_loss"], measured["resumed_loss"]
    return {**measured, "relative_difference": abs(resumed - uninterrupted) / uninterrupted, "target": TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=str(RUNS / "bench-resume"))
    add_results_options(parser, NAME)
    args = parser.parse_args()
    result = report(measured_or_recorded(args, measure, DERIVED))
    Results(args.results, NAME).write(result)
    keys = ("killed_after_checkpoint_step", "uninterrupted_loss", "resumed_loss", "relative_difference")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
