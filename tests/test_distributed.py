"""Data-parallel module training: 2 CPU processes (torchrun, gloo) against 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                                reason="torchrun is not installed")  # fmt: skip


def train(out: Path, teacher: Path, data: Path, processes: int) -> dict:
    args = ["train", "--teacher", teacher, "--data", data, "--src-ext", "en", "--tgt-ext", "de", "--out", out,
            "--steps", 8, "--batch-size", 16, "--eval-every", 8, "--save-every", 4, "--lr", 1e-3]  # fmt: skip
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


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, t5_teacher_dir, data_dir):
    one = train(tmp_path / "one", t5_teacher_dir, data_dir, 1)
    two = train(tmp_path / "two", t5_teacher_dir, data_dir, 2)
    assert one["completed"] == two["completed"] == 8
    assert "2 processes share each batch of 16" in two["stdout"]
    assert two["stdout"].count("modules written to") == 1  # only the main process speaks
    a, b = held_out_loss(one["out"]), held_out_loss(two["out"])
    start = float(json.loads((one["out"] / "modular_config.json").read_text())["training"]["steps"])
    assert start == 8
    assert abs(a - b) / a < 0.02, (a, b)
