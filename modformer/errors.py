"""Errors a user can act on. The CLI prints their message as one line and exits non-zero; no traceback."""

from __future__ import annotations


class ModformerError(Exception):
    """Base class: the message says what is wrong and what to change."""


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
