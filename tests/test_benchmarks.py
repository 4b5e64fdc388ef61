"""Every benchmark's report path reproduces its committed results from the committed results file alone.

Each script under benchmarks/ splits what it measures (hours of training and timing, cached under runs/) from what
it derives (verdicts, claims, tables, plots). `--from-results JSON` measures nothing: it reads a results file, keeps
its measured part and its provenance, derives the rest again and writes the results into `--results DIR`. Here that
runs on the committed files, once as they are and once with the derived fields deleted first (so that they must be
computed, not copied), and every file written must equal the committed one byte for byte. Seconds, no model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# benchmark -> (files it writes from a results file, top-level fields it derives)
BENCHMARKS = {
    "seed_claims": (("seed_claims.json", "seed_claims.md", "seed_claims.png"), ("claims", "machine_summary")),
    "planner": (("planner.json",), ("scored_fraction", "strictly_better_budgets", "targets", "met")),
    "profiler": (("profiler.json", "profiler.png"), ("targets", "top_level_targets_met")),
    "resume": (("resume.json",), ("relative_difference", "kill_points", "resumed_exact_fraction", "target")),
    "train_step": (
        ("train_step.json",),
        ("modular_step_s", "finetune_step_s", "ratio", "ratio_of_pairs_median", "ratio_of_pairs_max", "target"),
    ),
    "loss_weights": (("loss_weights.json",), ()),  # pure measurement: nothing is derived
    "demo_teacher": (("demo_teacher.json",), ()),
    "targets": (
        ("targets.json",),
        (
            "serving_speedups",
            "per_target",
            "joint_vs_torch_only",
            "speedup_at_1bleu",
            "targets_met",
            "int8_bleu_delta",
            "export_parity",
        ),
    ),
}


def rebuild(name: str, source: Path, out: Path) -> None:
    script = ROOT / "benchmarks" / f"{name}.py"
    command = [sys.executable, str(script), "--from-results", str(source), "--results", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("stripped", [False, True], ids=["as-committed", "derived-deleted"])
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_report_reproduces_committed_results(name: str, stripped: bool, tmp_path: Path) -> None:
    files, derived = BENCHMARKS[name]
    source = RESULTS / f"{name}.json"
    if stripped:
        record = json.loads(source.read_text(encoding="utf-8"))
        assert all(key in record for key in derived)
        source = tmp_path / "input.json"
        source.write_text(json.dumps({k: v for k, v in record.items() if k not in derived}), encoding="utf-8")
    rebuild(name, source, tmp_path / "out")
    for file in files:
        written, committed = tmp_path / "out" / file, RESULTS / file
        assert written.read_bytes() == committed.read_bytes(), f"{file} differs from the committed one"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files)


def test_benchmark_scripts_need_no_path_workarounds() -> None:
    """The scripts import modformer as the installed package and the harness as a sibling: no sys.path edits, no
    lint escapes."""
    for path in (ROOT / "benchmarks").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for escape in ("sys.path", "noqa", "fmt: skip"):
            assert escape not in text, f"{path.relative_to(ROOT)}: {escape}"
