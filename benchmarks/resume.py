"""Kill real training runs with SIGKILL, between checkpoints and at every step of their checkpoint writes; resume
them and compare with an uninterrupted run.

    python benchmarks/resume.py [--teacher ../shared/models/multi30k-t5-12x12] [--steps 60] [--save-every 10]
                                [--sweep-steps 4] [--sweep-save-every 2]
    python benchmarks/resume.py --from-results benchmarks/results/resume.json --results DIR

Every run is the real CLI (`modformer train`) in a subprocess, same seed and settings.

1. Between checkpoints: a run is killed at a random time (seeded) after one of its checkpoints, then continued with
   `--resume`. The figure is the held-out loss (mean over the uniform assemblies) at the last step against an
   uninterrupted run's (`relative_difference`).
2. During checkpoint writes: a run of `--sweep-steps` steps (a checkpoint every `--sweep-save-every`) is killed at
   its N-th write step, for N = 1, 2, ... until a run ends before its N-th (`MODFORMER_KILL_AT_OP=N` makes the
   process SIGKILL itself there: `modformer.io.crash_point`). What it left is recovered on a copy and checked to be
   one checkpoint (or none); then the run is continued with `--resume` (or started again where no checkpoint was
   complete, as `--resume` then says). A kill point is resumed exactly when the finished run has the uninterrupted
   run's modules bit for bit (a sha256 of their tensors), its final held-out loss, and nothing left beside its
   folder.

Writes benchmarks/results/resume.json; `report()` derives the verdicts (`relative_difference`, `kill_points`,
`resumed_exact_fraction`) from the measured losses and hashes, and `--from-results` reruns it on a results file.
"""

from __future__ import annotations

import argparse
import hashlib
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

from modformer.errors import CheckpointError
from modformer.io import KILL_AT_OP, read_tensors, recover_dir
from modformer.modular.model import CONFIG_NAME, WEIGHTS_NAME
from modformer.recipe import STATE_NAME, TrainerCheckpoint, verify_checkpoint

NAME = "resume"  # results/resume.json
TARGET = "relative_difference <= 0.01; resumed_exact_fraction == 1.0 over kill_points >= 20"
DERIVED = ("relative_difference", "kill_points", "resumed_exact_fraction", "target")  # computed by report()


def train_cmd(args, out: Path, steps: int, save_every: int, *extra: str) -> list[str]:
    return cli(
        "train",
        "--teacher",
        args.teacher,
        *data_args("multi30k", split_option=None),
        "--out",
        out,
        "--steps",
        steps,
        "--save-every",
        save_every,
        "--eval-every",
        steps,
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


def modules_sha256(out: Path) -> str:
    """A digest of the modules' tensors (names, dtypes, shapes, values). Not of the file: safetensors writes its
    header's metadata in an order that changes from process to process."""
    digest = hashlib.sha256()
    for name, tensor in sorted(read_tensors(out / WEIGHTS_NAME, "modules file").items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def killed_between_checkpoints(args, work: Path, env: dict) -> dict:
    """An uninterrupted run, and one killed after a random checkpoint and resumed."""
    rng = random.Random(args.seed)
    straight, killed = work / "uninterrupted", work / "killed"
    started = time.perf_counter()
    subprocess.run(
        train_cmd(args, straight, args.steps, args.save_every), check=True, env=env, stdout=subprocess.DEVNULL
    )
    straight_s = time.perf_counter() - started

    # Kill after a random checkpoint, at a random moment before the next one.
    kill_after = rng.randrange(args.save_every, args.steps - args.save_every, args.save_every)
    linger = rng.uniform(0.0, 1.0)
    proc = subprocess.Popen(train_cmd(args, killed, args.steps, args.save_every), env=env, stdout=subprocess.DEVNULL)
    while completed_steps(killed) < kill_after and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(linger)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = completed_steps(killed)
    resume = train_cmd(args, killed, args.steps, args.save_every, "--resume")
    subprocess.run(resume, check=True, env=env, stdout=subprocess.DEVNULL)
    return {
        "steps": args.steps,
        "save_every": args.save_every,
        "killed_with": "SIGKILL",
        "killed_after_checkpoint_step": at_kill,
        "killed_seconds_after_that_checkpoint": round(linger, 3),
        "uninterrupted_loss": final_loss(straight),
        "resumed_loss": final_loss(killed),
        "uninterrupted_seconds": round(straight_s, 1),
    }


def what_a_kill_left(out: Path) -> int | str | None:
    """The checkpoint a killed run left, recovered on a copy (the run's own folder waits for `--resume`): its step,
    None when there is none yet, or why it is not one checkpoint."""
    probe = out.parent.with_name(out.parent.name + "-probe")
    shutil.copytree(out.parent, probe, symlinks=True)
    try:
        folder = probe / out.name
        recover_dir(folder)
        if not (folder / STATE_NAME).is_file():
            return None
        step = verify_checkpoint(folder)
        if step != TrainerCheckpoint.load(folder).state.step:
            return f"manifest of step {step}, trainer state of another"
        return step
    except CheckpointError as err:
        return f"not one checkpoint: {err}"
    finally:
        shutil.rmtree(probe)


def continue_run(args, out: Path, env: dict) -> str:
    """What a user does after the kill: `--resume`, or start again when there is nothing to resume."""
    command = train_cmd(args, out, args.sweep_steps, args.sweep_save_every, "--resume")
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode == 0:
        return "--resume"
    if "holds no modular checkpoint" not in done.stderr:
        raise SystemExit(f"--resume after a kill failed: {done.stderr.strip().splitlines()[-1:]}")
    again = train_cmd(args, out, args.sweep_steps, args.sweep_save_every, "--overwrite")
    subprocess.run(again, check=True, env=env, stdout=subprocess.DEVNULL)
    return "started again"


def killed_during_writes(args, work: Path, env: dict) -> dict:
    """The kill-point sweep (module docstring, 2.): for each write step, what the kill left and how the run ended."""
    reference = work / "sweep-uninterrupted" / "out"
    command = train_cmd(args, reference, args.sweep_steps, args.sweep_save_every)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    points = []
    for n in range(1, args.max_kill_points + 1):
        out = work / "sweep" / f"kill-{n}" / "out"
        command = train_cmd(args, out, args.sweep_steps, args.sweep_save_every)
        done = subprocess.run(command, env={**env, KILL_AT_OP: str(n)}, stdout=subprocess.DEVNULL)
        if done.returncode == 0:  # fewer write steps than n: all were tried
            break
        if done.returncode != -signal.SIGKILL:
            raise SystemExit(f"kill point {n}: the run exited with {done.returncode}, not by SIGKILL")
        left = what_a_kill_left(out)
        continued = continue_run(args, out, env)
        points.append(
            {
                "kill_at_write_step": n,
                "left_checkpoint_step": left,
                "continued_with": continued,
                "final_loss": final_loss(out),
                "modules_sha256": modules_sha256(out),
                "left_beside": sorted(p.name for p in out.parent.iterdir() if p.name != out.name),
            }
        )
        print(f"kill point {n}: left {left}, {continued}, loss {points[-1]['final_loss']:.6f}", flush=True)
        shutil.rmtree(out.parent)
    return {
        "steps": args.sweep_steps,
        "save_every": args.sweep_save_every,
        "uninterrupted_loss": final_loss(reference),
        "uninterrupted_modules_sha256": modules_sha256(reference),
        "points": points,
    }


def measure(args) -> dict:
    """Both experiments: the measured record."""
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = cli_env(None)
    env.pop(KILL_AT_OP, None)
    return {
        **provenance(),
        "teacher": args.teacher,
        **killed_between_checkpoints(args, work, env),
        "kill_sweep": killed_during_writes(args, work, env),
    }


def exact(point: dict, sweep: dict) -> bool:
    return (
        point["final_loss"] == sweep["uninterrupted_loss"]
        and point["modules_sha256"] == sweep["uninterrupted_modules_sha256"]
        and not point["left_beside"]
    )


def report(measured: dict) -> dict:
    """The measured record with its verdicts: the relative difference of the two final losses after a kill between
    checkpoints; how many kill points the sweep tried and the fraction that ended exactly as the uninterrupted run."""
    uninterrupted, resumed = measured["uninterrupted_loss"], measured["resumed_loss"]
    sweep = measured["kill_sweep"]
    points = sweep["points"]
    return {
        **measured,
        "relative_difference": abs(resumed - uninterrupted) / uninterrupted,
        "kill_points": len(points),
        "resumed_exact_fraction": sum(exact(p, sweep) for p in points) / len(points),
        "target": TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--sweep-steps", type=int, default=4, help="steps of each run of the kill-point sweep")
    parser.add_argument("--sweep-save-every", type=int, default=2, help="its checkpoint interval")
    parser.add_argument("--max-kill-points", type=int, default=200, help="stop the sweep after this many")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=str(RUNS / "bench-resume"))
    add_results_options(parser, NAME)
    args = parser.parse_args()
    result = report(measured_or_recorded(args, measure, DERIVED))
    Results(args.results, NAME).write(result)
    keys = ("killed_after_checkpoint_step", "relative_difference", "kill_points", "resumed_exact_fraction")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
