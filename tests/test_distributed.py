"""Data-parallel module training: 2 CPU processes (torchrun, gloo) against 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modformer.checkpoints import load_seq2seq
from modformer.modular.model import ModularModel
from tests.conftest import save_teacher, tiny_t5

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun is not installed",
)


def train(out: Path, teacher: Path, data: Path, processes: int, recipe: tuple = ()) -> dict:
    # A high rate: the 100 warm-up steps would leave 8 steps at a few % of it, and nothing to compare.
    args = [
        "train",
        "--teacher",
        teacher,
        "--data",
        data,
        "--src-ext",
        "en",
        "--tgt-ext",
        "de",
        "--out",
        out,
        "--steps",
        8,
        "--batch-size",
        16,
        "--eval-every",
        8,
        "--save-every",
        4,
        "--lr",
        0.05,
        *recipe,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if processes == 1:
        cmd = [sys.executable, "-m", "modformer.cli", *args]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", f"--nproc_per_node={processes}", "-m", "modformer.cli", *args]
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "modular_config.json").read_text())
    return {"stdout": result.stdout, "completed": config["training"]["completed_steps"], "out": out}


def held_out_loss(out: Path) -> float:
    import torch

    from modformer.io import torch_load

    torch.set_num_threads(1)
    state = torch_load(out / "trainer_state.pt", "trainer state")
    return float(state["history"][-1]["mean"])


def module_tensors(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "modules.safetensors")


def distance(a: dict, b: dict) -> float:
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5


@pytest.mark.parametrize(
    "recipe",
    # every hybrid on the whole batch: with --split-batch (the default) each process splits its own rows, alike only
    # in expectation
    [("--no-split-batch", "--hybrids-per-step", 2)],
    ids=["whole-batch"],
)
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tokenizer, data_dir, recipe):
    # No dropout: then 2 processes with averaged gradients compute what 1 process computes, up to the weighting of
    # the two halves' mean losses; without the averaging each process would follow its own half of the data.
    model = tiny_t5()
    model.config.dropout_rate = 0.0
    teacher = save_teacher(model, tokenizer, tmp_path / "teacher")
    start = ModularModel.from_teacher(load_seq2seq(teacher), teacher, [2])
    initial = {f"{k}.{n}": t for k, layer in start.blocks.items() for n, t in layer.state_dict().items()}
    one = train(tmp_path / "one", teacher, data_dir, 1, recipe)
    two = train(tmp_path / "two", teacher, data_dir, 2, recipe)
    assert one["completed"] == two["completed"] == 8
    assert "2 processes share each batch of 16" in " ".join(two["stdout"].split())  # rich wraps long lines
    assert two["stdout"].count("modules written to") == 1  # only the main process speaks
    a, b = held_out_loss(one["out"]), held_out_loss(two["out"])
    assert abs(a - b) / a < 0.01, (a, b)
    w1, w2 = module_tensors(one["out"]), module_tensors(two["out"])
    moved = distance(w1, initial)
    assert moved > 0.1  # training did something
    assert distance(w1, w2) < 0.1 * moved, (distance(w1, w2), moved)
