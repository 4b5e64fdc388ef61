"""Kill a real training run with SIGKILL at a random moment, resume it, and compare with an uninterrupted run.

    python benchmarks/resume.py [--teacher ../shared/models/multi30k-t5-12x12] [--steps 60] [--save-every 10]

Both runs are the real CLI (`modformer train`) in subprocesses, same seed and settings. The interrupted one is
killed with SIGKILL at a random time (seeded) after its first checkpoint, then continued with `--resume`. The figure
is the held-out loss (mean over the uniform assemblies) at the last step. Writes benchmarks/results/resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modformer.io import write_json  # noqa: E402


def train_cmd(args, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "modformer.cli",
        "train",
        "--teacher",
        args.teacher,
        "--data",
        args.data,
        "--src-ext",
        "en",
        "--tgt-ext",
        "de",
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--save-every",
        str(args.save_every),
        "--eval-every",
        str(args.steps),
        "--seed",
        "0",
        *extra,
    ]


def completed_steps(out: Path) -> int:
    try:
        return json.loads((out / "modular_config.json").read_text())["training"]["completed_steps"]
    except (OSError, ValueError, KeyError):
        return 0


def final_loss(out: Path) -> float:
    import torch

    state = torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=True)
    return float(state["history"][-1]["mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(ROOT.parent / "shared/models/multi30k-t5-12x12"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k_en_de"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default=str(ROOT / "runs/bench-resume"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/resume.json"))
    args = parser.parse_args()
    work = Path(args.work)
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    straight, killed = work / "uninterrupted", work / "killed"
    for path in (straight, killed):
        subprocess.run(["rm", "-rf", str(path)], check=True)
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

    uninterrupted, resumed = final_loss(straight), final_loss(killed)
    report = {
        "command": "python benchmarks/resume.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "teacher": args.teacher,
        "steps": args.steps,
        "save_every": args.save_every,
        "killed_with": "SIGKILL",
        "killed_after_checkpoint_step": at_kill,
        "killed_seconds_after_that_checkpoint": round(linger, 3),
        "uninterrupted_loss": uninterrupted,
        "resumed_loss": resumed,
        "relative_difference": abs(resumed - uninterrupted) / uninterrupted,
        "uninterrupted_seconds": round(straight_s, 1),
        "target": "relative_difference <= 0.01",
    }
    write_json(args.out, report)
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("killed_after_checkpoint_step", "uninterrupted_loss", "resumed_loss", "relative_difference")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
