"""Writing artifacts so that each file and each folder appears whole or not at all, and reading them back safely.

A file (`atomic_path`) is written to a hidden temporary beside it, `.NAME.<pid>-<random>.tmp`, flushed to disk and
renamed over NAME: one atomic step.

A folder (`atomic_dir`: checkpoints, exports, plans) is written whole into a hidden temporary folder beside it and
then switched in. POSIX cannot rename a folder over a non-empty one, so the switch takes four steps, each atomic, and
every state between them can be told apart:

1. the complete temporary folder is renamed `.NAME.new` (from here on the new version counts as written);
2. NAME, if there is one, is renamed `.NAME.old`;
3. `.NAME.new` is renamed NAME;
4. `.NAME.old` is deleted.

`recover_dir(NAME)` runs before every write of NAME (and before a run resumes from it) and finishes a switch that a
crash interrupted: a `.NAME.new` is the newest complete version and takes NAME's place; a lone `.NAME.old` goes back.
So whenever a process is killed, NAME is afterwards the last complete version, never a mixture of two. Ctrl-C during
the switch is held back until the switch is done. One writer per NAME at a time.

Temporaries whose writer has ended (no process has its pid any more: a write killed midway) are deleted by the next
write into the same folder; those of a live process writing the same NAME are named in a warning. (Judged by pid:
processes of other machines or containers must not write into the same folder.)
`MODFORMER_KILL_AT_OP=N` makes a process kill itself (SIGKILL) at the N-th step of its writes (`crash_point`): the
tests interrupt writes at every one of their steps that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from modformer.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

KILL_AT_OP = "MODFORMER_KILL_AT_OP"  # the environment variable `crash_point` reads
MAX_JSON_BYTES = 64 * 2**20  # artifact metadata is kilobytes; a larger file is not one of ours (and would fill memory)
_steps = itertools.count(1)  # write steps taken by this process, counted only under KILL_AT_OP
# A temporary as `tempfile` makes it with `_temporary_prefix`: `.NAME.<pid>-<8 random characters>.tmp`.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp$")


def crash_point() -> None:
    """One step of a write; with `MODFORMER_KILL_AT_OP=N` in the environment, the N-th kills this process."""
    at = os.environ.get(KILL_AT_OP)
    if at and next(_steps) == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _sibling(path: Path, kind: str) -> Path:
    """`.NAME.new` / `.NAME.old`: the two fixed names of a folder switch (see the module docstring)."""
    return path.with_name(f".{path.name}.{kind}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk (a rename is durable once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some systems cannot sync a folder; a file that cannot be synced is an error
            raise
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (on systems without POSIX signals: assume so, and delete nothing)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def listed(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 4 more'."""
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def clear_stale(path: str | Path) -> None:
    """Before writing `path`: delete the temporaries in its folder whose writer has ended (writes killed midway),
    and warn about those of another live process writing the same name."""
    path = Path(path)
    try:
        entries = sorted(os.scandir(path.parent), key=lambda e: e.name)
    except OSError:  # no folder yet (or not a folder): nothing was left there
        return
    removed, live = [], []
    for entry in entries:
        found = _TEMPORARY.match(entry.name)
        if not found or int(found["pid"]) == os.getpid():  # not a temporary, or one of this process's own
            continue
        if not _alive(int(found["pid"])):
            _remove(Path(entry.path))
            removed.append(entry.name)
        elif found["name"] == path.name:
            live.append(entry.name)
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")  # written before temporaries named pids
    old = [e.name for e in entries if legacy.match(e.name)]
    if removed:
        log.warning("%s: removed %s, left by an interrupted write", path.parent, listed(removed))
    if live:
        log.warning("%s: another process is writing it too (%s); the last to finish wins", path, listed(live))
    if old:
        log.warning("%s: %s left by an interrupted write of an earlier modformer; remove it", path.parent, listed(old))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is synced and renamed over `path` (atomic on POSIX),
    else deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        crash_point()
        yield tmp_path
        crash_point()
        # mkstemp (and some writers) make 0600 files; an artifact is shared like any file the user writes
        tmp_path.chmod(0o666 & ~_umask())
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        crash_point()
        _fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    """JSON the way people read it: indented, keys sorted, newline at the end; written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(
            f"{path}: {what} is {path.stat().st_size:,} bytes, past the {MAX_JSON_BYTES:,}-byte limit on JSON "
            "metadata; it is not one modformer wrote"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is not valid JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        raise CheckpointError(f"{path}: {what} is not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object")
    return obj


def write_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_tensors(path: str | Path, what: str) -> dict:
    """Read a safetensors file (never pickle); a truncated or corrupt file is a one-line CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated headers and data
        raise CheckpointError(f"{path}: {what} is corrupt or truncated ({str(err).splitlines()[0]})") from None


def torch_load(path: str | Path, what: str):
    """torch.load restricted to tensors and plain containers (weights_only=True): loading runs no code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: {what} cannot be read ({str(err).splitlines()[0]})") from None


def torch_save(path: str | Path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def nonfinite(named: Iterable[tuple[str, object]]) -> list[str]:
    """The names of the floating-point tensors in `named` (name, tensor) that hold NaN or infinity."""
    import torch

    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refuse_existing(path: str | Path, overwrite: bool) -> None:
    """An output that exists already is replaced only with `overwrite` (ConfigError otherwise)."""
    if Path(path).exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass overwrite to replace it", settings="overwrite")


# setting -> its path(s), None where not given; a key that is not a setting's name (a phrase) is shown as it is
Paths = dict[str, "str | Path | Iterable[str | Path] | None"]


def _each(paths: Paths) -> Iterator[tuple[str, Path, Path]]:
    """(setting, path as given, path resolved) for every path given."""
    for setting, given in paths.items():
        if given is None:
            continue
        for path in [given] if isinstance(given, (str, Path)) else given:
            yield setting, Path(path), Path(os.path.abspath(path)).resolve()


def refuse_overlap(outputs: Paths, inputs: Paths) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs, whatever `overwrite` says: writing it
    would replace or change what the command reads. Paths are compared resolved (symbolic links followed); an input
    that does not exist is skipped (there is nothing to lose, and reading it fails with its own message). An output
    whose name is not UTF-8 is refused too."""
    sources = [(setting, given, real) for setting, given, real in _each(inputs) if given.exists()]
    for out_setting, out, out_real in _each(outputs):
        try:
            str(out_real).encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, as Python keeps them: tokenizers cannot write there
            raise ConfigError(
                f"{out_setting} {ascii(str(out))[1:-1]} is not a UTF-8 name, which the libraries writing it need; "
                f"choose another {out_setting}",
                settings=(out_setting,) if out_setting.isidentifier() else (),
            ) from None
        for in_setting, given, real in sources:
            if out_real == real:
                how = "is"
            elif out_real.is_relative_to(real):
                how = "lies inside"
            elif real.is_relative_to(out_real):
                how = "contains"
            else:
                continue
            raise ConfigError(
                f"{out_setting} {out} {how} {in_setting} {given}: an output may never be, contain or lie inside an "
                f"input; choose another {out_setting}",
                settings=tuple(k for k in dict.fromkeys((out_setting, in_setting)) if k.isidentifier()),
            )


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) during the block takes effect right after it: for the renames that switch a folder in.
    Only the main thread receives signals; elsewhere, and under a handler Python did not install, nothing is held."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # now handled as it would have been


def die_with_parent() -> None:
    """For `subprocess`'s `preexec_fn`: on Linux the child gets SIGTERM when the process that started it dies, even by
    SIGKILL, so that a killed run never leaves a measurement of its own running beside the next one (a child timing
    alone on a shared machine spoils whatever is timed beside it). Elsewhere it does nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def recover_dir(path: str | Path) -> None:
    """Finish a folder switch that a crash interrupted (see the module docstring) and clear the temporaries that
    ended writers left beside `path`."""
    path = Path(os.path.abspath(path))
    new, old = _sibling(path, "new"), _sibling(path, "old")
    if new.is_dir():
        log.warning("%s: completing a write that was interrupted while it switched the folder in", path)
        with interrupts_held():
            _switch(new, path, old)
    elif old.is_dir():
        if path.exists():
            _remove(old)
        else:  # not a state a switch leaves: the complete older version is all there is
            log.warning("%s: missing; restored from %s", path, old.name)
            os.replace(old, path)
    clear_stale(path)


def _switch(new: Path, path: Path, old: Path) -> None:
    """Steps 2 to 4 of a folder switch: `new` (complete) takes `path`'s place, the version there is deleted."""
    if path.exists() or path.is_symlink():
        if old.exists():
            _remove(old)
        os.replace(path, old)
        crash_point()
    os.replace(new, path)
    crash_point()
    if old.exists() or old.is_symlink():
        _remove(old)
        crash_point()
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is synced and switched in as `path`, else deleted.

    An existing `path` is refused unless `overwrite`; then it is replaced only once the new folder is complete.
    """
    given, path = path, Path(os.path.abspath(path))
    recover_dir(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{given} already exists; pass overwrite to replace it", settings="overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        crash_point()
        yield tmp
        crash_point()
        for folder, _, files in os.walk(tmp):
            for name in files:
                _fsync(Path(folder) / name)
            _fsync(Path(folder))
        with interrupts_held():
            os.replace(tmp, _sibling(path, "new"))
            crash_point()
            _switch(_sibling(path, "new"), path, _sibling(path, "old"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(beside: str | Path) -> Iterator[Path]:
    """A temporary folder beside `beside`, deleted afterwards (or, if the process is killed, by the next write
    there)."""
    beside = Path(os.path.abspath(beside))
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(beside), suffix=".tmp", dir=beside.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
