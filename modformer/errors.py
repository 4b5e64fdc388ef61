"""Errors a user can act on. The CLI prints their message as one line and exits non-zero; no traceback.

A library error names the *setting* the caller gave (`steps`, `budget`), never a command-line flag: a Python caller
never passed `--steps`. Pass the names with `settings=`; the CLI shows each as its flag (`steps` -> `--steps`).
"""

from __future__ import annotations

import re


class ModformerError(Exception):
    """Base class: the message says what is wrong and what to change."""

    exit_code = 1

    def __init__(self, message: str = "", *, settings: str | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.settings: tuple[str, ...] = (settings,) if isinstance(settings, str) else tuple(settings)


class DataError(ModformerError):
    """A data file or data set that cannot be read as source/target pairs."""


class AssemblyError(ModformerError):
    """An assembly spec that is malformed or does not fit the trained modules."""


class CheckpointError(ModformerError):
    """A teacher, modular checkpoint or exported model that is missing, corrupt or mismatched."""


class ConfigError(ModformerError):
    """A setting outside its valid range."""


class InfeasibleBudgetError(ModformerError):
    """No assembly meets the stated budget. The CLI exits with code 2."""

    exit_code = 2


def with_flags(err: ModformerError, flags: dict[str, str] | None = None) -> str:
    """The error's first line with every setting it names written as a command-line flag.

    `flags` maps a setting to its flag where the two differ (`json_out` -> `--json`); otherwise `a_b` -> `--a-b`.
    """
    text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    for setting in err.settings:
        flag = (flags or {}).get(setting, "--" + setting.replace("_", "-"))
        # `setting` in backticks, or the bare name where it is not part of a path or a longer name
        text = re.sub(rf"`{re.escape(setting)}`|(?<![\w\-/.]){re.escape(setting)}(?![\w\-/])", flag, text)
    return text
