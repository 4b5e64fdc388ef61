"""Long runs report themselves when their output is not a terminal (a log file, CI, nohup, a cluster job): one plain
progress line per task at most every `LOG_EVERY_S` seconds and when it ends, instead of a bar drawn only at the end."""

from __future__ import annotations

import re

from typer.testing import CliRunner

import modformer.cli
from modformer.cli import app


def teacher_lines(tmp_path, monkeypatch, data_dir, interval_s: float) -> list[str]:
    """The progress lines of a 6-step tiny `teacher` run whose output is not a terminal, at `interval_s`."""
    monkeypatch.setattr(modformer.cli, "LOG_EVERY_S", interval_s)
    args = ["teacher", "--data", data_dir, "--src-ext", "en", "--tgt-ext", "de", "--preset", "tiny"]
    args += ["--steps", 6, "--batch-size", 4, "--out", tmp_path / "teacher", "--threads", 1]
    done = CliRunner().invoke(app, [str(a) for a in args])
    assert done.exit_code == 0, done.stderr
    return [line for line in done.stderr.splitlines() if re.match(r"teacher \d+/6", line)]


def test_a_run_to_a_file_prints_progress_lines_with_step_eta_and_loss(tmp_path, monkeypatch, data_dir):
    lines = teacher_lines(tmp_path, monkeypatch, data_dir, 0.0)  # every update: a short run shows the lines
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"teacher (\d+)/6 \(\d+ %\)", line))]
    assert steps == sorted(steps) and steps[-1] == 6 and len(steps) >= 3, lines
    assert all(re.search(r"\d+ s so far", line) and re.search(r"loss \d+\.\d+", line) for line in lines)
    assert any("left" in line and re.search(r"[\d.]+/s", line) for line in lines[:-1])  # speed, time left


def test_lines_are_at_most_every_interval(tmp_path, monkeypatch, data_dir):
    lines = teacher_lines(tmp_path, monkeypatch, data_dir, 3600.0)  # a long interval: the first and the last line
    assert len(lines) == 2 and lines[-1].startswith("teacher 6/6 (100 %)"), lines
