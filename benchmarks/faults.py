"""Faults at scale on the real components: a plan worker killed on a real PostgreSQL server, a torchrun rank killed.

    python benchmarks/faults.py [--steps 40] [--save-every 10] [--trials 120] [--work runs/bench-faults]
    python benchmarks/faults.py --from-results benchmarks/results/faults.json --results DIR

The teacher is modformer's bundled one (`resources/teacher-multi30k-6x6`, made float32 by `copy_bundled_teacher`), the
data the shared Multi30k; every run is the real CLI in a subprocess with one thread per process (OMP_NUM_THREADS=1),
on CPU.

1. torchrun: `modformer train` with 2 gloo processes, uninterrupted; the same run with rank 1 killed (SIGKILL) after
   its first checkpoint (torchrun ends the job), continued with `torchrun --max-restarts 1 ... --resume`, whose
   rank 1 is killed again after a later checkpoint (torchrun restarts the job from it). The figures are the relative
   difference of the final modules' weights, ||resumed - uninterrupted|| / ||uninterrupted||, and of the held-out
   losses.
2. PostgreSQL: a server of its own (`scripts/postgres.sh start WORK/postgres`, stopped at the end); the uninterrupted
   modules of 1. are profiled, then `modformer plan --remote-workers 2 --storage postgresql+psycopg2://...` runs
   beside two `modformer plan-worker`s; worker 2 is killed (SIGKILL) once it has scored. The plan must complete and
   its proxy frontier (assemblies and proxy losses) equal that of the same plan run in one process.

Writes benchmarks/results/faults.json; `report()` derives the verdicts (`postgres_plan_worker_killed`,
`torchrun_rank_killed_relative_difference`, `torchrun_rank_killed_loss_relative_difference`, `met`) from the measured
record, and `--from-results` reruns it on a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness import (
    ROOT,
    RUNS,
    Results,
    add_results_options,
    cli,
    cli_env,
    data_args,
    measured_or_recorded,
    provenance,
)

from modformer.demo import BUNDLED_TEACHER, copy_bundled_teacher
from modformer.io import die_with_parent

NAME = "faults"  # results/faults.json
TARGET = "postgres_plan_worker_killed.frontier_equal; torchrun_rank_killed_relative_difference <= 0.01"
DERIVED = (
    "postgres_plan_worker_killed",
    "torchrun_rank_killed_relative_difference",
    "torchrun_rank_killed_loss_relative_difference",
    "target",
    "met",
)
TORCHRUN = Path(sys.executable).with_name("torchrun")
POSTGRES_SH = ROOT / "scripts" / "postgres.sh"
# torchrun shares its rendezvous store with the workers by default, and a restarted worker may then read a dead
# peer's address from it (pytorch/pytorch#135712): restarts need a store of their own.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def typed(command: list) -> str:
    """A command as a reader types it from the repository: `modformer ...` or `torchrun ...`, paths relative."""
    words = [str(c) for c in command]
    if words[:3] == cli()[:3]:
        words = ["modformer", *words[3:]]
    root = f"{ROOT}/"
    words = ["torchrun" if w == str(TORCHRUN) else w.removeprefix(root) for w in words]
    return " ".join(words)


def popen(command: list, env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(str(c) for c in command)}\n")
    return subprocess.Popen(
        [str(c) for c in command],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        preexec_fn=die_with_parent,  # a killed benchmark leaves no run behind
    )


def finish(proc: subprocess.Popen, what: str, log: Path, timeout_s: float = 1800) -> int:
    code = proc.wait(timeout=timeout_s)
    if code != 0:
        sys.exit(f"{what} failed (exit {code}); see {log}")
    return code


def wait_for(condition, timeout_s: float, what: str, alive: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive.poll() is not None:
            sys.exit(f"ended (exit {alive.returncode}) before {what}")
        if time.monotonic() > deadline:
            sys.exit(f"no {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------------------------
# 1. torchrun
# --------------------------------------------------------------------------------------------------------------------
def train_args(args, out: Path, *extra) -> list:
    return [
        "train",
        "--teacher",
        args.teacher,
        *data_args("multi30k"),
        "--out",
        out,
        *("--steps", args.steps, "--save-every", args.save_every, "--eval-every", args.steps),
        *("--batch-size", 16, "--seed", 0),
        *extra,
    ]


def torchrun(train: list, max_restarts: int = 0) -> list:
    launcher = [TORCHRUN, "--standalone", "--nproc_per_node=2", f"--max-restarts={max_restarts}"]
    return [*launcher, "-m", "modformer.cli", *train]


def completed_steps(out: Path) -> int:
    try:
        return json.loads((out / "modular_config.json").read_text())["training"]["completed_steps"]
    except (OSError, ValueError, KeyError):
        return 0


def rank_pid(tag: str, rank: int) -> int | None:
    """The process of `rank` among the workers torchrun started with MODFORMER_FAULT_TAG=tag (read from /proc)."""
    wanted = {f"MODFORMER_FAULT_TAG={tag}".encode(), f"LOCAL_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted <= set((entry / "environ").read_bytes().split(b"\0")):
                    return int(entry.name)
            except OSError:
                continue
    return None


def kill_rank_after(run: subprocess.Popen, out: Path, step: int, tag: str, total: int) -> dict:
    """SIGKILL rank 1 once the run has checkpointed `step`; what was checkpointed at the kill."""
    wait_for(lambda: completed_steps(out) >= step, 1800, f"a checkpoint of step {step} in {out}", run)
    pid, at = rank_pid(tag, 1), completed_steps(out)
    if pid is None or at >= total:
        sys.exit(f"{out}: the run ended before its rank could be killed")
    os.kill(pid, signal.SIGKILL)
    return {"killed": "rank 1", "signal": "SIGKILL", "checkpointed_step_at_kill": at}


def modules_relative_difference(a: Path, b: Path) -> float:
    """||a - b|| / ||b|| over every tensor of two modules files."""
    from safetensors.torch import load_file

    ta, tb = load_file(a / "modules.safetensors"), load_file(b / "modules.safetensors")
    diff = sum(float(((ta[k] - tb[k]) ** 2).sum()) for k in tb)
    return (diff / sum(float((tb[k] ** 2).sum()) for k in tb)) ** 0.5


def final_loss(out: Path) -> float:
    from modformer.recipe import TrainerCheckpoint

    return float(TrainerCheckpoint.load(out).state.history[-1]["mean"])


def torchrun_killed(args, work: Path) -> dict:
    env, log = {**cli_env(1), **TORCHRUN_ENV}, work / "torchrun.log"
    straight, killed = work / "uninterrupted", work / "killed"
    commands = {"uninterrupted": torchrun(train_args(args, straight))}
    started = time.perf_counter()
    finish(popen(commands["uninterrupted"], env, log), "the uninterrupted torchrun run", log)
    seconds = time.perf_counter() - started

    tag = uuid.uuid4().hex
    commands["killed"] = torchrun(train_args(args, killed))
    first = popen(commands["killed"], {**env, "MODFORMER_FAULT_TAG": tag}, log)
    kills = [kill_rank_after(first, killed, args.save_every, tag, args.steps)]
    kills[0]["torchrun_exit"] = first.wait(timeout=600)  # no restarts: the job ends
    at = completed_steps(killed)
    commands["resumed"] = torchrun(train_args(args, killed, "--resume"), max_restarts=1)
    resumed = popen(commands["resumed"], {**env, "MODFORMER_FAULT_TAG": tag}, log)
    kills.append(kill_rank_after(resumed, killed, at + args.save_every, tag, args.steps))
    kills[1]["torchrun_exit"] = finish(resumed, "the resumed torchrun run", log)  # restarted by torchrun
    return {
        "steps": args.steps,
        "save_every": args.save_every,
        "processes": 2,
        "commands": {k: typed(c) for k, c in commands.items()},
        "environment": {"OMP_NUM_THREADS": "1", **TORCHRUN_ENV},
        "kills": kills,
        "completed_steps": completed_steps(killed),
        "uninterrupted_loss": final_loss(straight),
        "resumed_loss": final_loss(killed),
        "modules_relative_difference": modules_relative_difference(killed, straight),
        "uninterrupted_seconds": round(seconds, 1),
    }


# --------------------------------------------------------------------------------------------------------------------
# 2. PostgreSQL
# --------------------------------------------------------------------------------------------------------------------
def postgres(action: str, folder: Path) -> str:
    done = subprocess.run([str(POSTGRES_SH), action, str(folder)], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def plan_args(args, modules: Path, profile: Path, out: Path, *extra) -> list:
    return [
        "plan",
        *("--modules", modules, "--profile", profile, "--out", out),
        *data_args("multi30k", split_option="--split"),
        *("--method", "nsga2", "--trials", args.trials, "--population", 16, "--seed", 1),
        *("--proxy-samples", 32, "--validate", 2, "--validate-samples", 16, "--max-new-tokens", 8),
        *extra,
    ]


def proxy_frontier(plan: Path) -> list[dict]:
    from modformer.planner.artifact import Plan

    front = Plan.load(plan).frontier
    front = front[front["on_proxy_frontier"]].sort_values("assembly")
    return [
        {"assembly": a, "proxy_loss": float(loss)}
        for a, loss in zip(front["assembly"], front["proxy_loss"], strict=True)
    ]


def plan_worker_killed(args, work: Path, modules: Path, url: str) -> dict:
    import optuna

    from modformer.planner.search import WORKER_HEARTBEAT, open_storage

    env, log = cli_env(1), work / "plan.log"
    profile = work / "profile.json"
    commands = {
        "profile": cli(
            *("profile", "--modules", modules, "--out", profile, "--batch", 1, "--src-len", 16, "--gen-len", 8),
            *("--repeats", 3, "--no-memory", "--threads", 1),
        )
    }
    finish(popen(commands["profile"], env, log), "profile", log)
    study = f"faults-{uuid.uuid4().hex[:12]}"
    remote = ("--storage", url, "--study-name", study, "--remote-workers", 2)
    commands["plan"] = cli(*plan_args(args, modules, profile, work / "plan-killed", *remote))
    commands["workers"] = [cli("plan-worker", "--storage", url, "--study-name", study, "--index", k) for k in (1, 2)]
    started = time.perf_counter()
    plan = popen(commands["plan"], env, log)
    workers = [popen(c, env, work / f"worker-{k}.log") for k, c in enumerate(commands["workers"], start=1)]
    try:
        storage = open_storage(url)

        def answered() -> int:
            try:
                attrs = optuna.load_study(study_name=study, storage=storage).user_attrs
            except KeyError:
                return -1
            if WORKER_HEARTBEAT.format(index=2) not in attrs:
                return -1
            return sum(k.startswith("worker_loss:") for k in attrs)

        wait_for(lambda: answered() >= args.answers_before_kill, 1800, "answers from the workers", plan)
        at_kill = answered()
        workers[1].send_signal(signal.SIGKILL)
        plan_exit = plan.wait(timeout=3600)
        seconds = time.perf_counter() - started
        worker_exits = [w.wait(timeout=300) for w in workers]
    finally:
        for p in (plan, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    took_over = "no heartbeat" in log.read_text()
    commands["alone"] = cli(*plan_args(args, modules, profile, work / "plan-alone"))
    finish(popen(commands["alone"], env, log), "the plan in one process", log)
    return {
        "trials": args.trials,
        "commands": {
            **{k: typed(c) for k, c in commands.items() if k != "workers"},
            "workers": [typed(c) for c in commands["workers"]],
        },
        "killed": "plan-worker 2",
        "signal": "SIGKILL",
        "worker_answers_at_kill": at_kill,
        "plan_exit": plan_exit,
        "worker_exits": worker_exits,
        "plan_took_over_the_dead_workers_assemblies": took_over,
        "plan_seconds": round(seconds, 1),
        "frontier_with_fault": proxy_frontier(work / "plan-killed"),
        "frontier_one_process": proxy_frontier(work / "plan-alone"),
    }


def versions(url: str) -> dict:
    import optuna
    import psycopg2
    import sqlalchemy
    import torch

    with sqlalchemy.create_engine(url).connect() as connection:
        server = connection.execute(sqlalchemy.text("SHOW server_version")).scalar()
    return {
        "postgresql_server": server,
        "psycopg2": psycopg2.__version__.split()[0],
        "sqlalchemy": sqlalchemy.__version__,
        "optuna": optuna.__version__,
        "torch": torch.__version__,
    }


def measure(args) -> dict:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    args.teacher = copy_bundled_teacher(work / "teacher")  # float32 (the bundle is float16)
    trained = torchrun_killed(args, work / "torchrun")
    print(json.dumps({k: trained[k] for k in ("kills", "modules_relative_difference")}), flush=True)
    folder = work / "postgres"
    try:
        url = postgres("start", folder)
        record = {**provenance(1), "teacher": str(BUNDLED_TEACHER.relative_to(ROOT)), "versions": versions(url)}
        record["postgres_start"] = f"scripts/postgres.sh start {folder.relative_to(ROOT)}"
        planned = plan_worker_killed(args, work / "plan", work / "torchrun" / "uninterrupted", url)
    finally:
        postgres("stop", folder)
    return {**record, "torchrun": trained, "postgres_plan": planned}


# --------------------------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------------------------
def frontiers_equal(a: list[dict], b: list[dict], atol: float = 2e-6) -> bool:
    return [p["assembly"] for p in a] == [p["assembly"] for p in b] and all(
        abs(p["proxy_loss"] - q["proxy_loss"]) <= atol for p, q in zip(a, b, strict=True)
    )


def report(measured: dict) -> dict:
    plan, trained = measured["postgres_plan"], measured["torchrun"]
    verdict = {
        "frontier_equal": frontiers_equal(plan["frontier_with_fault"], plan["frontier_one_process"]),
        "plan_completed": plan["plan_exit"] == 0,
        "frontier_points": len(plan["frontier_with_fault"]),
        "took_over": plan["plan_took_over_the_dead_workers_assemblies"],
    }
    weights = trained["modules_relative_difference"]
    loss = abs(trained["resumed_loss"] - trained["uninterrupted_loss"]) / trained["uninterrupted_loss"]
    return {
        **measured,
        "postgres_plan_worker_killed": verdict,
        "torchrun_rank_killed_relative_difference": weights,
        "torchrun_rank_killed_loss_relative_difference": loss,
        "target": TARGET,
        "met": verdict["frontier_equal"] and verdict["plan_completed"] and weights <= 0.01 and loss <= 0.01,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps of each torchrun run")
    parser.add_argument("--save-every", type=int, default=10, help="their checkpoint interval")
    parser.add_argument("--trials", type=int, default=120, help="assemblies the plan scores (nsga2; of 169)")
    parser.add_argument("--answers-before-kill", type=int, default=16, help="worker answers before worker 2 dies")
    parser.add_argument("--work", default=str(RUNS / "bench-faults"))
    add_results_options(parser, NAME)
    args = parser.parse_args()
    result = report(measured_or_recorded(args, measure, DERIVED))
    Results(args.results, NAME).write(result)
    keys = ("postgres_plan_worker_killed", "torchrun_rank_killed_relative_difference", "met")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
