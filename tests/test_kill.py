"""Lose nothing, ever. A checkpoint is one unit whenever the process dies: each recipe's run is killed (SIGKILL) at
every step of its checkpoint writes in turn, then continued, and must end exactly where an uninterrupted run ends;
resume refuses a folder that mixes checkpoints. Non-finite weights are neither checkpointed nor exported. What a
killed write leaves is cleared by the next. Ctrl-C ends a command with 130 whenever it comes, leaving nothing
half-written.

Each session runs in a process of its own, forked from a server that has imported torch and modformer once
(multiprocessing's forkserver), so a killed session costs a fraction of a second. `MODFORMER_KILL_AT_OP=N` makes a
session kill itself at the N-th step of its writes (`modformer.io.crash_point`); N runs from 1 until a session
finishes without meeting it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modformer.data import DataSpec
from modformer.errors import CheckpointError, ConfigError
from modformer.io import KILL_AT_OP, recover_dir
from modformer.recipe import STATE_NAME, TrainerCheckpoint, verify_checkpoint

STEPS = 2  # checkpoints at steps 1 and 2: a kill in the first leaves nothing to resume, one in the second step 1
WEIGHTS = {"modules": "modules.safetensors", "teacher": "model.safetensors", "student": "model.safetensors"}


def _session(kind: str, out: str, teacher: str, data: str, labels: str, kill_at: int | None) -> None:
    """One training session of `kind` into `out`, as a user runs it: `--resume` when `out` holds a checkpoint, else
    from the start."""
    torch.set_num_threads(1)
    if kill_at is not None:
        os.environ[KILL_AT_OP] = str(kill_at)
    spec = DataSpec(path=data, src_ext="en", tgt_ext="de")

    def run(resume: bool) -> None:
        if kind == "modules":
            from modformer.modular.trainer import TrainConfig, run_modular

            config = TrainConfig(steps=STEPS, batch_size=4, save_every=1, eval_every=1, eval_pairs=8)
            run_modular(config, teacher, spec, out, resume=resume, overwrite=not resume)
        elif kind == "teacher":
            from modformer.teacher import TeacherConfig, run_teacher

            config = TeacherConfig(preset="tiny", steps=STEPS, batch_size=4, save_every=1)
            run_teacher(config, spec, out, resume=resume, overwrite=not resume)
        else:  # a pseudo-label student: its labels are copied into the folder before the first checkpoint
            from modformer.baselines import BaselineConfig, run_baseline

            config = BaselineConfig(
                method="pseudo", shape="2-2", steps=STEPS, batch_size=4, save_every=1, eval_every=1, eval_pairs=8
            )
            run_baseline(config, teacher, spec, out, pseudo_labels_file=labels, resume=resume, overwrite=not resume)

    try:
        run(resume=True)
    except ConfigError as err:
        if "holds no" not in str(err):  # killed before its first checkpoint was complete: start again
            raise
        run(resume=False)


# Imported once by the server rather than by every session (transformers imports a model's code when first used).
PRELOAD = [
    __name__,
    "transformers.models.t5.modeling_t5",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "modformer.modular.trainer",
    "modformer.baselines",
]


def _server():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _run_session(context, *args) -> int:
    process = context.Process(target=_session, args=tuple(str(a) if isinstance(a, Path) else a for a in args))
    process.start()
    process.join(timeout=300)
    if process.exitcode is None:
        process.kill()
        process.join()
        pytest.fail(f"a session of {args[0]} did not end in 300 s")
    return process.exitcode


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _assert_same_run(expected: Path, got: Path, weights: str) -> None:
    """The same weights, bit for bit, and the same trainer state (step, held-out history, optimizer, scheduler,
    random states)."""
    a, b = load_file(expected / weights), load_file(got / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{got}: other weights"
    x, y = TrainerCheckpoint.load(expected), TrainerCheckpoint.load(got)
    assert (x.state.step, x.state.history) == (y.state.step, y.state.history), f"{got}: other step or history"
    for name in ("optimizer", "scheduler", "python_rng", "numpy_rng", "torch_rng"):
        assert _same(getattr(x, name), getattr(y, name)), f"{got}: other {name}"


def _assert_one_unit(out: Path) -> int | None:
    """What a killed run left, once recovered (on a copy, the run's own folder is left for its next session): no
    checkpoint, or one whose files all belong to one step. That step."""
    probe = out.parent.with_name(out.parent.name + "-probe")
    shutil.copytree(out.parent, probe, symlinks=True)
    try:
        folder = probe / out.name
        recover_dir(folder)
        if not (folder / STATE_NAME).is_file():
            return None
        step = verify_checkpoint(folder)
        assert step == TrainerCheckpoint.load(folder).state.step
        return step
    finally:
        shutil.rmtree(probe)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, sample_pairs) -> Path:
    """64 training pairs and 8 held-out: a session is mostly start-up and checkpoints."""
    train, val = sample_pairs
    root = tmp_path_factory.mktemp("small")
    for split, pairs in (("train", train.take(64)), ("val", val.take(8))):
        (root / f"{split}.en").write_text("\n".join(pairs.sources) + "\n", encoding="utf-8")
        (root / f"{split}.de").write_text("\n".join(pairs.targets) + "\n", encoding="utf-8")
    return root


# Every write step for the modules; every third for the teacher and the student, whose writes take the same steps
# through the same code (`Recipe.save_checkpoint`) with other files.
@pytest.mark.slow
@pytest.mark.parametrize(("kind", "every"), [("modules", 1), ("teacher", 3), ("student", 3)])
def test_killed_at_every_step_of_its_checkpoint_writes_a_run_resumes_exactly(
    kind, every, t5_teacher_dir, small_data, tmp_path
):
    common = (t5_teacher_dir, small_data, small_data / "train.de")  # the student's pseudo-labels: the targets
    context = _server()
    reference = tmp_path / "uninterrupted" / "out"
    assert _run_session(context, kind, reference, *common, None) == 0
    left = {}  # kill point -> the step of the checkpoint it left (None: none yet)
    for n in range(1, 200, every):
        out = tmp_path / f"killed-at-{n}" / "out"
        code = _run_session(context, kind, out, *common, n)
        if code == 0:  # the run has fewer write steps than n: every one was tried
            break
        assert code == -signal.SIGKILL, f"kill point {n}: exit code {code}"
        left[n] = _assert_one_unit(out)
        assert _run_session(context, kind, out, *common, None) == 0, f"kill point {n}: the next session failed"
        _assert_same_run(reference, out, WEIGHTS[kind])
        assert [p.name for p in out.parent.iterdir()] == ["out"], f"kill point {n}: left {list(out.parent.iterdir())}"
        shutil.rmtree(out.parent)
    assert max(left) >= 20, f"only {max(left)} write steps"
    # Kills in the first checkpoint's write leave nothing or (after its switch) step 1; in the second, step 1 or 2:
    # a later kill never leaves less than an earlier one (no instant in which the last checkpoint is lost).
    steps = [s or 0 for s in left.values()]
    assert steps == sorted(steps) and {0, 1} <= set(steps) and (every > 1 or 2 in steps), left


# --- what resume refuses -----------------------------------------------------------------------------------------
def _modules_run(t5_teacher_dir, data_dir, out: Path, steps: int) -> None:
    from modformer.modular.trainer import TrainConfig, run_modular

    config = TrainConfig(steps=steps, batch_size=4, save_every=1, eval_every=0, eval_pairs=8)
    spec = DataSpec(path=str(data_dir), src_ext="en", tgt_ext="de")
    run_modular(config, t5_teacher_dir, spec, out, resume=(out / STATE_NAME).is_file())


def test_resume_refuses_a_folder_that_mixes_two_checkpoints(t5_teacher_dir, data_dir, tmp_path):
    """The modules of step 2 beside the trainer state of step 1: what writing file by file could leave."""
    one, two = tmp_path / "one", tmp_path / "two"
    _modules_run(t5_teacher_dir, data_dir, one, steps=1)
    _modules_run(t5_teacher_dir, data_dir, two, steps=2)
    shutil.copy(one / STATE_NAME, two / STATE_NAME)
    with pytest.raises(CheckpointError, match=rf"{STATE_NAME}: not the file the checkpoint of step 2 wrote") as err:
        _modules_run(t5_teacher_dir, data_dir, two, steps=3)
    assert "\n" not in str(err.value)
    # A checkpoint from before manifests (modules and trainer state written one after the other) is checked by step.
    (two / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="modules are of step 2 but the trainer state is of step 1"):
        _modules_run(t5_teacher_dir, data_dir, two, steps=3)
    (one / "modules.safetensors").unlink()
    with pytest.raises(CheckpointError, match="modules.safetensors: missing from the checkpoint of step 1"):
        verify_checkpoint(one)


def test_nonfinite_weights_are_not_checkpointed(t5_teacher_dir, data_dir, tmp_path):
    from modformer.modular.trainer import ReplacingTrainer

    out = tmp_path / "mods"
    _modules_run(t5_teacher_dir, data_dir, out, steps=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    original = ReplacingTrainer.step

    def poisoned(self, batch):
        result = original(self, batch)
        with torch.no_grad():
            next(iter(self.model.blocks.values())).layer[0].SelfAttention.q.weight[0, 0] = float("nan")
        return result

    ReplacingTrainer.step = poisoned
    try:
        with pytest.raises(CheckpointError) as err:
            _modules_run(t5_teacher_dir, data_dir, out, steps=2)
    finally:
        ReplacingTrainer.step = original
    assert str(err.value) == (
        "step 2: the weights hold NaN or infinity in encoder_k2_s0.layer.0.SelfAttention.q.weight; "
        f"the checkpoint was not written ({out} keeps the last one)"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the checkpoint of step 1 is untouched


def test_nonfinite_weights_are_not_exported(t5_teacher_dir, tmp_path):
    from typer.testing import CliRunner

    from modformer.checkpoints import load_seq2seq
    from modformer.cli import app
    from modformer.modular.model import ModularModel

    model = ModularModel.from_teacher(load_seq2seq(t5_teacher_dir), t5_teacher_dir)
    with torch.no_grad():
        model.blocks["encoder_k2_s0"].layer[0].SelfAttention.q.weight[1, 2] = float("inf")
    model.save(tmp_path / "mods")
    out = tmp_path / "export"
    result = CliRunner().invoke(
        app, ["export", "--modules", str(tmp_path / "mods"), "--assembly", "enc=2,2 dec=2,2", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: not exported: the weights hold NaN or infinity in encoder.block.0.layer.0.SelfAttention.q.weight"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mods"]  # nothing written, nothing left


# --- stale temporaries --------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


class _Records(logging.Handler):
    """The messages a logger emits (caplog sees only what propagates to the root; the CLI stops `modformer`'s)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_next_write_removes_what_a_killed_write_left(tmp_path):
    from modformer.io import atomic_dir, write_json

    dead, out = _dead_pid(), tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("the last complete version")
    # What kills at different moments leave: a half-written file, a half-written folder, a complete new folder that
    # was not switched in yet; and a temporary of a live process (this test's parent) writing the same name.
    (tmp_path / f".notes.json.{dead}-abcd1234.tmp").write_text("{half")
    (tmp_path / f".out.{dead}-wxyz_987.tmp").mkdir()
    (tmp_path / ".out.new").mkdir()
    (tmp_path / ".out.new" / "new.txt").write_text("complete")
    live = tmp_path / f".out.{os.getppid()}-live1234.tmp"
    live.mkdir()
    legacy = tmp_path / ".out.k3j4h5g6.tmp"  # named by an earlier modformer, without the pid
    legacy.mkdir()
    records, logger = _Records(), logging.getLogger("modformer.io")
    logger.addHandler(records)
    try:
        write_json(tmp_path / "notes.json", {"a": 1})
        assert not (tmp_path / f".notes.json.{dead}-abcd1234.tmp").exists()
        with atomic_dir(out, overwrite=True) as folder:
            assert (out / "new.txt").is_file()  # the interrupted switch was completed first
            (folder / "newer.txt").write_text("written now")
    finally:
        logger.removeHandler(records)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.k3j4h5g6.tmp", live.name, "notes.json", "out"])
    assert [p.name for p in out.iterdir()] == ["newer.txt"]
    text = "\n".join(records.lines)
    assert f".out.{dead}-wxyz_987.tmp" in text and f".notes.json.{dead}-abcd1234.tmp" in text
    assert live.name in text and "another process is writing it too" in text
    assert legacy.name in text and "earlier modformer" in text


def test_a_folder_switch_interrupted_after_the_old_was_moved_aside_is_finished(tmp_path):
    """Killed between steps 2 and 3 of the switch: no folder at the path, the old and the new beside it."""
    out = tmp_path / "out"
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "v").write_text("1")
    (tmp_path / ".out.new").mkdir()
    (tmp_path / ".out.new" / "v").write_text("2")
    recover_dir(out)
    assert (out / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- Ctrl-C -------------------------------------------------------------------------------------------------------
def _train_command(teacher: Path, data: Path, out: Path) -> list[str]:
    """`modformer train` for far longer than a test waits, writing a checkpoint every step."""
    options = {"--teacher": teacher, "--data": data, "--src-ext": "en", "--tgt-ext": "de", "--out": out}
    options |= {"--steps": 100000, "--batch-size": 4, "--save-every": 1, "--eval-every": 0, "--threads": 1}
    return [sys.executable, "-m", "modformer.cli", "train", *(str(x) for pair in options.items() for x in pair)]


@pytest.mark.parametrize("after_s", [0.3, 0.7, 1.2, 2.0, 3.0, 4.5])
def test_ctrl_c_at_any_early_instant_ends_the_command(after_s, t5_teacher_dir, data_dir, tmp_path):
    """SIGINT while the command starts (imports, data, teacher) or trains and writes a checkpoint every step: the
    command ends at once with 130 (or, before the CLI's code runs, by the signal, which a shell also shows as 130),
    never runs on, and leaves no temporary and no half-written checkpoint."""
    out = tmp_path / "run" / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        _train_command(t5_teacher_dir, data_dir, out), env=env, stderr=subprocess.PIPE, text=True
    )
    time.sleep(after_s)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"SIGINT after {after_s} s did not end the command")
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, stderr[-2000:])
    if process.returncode == 130:
        assert stderr.rstrip().endswith("error: interrupted"), stderr[-2000:]
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert left in ([], ["out"]), left  # nothing half-written beside it
    if left:
        assert verify_checkpoint(out) == TrainerCheckpoint.load(out).state.step


# A `modformer teacher` whose work is a 10 s wait unless interrupted; {before} runs at import, {interrupt} first in
# the command: what makes the SIGINT arrive where the test wants it.
INTERRUPTED_COMMAND = """
import os, signal, sys, time
import modformer.teacher
from modformer.cli import app
{before}

def long_command(*args, **kwargs):
    {interrupt}
    for _ in range(100):  # 10 s unless interrupted
        time.sleep(0.1)
    print("ran to the end")
    return {{"parameters": 1, "train_pairs": 1, "data": "none", "val_loss": 1.0, "seconds": 10.0}}


modformer.teacher.run_teacher = long_command
sys.argv = ["modformer", "teacher", "--out", sys.argv[1]]
app()
"""
SWALLOWED = INTERRUPTED_COMMAND.format(
    before="""

class Finalized:
    def __del__(self):  # SIGINT arrives while Python runs a finalizer, which swallows a KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10000):
            pass
""",
    interrupt="Finalized()",
)


def test_ctrl_c_that_lands_in_a_finalizer_still_ends_the_command(tmp_path):
    """The reported bug: Ctrl-C early in a command was sometimes swallowed (it landed in a `__del__` run by the
    imports) and the command ran to the end with exit 0."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SWALLOWED), str(tmp_path / "t")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 130, (done.returncode, done.stdout, done.stderr)
    assert "ran to the end" not in done.stdout and done.stderr.rstrip().endswith("error: interrupted")
    assert "Exception ignored" not in done.stderr and time.perf_counter() - started < 8


IMPORTING = INTERRUPTED_COMMAND.format(
    before="sys.path.insert(0, sys.argv[2])",
    # SIGINT arrives while this import runs (a C extension's import may abort on it)
    interrupt="import slow_module  # noqa: F401",
)
SLOW_MODULE = """
import os, signal
os.kill(os.getpid(), signal.SIGINT)
total = 0
for i in range(3_000_000):  # Python code the signal's handler can run in, inside the import
    total += i
open(__file__ + ".done", "w").close()  # the import ran to its end
"""


def test_ctrl_c_during_an_import_waits_for_it_then_ends_the_command(tmp_path):
    """A SIGINT that lands inside an import (a command's lazy `import torch`, say) is held until the import ends,
    then ends the command with 130: a KeyboardInterrupt raised inside a C extension's import could abort the
    interpreter (exit -6 once in CI)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "slow_module.py").write_text(SLOW_MODULE)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(IMPORTING), str(tmp_path / "t"), str(tmp_path / "mods")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 130, (done.returncode, done.stdout, done.stderr)
    assert (tmp_path / "mods" / "slow_module.py.done").is_file() and "ran to the end" not in done.stdout
    assert done.stderr.rstrip().endswith("error: interrupted")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_measurement_child_dies_with_the_process_that_started_it(tmp_path):
    """A profile or plan killed with SIGKILL must not leave an engine timing or a peak-memory run behind: both are
    started with `die_with_parent`. The parent here starts a long child the same way, then is killed."""
    import inspect

    from modformer.profiling import engine_process, memory

    for module in (engine_process, memory):  # the two measurement children are started this way
        assert "preexec_fn=die_with_parent" in inspect.getsource(module)
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import subprocess, sys, time
                from modformer.io import die_with_parent
                child = subprocess.Popen(
                    [sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent
                )
                open({str(pid_file)!r}, "w").write(str(child.pid))
                time.sleep(60)
            """),
        ]
    )
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        # the child is not ours to reap: once its parent died it belongs to init, which reaps it; a zombie counts as gone
        status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}/status").exists() else ""
        if "State:\tZ" in status:
            break
        time.sleep(0.05)
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "State:\tZ" in status.read_text(), "the child outlived its killed parent"
