"""Imports point one way: core -> modular -> profiling -> planner -> cli (DESIGN.md). A test, so it stays true.

Every import is read from the source (function-level imports too), so a lazy import that points the wrong way fails
here just the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "modformer"
CORE = ("errors", "io", "data", "checkpoints", "evaluation", "recipe", "schemas", "limits")
# What each part may NOT import (a prefix of the imported module's name inside the package).
FORBIDDEN = {
    **{core: ("modular", "profiling", "planner", "cli", "demo", "teacher", "baselines") for core in CORE},
    "serving": ("modular", "profiling", "planner", "cli", "demo", "teacher", "baselines"),
    "modular": ("profiling", "planner", "cli", "demo"),
    "profiling": ("planner", "cli", "demo"),
    "planner": ("cli", "demo"),
    "teacher": ("modular", "profiling", "planner", "cli"),
    "baselines": ("profiling", "planner", "cli"),
    "plots": ("cli",),
    "demo": ("cli",),
}


def modformer_imports(path: Path) -> set[str]:
    """The modformer modules `path` imports, without the `modformer.` prefix (`from modformer import x` -> `x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "modformer":
                found |= {f"modformer.{a.name}" for a in node.names}
    return {name.removeprefix("modformer.") for name in found if name.startswith("modformer.")}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    part = part_of(path)
    wrong = sorted(
        name
        for name in modformer_imports(path)
        for banned in FORBIDDEN.get(part, ("cli",) if part != "cli" else ())
        if name == banned or name.startswith(banned + ".")
    )
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}) imports {wrong}"


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from modformer.planner.run import run_plan\n    import modformer.cli\n")
    assert modformer_imports(bad) == {"planner.run", "cli"}


def test_every_part_is_covered():
    parts = {part_of(p) for p in SOURCES} - {"__init__", "cli", "resources"}
    assert parts <= set(FORBIDDEN), f"parts with no import rule: {sorted(parts - set(FORBIDDEN))}"
