"""Faults on the real components: a plan worker killed on a real PostgreSQL server, a torchrun rank killed mid-run.

1. The distributed plan (`plan --remote-workers 2` and two `plan-worker` processes) keeps its study on the PostgreSQL
   server named by `MODFORMER_TEST_POSTGRES` (`.ci/run` starts one with `scripts/postgres.sh`); worker 2 is killed
   with SIGKILL once it has scored. The plan scores what the dead worker held itself (after the heartbeat grace)
   and must end with the frontier of a plan run in one process.
2. `modformer train` under `torchrun` (2 gloo processes on CPU): rank 1 is killed with SIGKILL after a checkpoint,
   torchrun ends the job; the run is continued with `torchrun --max-restarts 1 ... --resume`, whose rank 1 is killed
   again after a later checkpoint, and torchrun restarts the job from that checkpoint. The modules and the held-out
   loss must be those of an uninterrupted torchrun run (within 1 %).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modformer.planner.artifact import Plan
from modformer.planner.run import pair_scorer
from modformer.planner.search import WORKER_HEARTBEAT, Search, SearchConfig, WorkerWatch, open_storage, open_study
from modformer.planner.space import Budget, space_stacks
from modformer.recipe import TrainerCheckpoint
from tests.conftest import save_teacher, tiny_t5
from tests.test_planner import plan_args, plan_root, small  # noqa: F401  (the planner tests' fixtures)

POSTGRES = os.environ.get("MODFORMER_TEST_POSTGRES")
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "modformer.cli"]


def _popen(args, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [str(a) for a in args], env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(condition, timeout_s: float, what: str, alive: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"ended before {what}: {alive.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
        time.sleep(0.2)


# --- 1. a plan worker killed, on PostgreSQL -------------------------------------------------------------------------
def test_a_worker_is_dead_once_its_heartbeat_stops_for_the_grace_and_alive_when_it_beats_again(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    watch = WorkerWatch(grace_s=30)
    watch.update({"status": "running"})
    now[0] += 60
    assert not watch.dead(1)  # never seen beating: not judged (it may not have started)
    watch.update({WORKER_HEARTBEAT.format(index=1): 1.0})
    now[0] += 29
    watch.update({WORKER_HEARTBEAT.format(index=1): 1.0})
    assert not watch.dead(1)
    now[0] += 2
    assert watch.dead(1)
    watch.update({WORKER_HEARTBEAT.format(index=1): 2.0})  # restarted
    assert not watch.dead(1)


def test_the_search_scores_what_a_dead_worker_held_and_finds_the_same_frontier(small, tmp_path, caplog):  # noqa: F811
    """In one process on a journal file: worker 1 beat once and died; the search takes its share over after the
    grace and ends with what a search without workers finds."""
    modular, _, space, loaded = small
    config = SearchConfig(method="nsga2", trials=40, population=8, seed=1)
    score = pair_scorer(loaded.scorer, space_stacks(modular.config))
    found = {}
    for name, workers in (("alone", 1), ("dead", 2)):
        study = open_study(open_storage(str(tmp_path / f"{name}.log")), name, config, {"test": name})
        if workers == 2:
            study.set_user_attr(WORKER_HEARTBEAT.format(index=1), 0.0)
        search = Search(space, Budget.parse(""), config, study, score, workers=workers, worker_grace_s=0.5)
        found[name] = search.run().scored
    assert "worker 1: no heartbeat" in caplog.text
    assert found["alone"]["assembly"].tolist() == found["dead"]["assembly"].tolist()
    assert found["alone"]["proxy_loss"].to_numpy() == pytest.approx(found["dead"]["proxy_loss"].to_numpy(), abs=2e-6)


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="MODFORMER_TEST_POSTGRES is not set (scripts/postgres.sh starts a server)")
def test_a_plan_with_a_worker_killed_on_postgres_ends_with_the_frontier_of_one_process(plan_root, data_dir, tmp_path):  # noqa: F811
    import optuna

    search = ("--method", "nsga2", "--trials", 120, "--population", 8, "--seed", 1)
    study_name = f"faults-{uuid.uuid4().hex[:12]}"  # the server outlives the test: a study of this run only
    plan = _popen(
        [
            *CLI,
            *plan_args(plan_root, data_dir, tmp_path / "two", *search),
            *("--storage", POSTGRES, "--study-name", study_name, "--remote-workers", 2),
        ]
    )
    workers = {
        k: _popen([*CLI, "plan-worker", "--storage", POSTGRES, "--study-name", study_name, "--index", k])
        for k in (1, 2)
    }
    try:
        storage = open_storage(POSTGRES)

        def worker_2_has_scored() -> bool:
            try:
                attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
            except KeyError:  # the plan has not created its study yet
                return False
            answered = sum(k.startswith("worker_loss:") for k in attrs)
            return WORKER_HEARTBEAT.format(index=2) in attrs and answered >= 8

        _wait_for(worker_2_has_scored, 300, "answers from worker 2", alive=plan)
        workers[2].send_signal(signal.SIGKILL)
        out, _ = plan.communicate(timeout=600)
        assert plan.returncode == 0, out[-3000:]
        assert "worker 2: no heartbeat" in out  # the plan took over what the dead worker held
        assert workers[1].wait(timeout=120) == 0
        assert workers[2].wait(timeout=10) == -signal.SIGKILL
    finally:
        for p in (plan, *workers.values()):
            if p.poll() is None:
                p.kill()
                p.wait()
    alone = subprocess.run(
        [str(a) for a in [*CLI, *plan_args(plan_root, data_dir, tmp_path / "one", *search)]],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    one, two = (Plan.load(tmp_path / name).frontier for name in ("one", "two"))
    front = [f[f["on_proxy_frontier"]].sort_values("assembly") for f in (one, two)]
    assert front[0]["assembly"].tolist() == front[1]["assembly"].tolist()
    assert front[0]["proxy_loss"].to_numpy() == pytest.approx(front[1]["proxy_loss"].to_numpy(), abs=2e-6)


# --- 2. a torchrun rank killed ----------------------------------------------------------------------------------------
STEPS, SAVE_EVERY = 24, 4


def _torchrun(teacher: Path, data: Path, out: Path, *extra, max_restarts: int = 0, tag: str = "") -> subprocess.Popen:
    args = [
        *("train", "--teacher", teacher, "--data", data, "--src-ext", "en", "--tgt-ext", "de", "--out", out),
        *("--steps", STEPS, "--batch-size", 16, "--eval-every", STEPS, "--save-every", SAVE_EVERY, "--lr", 0.05),
        *extra,
    ]
    launcher = [TORCHRUN, "--standalone", "--nproc_per_node=2", f"--max-restarts={max_restarts}"]
    # Restarts need a rendezvous store of their own: the one torchrun shares with the workers by default may
    # hand restarted workers the address of a dead peer (pytorch/pytorch#135712).
    env = {"MODFORMER_FAULT_TAG": tag, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    return _popen([*launcher, "-m", "modformer.cli", *args], **env)


def _completed_steps(out: Path) -> int:
    try:
        return json.loads((out / "modular_config.json").read_text())["training"]["completed_steps"]
    except (OSError, ValueError, KeyError):
        return 0


def _rank_pid(tag: str, rank: int) -> int | None:
    """The process of `rank` among the workers torchrun started with MODFORMER_FAULT_TAG=tag (read from /proc)."""
    wanted = {f"MODFORMER_FAULT_TAG={tag}".encode(), f"LOCAL_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if wanted <= environ:
                return int(entry.name)
    return None


def _kill_rank_after(run: subprocess.Popen, out: Path, step: int, tag: str) -> None:
    """SIGKILL rank 1 once the run has checkpointed `step` (and is still running)."""
    _wait_for(lambda: _completed_steps(out) >= step, 300, f"checkpoint of step {step}", alive=run)
    pid = _rank_pid(tag, 1)
    assert pid is not None and _completed_steps(out) < STEPS, "the run ended before the kill"
    os.kill(pid, signal.SIGKILL)


def _modules(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "modules.safetensors")


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors."""
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in b)
    return (diff / sum(float((b[k] ** 2).sum()) for k in b)) ** 0.5


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_a_torchrun_rank_killed_and_restarted_ends_as_an_uninterrupted_run(tmp_path, tokenizer, data_dir):
    teacher = save_teacher(tiny_t5(), tokenizer, tmp_path / "teacher")
    straight = _torchrun(teacher, data_dir, tmp_path / "straight")
    log, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, log[-3000:]

    out, tag = tmp_path / "killed", uuid.uuid4().hex
    first = _torchrun(teacher, data_dir, out, tag=tag)
    _kill_rank_after(first, out, SAVE_EVERY, tag)
    log, _ = first.communicate(timeout=300)
    assert first.returncode != 0, "torchrun without restarts should end the job when a rank dies"
    at_kill = _completed_steps(out)
    assert SAVE_EVERY <= at_kill < STEPS

    resumed = _torchrun(teacher, data_dir, out, "--resume", max_restarts=1, tag=tag)
    _kill_rank_after(resumed, out, at_kill + SAVE_EVERY, tag)  # torchrun restarts both ranks with --resume
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert _completed_steps(out) == STEPS

    assert relative_difference(_modules(out), _modules(tmp_path / "straight")) <= 0.01
    losses = [TrainerCheckpoint.load(d).state.history[-1]["mean"] for d in (out, tmp_path / "straight")]
    assert losses[0] == pytest.approx(losses[1], rel=0.01)
