"""Bad-input cases for artifacts that parse but hold wrong types, shapes or versions; merged into
`tests/test_cli.py::BAD_INPUT` (each entry: a builder taking the test's `Ctx`, and the expected message part)."""

from __future__ import annotations

from collections.abc import Callable

ARTIFACT_CASES: dict[str, tuple[Callable, str]] = {}
