"""The `modformer` command: one small function per step; it parses options, calls the library and prints.

Errors the user can act on (`ModformerError`) print as one line on stderr with a non-zero exit; `--debug` shows
the traceback instead.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from modformer.errors import ConfigError, ModformerError, with_flags
from modformer.io import refuse_existing, refuse_overlap
from modformer.limits import check_batch, check_seed, check_tokens


class _Commands(TyperGroup):
    """Usage errors (a missing or unknown option, a value of the wrong type) in the same one-line `error:` style
    as every other input error, exit code 2; `modformer` alone prints the help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with _interrupts_end_the_command():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except KeyboardInterrupt:  # outside the command and typer's own handling of it (which returns 130)
            code = 130
        except typer.TyperException as err:  # click's exceptions, as typer ships them
            if type(err).__name__ == "NoArgsIsHelpError":  # `modformer` or `modformer profile` alone: the help
                print(err.format_message())
                sys.exit(0)
            ctx = getattr(err, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            message = err.format_message().rstrip(".")
            err_console.print(f"[bold red]error:[/] {escape(message)}{escape(where)}", highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            code = 130
        if _interrupt["received"]:  # Ctrl-C ends the command with 130, wherever it landed
            code = 130
        if code == 130 and not _interrupt["reported"]:
            err_console.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(code if isinstance(code, int) else 0)


# --- Ctrl-C -------------------------------------------------------------------------------------------------------
# Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. If that is a finalizer (a
# `__del__`, a weakref callback: the heavy imports and the garbage collector run many), Python prints "Exception
# ignored" and carries on, and the command ran to its end with exit 0. `_interrupts_end_the_command` notes every
# SIGINT and delivers one that a finalizer swallowed again, from outside it; the command then ends with 130.
_interrupt = {"received": False, "reported": False, "installed": [False]}


def _on_interrupt(signum, frame) -> None:
    _interrupt["received"] = True
    if _importing(frame):  # a KeyboardInterrupt inside a C extension's import can abort the interpreter (SIGABRT)
        _thread.start_new_thread(_deliver_again, (_interrupt["installed"],))
        return
    raise KeyboardInterrupt


def _importing(frame) -> bool:
    """Whether the main thread is inside an import (a lazy `import torch` in a command, say): the interrupt waits
    for its end, then ends the command like any other."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _deliver_again(installed: list[bool]) -> None:
    """From another thread, once the finalizer is left: SIGINT to the main thread, while the CLI's handler holds."""
    time.sleep(0.01)
    if not installed[0]:
        return
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # also wakes a blocking call
    else:
        _thread.interrupt_main()


@contextlib.contextmanager
def _interrupts_end_the_command():
    """For one CLI invocation: SIGINT raises KeyboardInterrupt as usual, is noted, and is delivered again if a
    finalizer swallowed it. Handler and hook are restored afterwards (tests run many invocations in one process)."""
    _interrupt.update(received=False, reported=False)
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # signals reach the main thread only; a handler installed outside Python is left alone
        return
    installed = _interrupt["installed"] = [True]
    previous_handler, previous_hook = signal.signal(signal.SIGINT, _on_interrupt), sys.unraisablehook

    def hook(unraisable) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            _thread.start_new_thread(_deliver_again, (installed,))
        else:
            previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        installed[0] = False
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGINT, previous_handler)


app = typer.Typer(
    cls=_Commands,
    help="Compress a seq2seq Transformer once into modular layers; assemble many model sizes from that one run, "
    "and plan which to deploy in which engine and precision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: flags shown as flags, examples kept as written
)
# Tables are wide; when output goes to a file or a pipe, do not squeeze them into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
_state = {"debug": False}
# Settings whose flag is not `--` + the setting's name with dashes (see `modformer.errors.with_flags`).
FLAGS = {"json_out": "--json", "pseudo_labels_file": "--pseudo-labels", "path": "--data"}


def _print_version(value: bool) -> None:
    if value:
        from modformer import __version__

        console.print(f"modformer {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _show_library_warnings()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class _Warnings(logging.Handler):
    """The library's warnings (`modformer.*` loggers) as `warning: ...` lines on stderr, the settings a record names
    (`extra={"settings": (...)}`) written as flags, as errors are."""

    def emit(self, record: logging.LogRecord) -> None:
        message = ModformerError(record.getMessage(), settings=getattr(record, "settings", ()))
        err_console.print(
            f"[bold yellow]warning:[/] {escape(with_flags(message, FLAGS))}", highlight=False, soft_wrap=True
        )


def _show_library_warnings() -> None:
    """Route `modformer` warnings through `_Warnings` (once per process), and not also through the root logger's
    plain format."""
    library = logging.getLogger("modformer")
    if not any(isinstance(handler, _Warnings) for handler in library.handlers):
        library.addHandler(_Warnings(level=logging.WARNING))
        library.propagate = False


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handles_errors(fn):
    """Turn the library's errors into one-line messages and exit code 1 (or a traceback under --debug); Ctrl-C into
    `error: interrupted` and exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ModformerError as err:
            if _state["debug"]:
                raise
            raise _fail(with_flags(err, FLAGS), err.exit_code) from None
        except OSError as err:  # the file system refused a path the user gave: a file where a folder goes, read-only
            if _state["debug"]:
                raise
            where = err.filename2 or err.filename  # os.replace(tmp, path): name the user's path, not the temporary
            raise _fail(f"{where}: {err.strerror}" if where and err.strerror else str(err)) from None
        except KeyboardInterrupt:
            _interrupt["reported"] = True
            raise _fail("interrupted", 130) from None

    return wrapper


# --- shared options -----------------------------------------------------------------------------------------------
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Folder of line-aligned {split}.{ext} files or {split}.jsonl/.csv/.tsv, a file, a path template with "
        "{split} and/or {side} (e.g. 'data/{side}-{split}.txt'), a `datasets` save_to_disk folder, or a hub name; "
        "docs/data.md has a recipe per layout. Default: the bundled Multi30k En-De sample.",
    ),
]
SrcExtOpt = Annotated[
    str | None,
    typer.Option(
        help="Source side's name: the extension of line files (train.en), what {side} stands for in --data "
        "(src-train.txt), or the source language of a `translation` column. E.g. en."
    ),
]
TgtExtOpt = Annotated[str | None, typer.Option(help="Target side's name, as --src-ext. E.g. de.")]
SrcColOpt = Annotated[str, typer.Option(help="Source column of JSONL/CSV/TSV/datasets input.")]
TgtColOpt = Annotated[str, typer.Option(help="Target column of JSONL/CSV/TSV/datasets input.")]
PrefixOpt = Annotated[str, typer.Option(help="Task prefix put before every source, e.g. 'translate: '.")]
LineFormatOpt = Annotated[
    str | None,
    typer.Option(
        help="One pair per line, placed as this pattern says: 'IN: {source} OUT: {target}', '{source}\\t{target}' "
        "(\\t: a tab), '{source} ||| {target}'. Reads a file, a {split} template, or DIR/{split}.txt."
    ),
]
ListRuleOpt = Annotated[
    str | None,
    typer.Option(
        help="What a list value (JSONL, CSV, datasets) becomes: join (its items joined by spaces), first (its first "
        "item), or one rule per side, SOURCE,TARGET, where TARGET may be references (each item a reference: "
        "training uses the first, BLEU/chrF/ROUGE/exact match all). E.g. join,references."
    ),
]
OnBadLineOpt = Annotated[
    str,
    typer.Option(
        help="error: stop at the first bad pair (empty, not text, a line that does not parse); skip: leave bad pairs "
        "out, with a warning naming the first few (recorded in the JSON written too)."
    ),
]
UnescapeOpt = Annotated[
    bool,
    typer.Option(
        "--unescape-entities",
        help="Turn entities left by tokenizers (&apos; &quot; &amp; &lt; &#124; ...) back into characters.",
    ),
]
MaxSourceLenOpt = Annotated[
    int, typer.Option(help="Longest source, in tokens: longer ones are cut, and a warning says how many.")
]
MaxTargetLenOpt = Annotated[
    int, typer.Option(help="Longest target, in tokens: longer ones are cut, and a warning says how many.")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]
MovedTeacherOpt = Annotated[
    Path | None,
    typer.Option(
        "--teacher",
        help="The modules' teacher checkpoint, if it moved since training (default: the path they recorded); it "
        "must be the same teacher (checked by fingerprint).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch (default: torch's own choice, every core). Next to other jobs on a small "
        "machine give 1: threads that spin-wait for a busy core made training 10x slower on 2 cores.",
        min=1,
    ),
]


def _use_threads(threads: int | None) -> None:
    """Fix torch's thread count for this command (None: leave torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _data_inputs(data: str | None) -> list[Path]:
    """What --data reads, for the output checks: the files a {split}/{side} template matches, the path given, or
    the bundled sample (a hub name matches no path)."""
    import glob
    import re

    from modformer.data import default_data_spec

    if data is None:
        return [Path(default_data_spec().path)]
    if "{" in data:
        return [Path(p) for p in glob.glob(re.sub(r"\{(split|side)\}", "*", glob.escape(str(Path(data).expanduser()))))]
    return [Path(data).expanduser()]


def _module_teacher(modules: Path | None, teacher: Path | None) -> Path | None:
    """The teacher a command that loads `modules` will read, found without loading anything: --teacher, else where
    the modules' config says (None where that cannot be read: loading then says why)."""
    if teacher is not None or modules is None:
        return teacher
    from modformer.checkpoints import locate_teacher
    from modformer.io import read_json
    from modformer.modular.model import CONFIG_NAME

    try:
        return locate_teacher(str(read_json(Path(modules) / CONFIG_NAME, "modular config")["teacher"]), modules)
    except (ModformerError, KeyError, TypeError, ValueError):
        return None


def _teacher_input(modules: Path | None, teacher: Path | None) -> dict[str, Path | None]:
    """The teacher among a command's inputs, for the output checks: --teacher, or the one the modules recorded."""
    if teacher is not None or modules is None:
        return {"teacher": teacher}
    return {"the modules' teacher": _module_teacher(modules, None)}


def _profile_files(profile: Path | None) -> list[Path]:
    """A profile as given and its two files (NAME.json and NAME.csv, or the folder's)."""
    if profile is None:
        return []
    from modformer.profiling.profile import profile_paths

    try:
        return [profile, *profile_paths(profile)]
    except ModformerError:
        return [profile]


def _data_spec(data, src_ext, tgt_ext, src_column, tgt_column, prefix, line_format, list_rule, on_bad_line, unescape):
    """The `DataSpec` of a command's data options (without --data: the bundled sample, read the same way)."""
    from modformer.data import DataSpec, default_data_spec

    reading = {
        "prefix": prefix,
        "line_format": line_format,
        "list_rule": list_rule,
        "on_bad_line": on_bad_line,
        "unescape_entities": unescape,
    }
    if data is None:
        base = default_data_spec()
        return DataSpec(path=base.path, src_ext=base.src_ext, tgt_ext=base.tgt_ext, **reading)
    return DataSpec(
        path=data, src_ext=src_ext, tgt_ext=tgt_ext, src_column=src_column, tgt_column=tgt_column, **reading
    )


LOG_EVERY_S = 30.0  # without a terminal, one progress line per task at most this often


class _LoggedProgress(Progress):
    """Rich's progress bars on a terminal. Anywhere else (a log file, CI, nohup, a cluster job) the bars would show
    only at the end, so each task also prints one plain line at most every `LOG_EVERY_S` seconds and when it ends."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._logged_at: dict[int, float] = {}

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.disable or self.console.is_terminal:
            return
        task = next(t for t in self.tasks if t.id == task_id)
        now = time.monotonic()
        ended = task.total is not None and task.completed >= task.total
        if now - self._logged_at.get(task_id, -LOG_EVERY_S) < LOG_EVERY_S and not ended:
            return
        if ended and self._logged_at.get(task_id) == float("inf"):
            return  # its last line is out
        self._logged_at[task_id] = float("inf") if ended else now
        self.console.print(_progress_line(task), highlight=False, markup=False, soft_wrap=True)


def _progress_line(task) -> str:
    """'teacher 1,200/5,000 (24 %), 6 min 1 s so far, 3.32/s, about 19 min 35 s left; loss 3.210'"""
    done = f"{task.completed:,.0f}"
    if task.total:
        done += f"/{task.total:,.0f} ({100 * task.completed / task.total:.0f} %)"
    parts = [f"{task.description} {done}", f"{_duration(task.elapsed or 0.0)} so far"]
    if task.speed:
        parts.append(f"{task.speed:.3g}/s")
    if task.time_remaining is not None and task.completed < (task.total or 0):
        parts.append(f"about {_duration(task.time_remaining)} left")
    info = task.fields.get("info", "")
    return ", ".join(parts) + (f"; {info}" if info else "")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _progress(*, disable: bool = False) -> Progress:
    return _LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
        disable=disable,
    )


def _phase_tasks(progress: Progress):
    """An `on_progress(phase, done, total, info)` that shows one task per phase."""
    tasks: dict[str, int] = {}

    def on_progress(phase: str, done: int, total: int | None, info: str = "") -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=None, info="")
        progress.update(tasks[phase], completed=done, total=total, info=escape(info))

    return on_progress


# --- teacher ------------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def teacher(
    out: Annotated[Path, typer.Option(help="Folder for the teacher checkpoint (model + tokenizer).")],
    data: DataOpt = None,
    src_ext: SrcExtOpt = None,
    tgt_ext: TgtExtOpt = None,
    src_column: SrcColOpt = "source",
    tgt_column: TgtColOpt = "target",
    prefix: PrefixOpt = "",
    line_format: LineFormatOpt = None,
    list_rule: ListRuleOpt = None,
    on_bad_line: OnBadLineOpt = "error",
    unescape_entities: UnescapeOpt = False,
    max_source_len: MaxSourceLenOpt = 128,
    max_target_len: MaxTargetLenOpt = 128,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    val_split: Annotated[str, typer.Option(help="Held-out split for the final loss.")] = "val",
    preset: Annotated[
        str, typer.Option(help="Model size: tiny (6+6, d64), small (6+6, d128), base (12+12, d128).")
    ] = "small",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Sentence pairs per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    save_every: Annotated[int, typer.Option(help="Checkpoint (the whole folder) every N steps.")] = 500,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --out.")] = False,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train a T5-style teacher from scratch (tokenizer included), for those without a fine-tuned checkpoint.

    Example:

        \b
        modformer teacher --data data/ --src-ext en --tgt-ext de --preset small --out runs/teacher
    """
    refuse_overlap({"out": out}, {"data": _data_inputs(data)})
    check_seed(seed)
    check_batch(batch_size, "batch_size")
    _check_lengths(None, max_source_len=max_source_len, max_target_len=max_target_len)
    _use_threads(threads)
    from modformer.teacher import TeacherConfig, run_teacher

    config = TeacherConfig(
        preset=preset,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        save_every=save_every,
        max_source_len=max_source_len,
        max_target_len=max_target_len,
    )
    spec = _data_spec(
        data, src_ext, tgt_ext, src_column, tgt_column, prefix, line_format, list_rule, on_bad_line, unescape_entities
    )
    with _progress() as progress:
        task = None

        def on_start(trainer) -> None:
            nonlocal task
            task = progress.add_task("teacher", total=steps, completed=trainer.state.step, info="")

        def on_step(r) -> None:
            progress.update(task, completed=r.step, info=f"loss {r.loss:.3f}")

        summary = run_teacher(
            config,
            spec,
            out,
            train_split=train_split,
            val_split=val_split,
            resume=resume,
            overwrite=overwrite,
            on_start=on_start,
            on_step=on_step,
        )
    console.print(
        f"teacher written to [bold]{escape(str(out))}[/]: {summary['parameters']:,} parameters, trained on "
        f"{summary['train_pairs']:,} pairs ({escape(summary['data'])}), held-out loss {summary['val_loss']:.3f}, "
        f"{summary['seconds']:.0f} s"
    )


# --- train --------------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def train(
    teacher: Annotated[Path, typer.Option(help="Teacher: a Hugging Face seq2seq checkpoint folder (T5, BART).")],
    out: Annotated[Path, typer.Option(help="Folder for the modular checkpoint.")],
    data: DataOpt = None,
    src_ext: SrcExtOpt = None,
    tgt_ext: TgtExtOpt = None,
    src_column: SrcColOpt = "source",
    tgt_column: TgtColOpt = "target",
    prefix: PrefixOpt = "",
    line_format: LineFormatOpt = None,
    list_rule: ListRuleOpt = None,
    on_bad_line: OnBadLineOpt = "error",
    unescape_entities: UnescapeOpt = False,
    max_source_len: MaxSourceLenOpt = 128,
    max_target_len: MaxTargetLenOpt = 128,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    val_split: Annotated[str, typer.Option(help="Held-out split for the periodic loss.")] = "val",
    granularities: Annotated[
        str | None,
        typer.Option(
            help="Module sizes, e.g. 2,3,4,6. Default: the even divisors of the depth up to half of it, and half "
            "the depth (2,4,6 for 12 layers)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Sentence pairs per step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 1e-3,
    w_ce: Annotated[float, typer.Option(help="Weight of the task cross-entropy.")] = 1.0,
    w_hidden: Annotated[float, typer.Option(help="Weight of hidden-state distillation.")] = 0.0,
    w_attn: Annotated[float, typer.Option(help="Weight of attention distillation.")] = 0.0,
    w_logit: Annotated[float, typer.Option(help="Weight of logit distillation (0 = off).")] = 1.0,
    temperature: Annotated[float, typer.Option(help="Temperature of logit distillation.")] = 2.0,
    curriculum: Annotated[
        bool, typer.Option(help="Coarse-to-fine curriculum (default off: every granularity equally often).")
    ] = False,
    coarse_bias: Annotated[
        float, typer.Option(help="With --no-curriculum, granularity k is drawn with weight k**B (0: uniform).")
    ] = 0.0,
    hybrids_per_step: Annotated[
        int, typer.Option(help="Hybrids sampled per step (they share one teacher pass): more updates per module.")
    ] = 6,
    split_batch: Annotated[
        bool,
        typer.Option(
            "--split-batch/--no-split-batch",
            help="Each hybrid trains on its own share of the batch's rows (--no-split-batch: every hybrid on all).",
        ),
    ] = True,
    hybrids_per_row: Annotated[
        int,
        typer.Option(help="With --split-batch, each row trains R of the H hybrids (R/H of the batch each): R's cost."),
    ] = 2,
    deployed_share: Annotated[
        float, typer.Option(help="Share of hybrid stacks drawn from those the strategies deploy (e.g. dec=4,4,4).")
    ] = 0.0,
    teacher_encoder_share: Annotated[
        float,
        typer.Option(
            help="Share of hybrids whose encoder is the teacher's own, as in 12-3 (its decoder modules' input)."
        ),
    ] = 0.5,
    top_init: Annotated[
        bool,
        typer.Option(
            "--top-init", help="A module whose span ends at a stack's top starts as that top layer (not the bottom)."
        ),
    ] = False,
    dropout: Annotated[
        bool,
        typer.Option("--dropout/--no-dropout", help="Modules train with the teacher's dropout (default: without it)."),
    ] = False,
    ema: Annotated[
        float,
        typer.Option(
            help="Decay of a moving average of the module weights, which is what is saved and evaluated (0: off)."
        ),
    ] = 0.0,
    eval_every: Annotated[int, typer.Option(help="Held-out loss every N steps.")] = 200,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --out.")] = False,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train modules that each replace k consecutive teacher layers (multi-grained module replacing).

    Example:

        \b
        modformer train --teacher path/to/t5-checkpoint --data data/ --src-ext en --tgt-ext de \\
            --out runs/mods --steps 2000 --threads 1
    """
    refuse_overlap({"out": out}, {"teacher": teacher, "data": _data_inputs(data)})
    check_seed(seed)
    check_batch(batch_size, "batch_size")
    _check_lengths(teacher, max_source_len=max_source_len, max_target_len=max_target_len)
    _use_threads(threads)
    from modformer.modular.trainer import TrainConfig, is_main_process, run_modular

    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        w_ce=w_ce,
        w_hidden=w_hidden,
        w_attn=w_attn,
        w_logit=w_logit,
        temperature=temperature,
        curriculum=curriculum,
        coarse_bias=coarse_bias,
        hybrids_per_step=hybrids_per_step,
        split_batch=split_batch,
        hybrids_per_row=hybrids_per_row,
        top_init=top_init,
        dropout=dropout,
        ema=ema,
        deployed_share=deployed_share,
        teacher_encoder_share=teacher_encoder_share,
        eval_every=eval_every,
        save_every=save_every,
        max_source_len=max_source_len,
        max_target_len=max_target_len,
        seed=seed,
    )
    gs = _parse_granularities(granularities)
    spec = _data_spec(
        data, src_ext, tgt_ext, src_column, tgt_column, prefix, line_format, list_rule, on_bad_line, unescape_entities
    )
    main = is_main_process()
    say = console.print if main else (lambda *a, **k: None)  # one voice when several processes train
    if not main:  # every process reads the data; one warns
        logging.getLogger("modformer").setLevel(logging.ERROR)
    with _progress(disable=not main) as progress:
        task = None

        def on_start(trainer) -> None:
            nonlocal task
            model, processes = trainer.model, trainer.processes.num_processes
            say(
                f"training {len(model.blocks)} modules (granularities {model.config.granularities}) on "
                f"{len(trainer.train):,} pairs from {escape(trainer.origin)}; {config.steps} steps"
                + (f", resuming at {trainer.state.step}" if resume else "")
                + (f"; {processes} processes share each batch of {config.batch_size}" if processes > 1 else "")
            )
            task = progress.add_task("train", total=config.steps, completed=trainer.state.step, info="")

        def on_step(r) -> None:
            parts = " ".join(f"{k} {v:.3f}" for k, v in r.parts.items() if v)
            progress.update(task, completed=r.step, info=f"loss {r.loss:.3f} ({parts}) {1 / r.seconds:.1f} it/s")

        def on_eval(step: int, scores: dict[str, float]) -> None:
            shown = " ".join(f"{k} {v:.3f}" for k, v in scores.items())
            progress.console.print(f"step {step}: held-out loss {shown}")

        run_modular(
            config,
            teacher,
            spec,
            out,
            train_split=train_split,
            val_split=val_split,
            granularities=gs,
            resume=resume,
            overwrite=overwrite,
            on_start=on_start,
            on_step=on_step,
            on_eval=on_eval,
        )
    say(f"modules written to [bold]{escape(str(out))}[/]")


def _check_lengths(checkpoint: Path | None, **lengths: int | tuple[int, ...] | None) -> None:
    """Before any work: lengths in tokens within the position limit of the checkpoint's model (read from its config
    alone; where that cannot be read, loading it later says why) or modformer's cap."""
    from modformer.limits import position_limit

    limit, name = None, ""
    if checkpoint is not None and (Path(checkpoint) / "config.json").is_file():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(checkpoint)
            limit, name = position_limit(config), f"this {config.model_type} model"
        except Exception:  # an unreadable config: loading the model names the problem
            pass
    for setting, value in lengths.items():
        check_tokens(value, setting, limit, name)


def _parse_granularities(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--granularities must be whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 2:
        raise ConfigError(f"--granularities must list sizes >= 2 (1 is the teacher's own layer), got {text!r}")
    return values


# --- assemble / export --------------------------------------------------------------------------------------------
AssemblyOpt = Annotated[str | None, typer.Option(help="Assembly, e.g. 'enc=1,1,2,4,4 dec=6,6', or JSON.")]
StrategyOpt = Annotated[str | None, typer.Option(help="size-first or speed-first (with --ratio).")]
RatioOpt = Annotated[float | None, typer.Option(help="Compression ratio for --strategy (size or speed).")]


ProfileOpt = Annotated[
    Path | None,
    typer.Option(help="A latency profile (from `modformer profile`): speed-first ratios use its predictions."),
]


@app.command()
@handles_errors
def assemble(
    modules: Annotated[Path, typer.Option(help="Modular checkpoint folder (from `train`).")],
    assembly: AssemblyOpt = None,
    strategy: StrategyOpt = None,
    ratio: RatioOpt = None,
    profile: ProfileOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the table as JSON.")] = None,
    teacher: MovedTeacherOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --json file.")] = False,
) -> None:
    """Show assemblies with their size: one (--assembly), one by ratio, or a strategy's whole sequence.

    Examples:

        \b
        modformer assemble --modules runs/mods
        modformer assemble --modules runs/mods --strategy size-first --ratio 2
        modformer assemble --modules runs/mods --strategy speed-first --profile runs/profile.json
        modformer assemble --modules runs/mods --teacher moved/teacher --json runs/table.json
    """
    from modformer.modular.model import ModularModel
    from modformer.planner.choice import assembly_table, save_assembly_table

    inputs = {"modules": modules, "profile": _profile_files(profile), **_teacher_input(modules, teacher)}
    refuse_overlap({"json_out": json_out}, inputs)
    if json_out:
        refuse_existing(json_out, overwrite)
    model = ModularModel.from_pretrained(modules, teacher)
    loaded = _load_profile(profile) if profile else None
    rows = assembly_table(model, assembly=assembly, strategy=strategy, ratio=ratio, profile=loaded)
    table = Table(
        "strategy",
        "shape",
        "assembly",
        "parameters",
        "size ratio",
        "speed ratio (profile)" if loaded else "est. speed ratio",
    )
    for r in rows.itertuples():
        table.add_row(
            r.strategy, r.shape, r.assembly, f"{r.parameters:,}", f"{r.size_ratio:.2f}", f"{r.speed_ratio:.2f}"
        )
    console.print(table)
    if json_out:
        save_assembly_table(json_out, rows, modules=modules)


@app.command()
@handles_errors
def export(
    out: Annotated[Path, typer.Option(help="Folder for the exported Hugging Face checkpoint.")],
    modules: Annotated[
        Path | None, typer.Option(help="Modular checkpoint folder (from `train`); with --plan, the plan's own.")
    ] = None,
    assembly: AssemblyOpt = None,
    strategy: StrategyOpt = None,
    ratio: RatioOpt = None,
    profile: ProfileOpt = None,
    plan: Annotated[Path | None, typer.Option(help="A plan folder (from `plan`): export its chosen assembly.")] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Serving target: torch:fp32 (a plain Hugging Face checkpoint; default), torch:bf16, "
            "ctranslate2:float32, ctranslate2:int8 (a CTranslate2 folder). With --plan: the plan's chosen target."
        ),
    ] = None,
    teacher: MovedTeacherOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write one assembly for a serving target: a plain Hugging Face checkpoint, or a CTranslate2 folder.

    Examples:

        \b
        modformer export --plan runs/plan --out runs/chosen
        modformer export --modules runs/mods --assembly "enc=1,1,2,2,3,3 dec=6,6" --out runs/small
        modformer export --modules runs/mods --assembly "enc=2,2,2,2,2,2 dec=2,2,2,2,2,2" \\
            --target ctranslate2:int8 --out runs/int8
        modformer export --modules runs/mods --teacher moved/teacher --assembly "enc=2,2,2 dec=6" --out runs/s
    """
    from modformer.planner.choice import export_chosen
    from modformer.serving.targets import Target

    read = modules or _plan_modules(plan)
    inputs = {
        "modules": read,
        "profile": _profile_files(profile),
        "plan": plan,
        **_teacher_input(read, teacher),
    }
    refuse_overlap({"out": out}, inputs)
    refuse_existing(out, overwrite)
    chosen, info = export_chosen(
        out,
        modules=modules,
        assembly=assembly,
        strategy=strategy,
        ratio=ratio,
        profile=_load_profile(profile) if profile else None,
        profile_source=str(profile) if profile else None,
        plan=plan,
        target=Target.parse(target) if target else None,
        overwrite=overwrite,
        teacher=teacher,
    )
    console.print(
        f"exported [bold]{chosen.format()}[/] ({info['target']}) to [bold]{escape(str(out))}[/]: "
        f"{info['parameters']:,} parameters, "
        f"size ratio {info['size_ratio']:.2f}, estimated speed ratio {info['estimated_speed_ratio']:.2f}"
    )


def _plan_modules(plan: Path | None) -> Path | None:
    """The modules a plan was made from, as it recorded them (None where the plan cannot be read: loading it
    then says why)."""
    if plan is None:
        return None
    from modformer.planner.artifact import Plan

    try:
        recorded = Plan.load(plan).modules
    except ModformerError:
        return None
    return Path(recorded) if recorded else None


# --- baselines ----------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def baseline(
    method: Annotated[str, typer.Argument(help="sft, kd or pseudo.")],
    teacher: Annotated[Path, typer.Option(help="Teacher: a Hugging Face seq2seq checkpoint folder (T5, BART).")],
    shape: Annotated[str, typer.Option(help="Student layer counts 'E-D', e.g. 6-6 or 12-3.")],
    out: Annotated[Path, typer.Option(help="Folder for the student (a plain Hugging Face checkpoint).")],
    data: DataOpt = None,
    src_ext: SrcExtOpt = None,
    tgt_ext: TgtExtOpt = None,
    src_column: SrcColOpt = "source",
    tgt_column: TgtColOpt = "target",
    prefix: PrefixOpt = "",
    line_format: LineFormatOpt = None,
    list_rule: ListRuleOpt = None,
    on_bad_line: OnBadLineOpt = "error",
    unescape_entities: UnescapeOpt = False,
    max_source_len: MaxSourceLenOpt = 128,
    max_target_len: MaxTargetLenOpt = 128,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    val_split: Annotated[str, typer.Option(help="Held-out split for the periodic loss.")] = "val",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Sentence pairs per step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 5e-4,
    w_logit: Annotated[float, typer.Option(help="kd: weight of logit distillation.")] = 1.0,
    w_hidden: Annotated[float, typer.Option(help="kd: weight of hidden-state distillation.")] = 1.0,
    pseudo_labels_file: Annotated[
        Path | None,
        typer.Option(
            "--pseudo-labels",
            help="pseudo: reuse these teacher outputs (one per training source, e.g. "
            "another pseudo student's pseudo_labels.txt) instead of generating them.",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="pseudo: longest teacher output, in tokens.")] = 64,
    train_only: Annotated[
        str | None,
        typer.Option(
            help="decoder: train only the decoder's layers; the embeddings, encoder, norms and head stay the "
            "teacher's, as around modular decoder modules. all-but-encoder: every weight but the encoder's "
            "(diagnostics)."
        ),
    ] = None,
    dropout: Annotated[
        bool,
        typer.Option("--dropout/--no-dropout", help="The student trains with the teacher's dropout (the default)."),
    ] = True,
    eval_every: Annotated[int, typer.Option(help="Held-out loss every N steps.")] = 200,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --out.")] = False,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train a fixed-shape student to compare with the modular run: sft, kd or pseudo-labelling.

    Example:

        \b
        modformer baseline kd --teacher path/to/t5-checkpoint --shape 6-6 --data data/ --src-ext en \\
            --tgt-ext de --out runs/student-6-6 --steps 2000
    """
    refuse_overlap(
        {"out": out}, {"teacher": teacher, "data": _data_inputs(data), "pseudo_labels_file": pseudo_labels_file}
    )
    check_seed(seed)
    check_batch(batch_size, "batch_size")
    _check_lengths(teacher, max_source_len=max_source_len, max_target_len=max_target_len, max_new_tokens=max_new_tokens)
    _use_threads(threads)
    from modformer.baselines import BaselineConfig, run_baseline

    config = BaselineConfig(
        method=method,
        shape=shape,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        w_logit=w_logit,
        w_hidden=w_hidden,
        eval_every=eval_every,
        save_every=save_every,
        max_new_tokens=max_new_tokens,
        max_source_len=max_source_len,
        max_target_len=max_target_len,
        seed=seed,
        train_only=train_only,
        dropout=dropout,
    )
    spec = _data_spec(
        data, src_ext, tgt_ext, src_column, tgt_column, prefix, line_format, list_rule, on_bad_line, unescape_entities
    )
    with _progress() as progress:
        labels_task = task = None

        def on_labels(done: int, total: int) -> None:
            nonlocal labels_task
            if labels_task is None:
                labels_task = progress.add_task("pseudo-labels", total=total, info="teacher, greedy")
            progress.advance(labels_task, done)

        def on_start(trainer) -> None:
            nonlocal task
            layers = ", ".join(f"{s} {trainer.layer_map[s]}" for s in trainer.layer_map)
            progress.console.print(
                f"{method} student {shape} (teacher layers {layers}); {config.steps} steps"
                + (f", resuming at {trainer.state.step}" if resume else "")
            )
            task = progress.add_task(method, total=config.steps, completed=trainer.state.step, info="")

        def on_step(r) -> None:
            shown = " ".join(f"{k} {v:.3f}" for k, v in r.parts.items())
            progress.update(task, completed=r.step, info=f"loss {r.loss:.3f} ({shown})")

        def on_eval(step: int, scores: dict[str, float]) -> None:
            progress.console.print(f"step {step}: held-out loss {scores['loss']:.3f}")

        state = run_baseline(
            config,
            teacher,
            spec,
            out,
            train_split=train_split,
            val_split=val_split,
            pseudo_labels_file=pseudo_labels_file,
            resume=resume,
            overwrite=overwrite,
            on_labels=on_labels,
            on_start=on_start,
            on_step=on_step,
            on_eval=on_eval,
        )
    console.print(f"student written to [bold]{escape(str(out))}[/] ({state.step} steps, {state.seconds:.0f} s)")


# --- plan ---------------------------------------------------------------------------------------------------------
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress bars say what happens


def _csv_tuple(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@app.command()
@handles_errors
def plan(
    modules: Annotated[Path, typer.Option(help="Modular checkpoint folder (from `train`).")],
    profile: Annotated[Path, typer.Option(help="Latency profile (from `profile`) of these modules on this machine.")],
    out: Annotated[Path, typer.Option(help="Plan folder to write (frontier, plot, report, chosen).")],
    data: DataOpt = None,
    src_ext: SrcExtOpt = None,
    tgt_ext: TgtExtOpt = None,
    src_column: SrcColOpt = "source",
    tgt_column: TgtColOpt = "target",
    prefix: PrefixOpt = "",
    line_format: LineFormatOpt = None,
    list_rule: ListRuleOpt = None,
    on_bad_line: OnBadLineOpt = "error",
    unescape_entities: UnescapeOpt = False,
    max_source_len: MaxSourceLenOpt = 128,
    max_target_len: MaxTargetLenOpt = 128,
    split: Annotated[str, typer.Option(help="Held-out split for the proxy and the validation.")] = "val",
    budget: Annotated[
        str,
        typer.Option(
            help="Limits on predicted cost and size, e.g. 'latency_ms<=40,memory_mb<=80,params_m<=30', or a speed-up "
            "over the teacher in torch fp32, 'speedup>=2' (empty: none)."
        ),
    ] = "",
    objectives: Annotated[str, typer.Option(help="Objectives: quality and latency and/or memory.")] = (
        "quality,latency,memory"
    ),
    method: Annotated[str, typer.Option(help="auto, exhaustive or nsga2 (auto: exhaustive when small).")] = "auto",
    trials: Annotated[
        int | None,
        typer.Option(
            help="Assemblies to score on the nsga2 path (default: 2 % of the space, 500-2500; the last "
            "generation may add up to a population more)."
        ),
    ] = None,
    population: Annotated[int, typer.Option(help="NSGA-II population size.")] = 64,
    class_seeds: Annotated[
        int, typer.Option(help="nsga2: surrogate's best assemblies per block-count class, scored first.")
    ] = 8,
    exhaustive_limit: Annotated[
        int, typer.Option(help="auto: exhaustive when at most this many fit the budget.")
    ] = 2000,
    proxy_samples: Annotated[int, typer.Option(help="Held-out pairs the proxy loss is measured on.")] = 32,
    validate: Annotated[int, typer.Option(help="Proxy-frontier points re-scored with generation and timing.")] = 8,
    validate_samples: Annotated[int, typer.Option(help="Held-out pairs generated for validation.")] = 200,
    metric: Annotated[
        str, typer.Option(help="Validation metric: bleu, chrf, rouge1, rouge2, rougeL or exact_match.")
    ] = "bleu",
    max_new_tokens: Annotated[int, typer.Option(help="Longest validation output, in tokens.")] = 64,
    batch: Annotated[int | None, typer.Option(help="Workload batch size (default: the profile's smallest).")] = None,
    src_len: Annotated[int | None, typer.Option(help="Workload source length (default: profile's smallest).")] = None,
    gen_len: Annotated[int | None, typer.Option(help="Workload new tokens (default: the profile's longest).")] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="optuna storage: a database URL, or a journal file path (default: OUT.optuna.log)."),
    ] = None,
    study_name: Annotated[str | None, typer.Option(help="Study name in the storage (default: the --out name).")] = None,
    workers: Annotated[int, typer.Option(help="Scoring processes on this machine (this one included).")] = 1,
    remote_workers: Annotated[
        int,
        typer.Option(
            help="Further workers joining from other machines with `plan-worker` (needs a database "
            "--storage); they take the numbers after the local ones."
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the NSGA-II sampler.")] = 0,
    targets: Annotated[
        str | None,
        typer.Option(
            help="Serving targets to plan over, e.g. torch:fp32,ctranslate2:int8 (default: every target the profile "
            "measured; the profile's torch target is always searched)."
        ),
    ] = None,
    teacher: MovedTeacherOpt = None,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Search assemblies x serving targets for a budget; validate the frontier on held-out data; write the plan.

    Examples:

        \b
        modformer plan --modules runs/mods --profile runs/profile.json --data data/ --src-ext en --tgt-ext de \\
            --budget "speedup>=2" --out runs/plan
        modformer plan --modules runs/mods --profile runs/profile.json --data data/ --src-ext en --tgt-ext de \\
            --budget "latency_ms<=150,memory_mb<=40" --targets torch:fp32,ctranslate2:int8 --out runs/plan
    """
    _use_threads(threads)
    from dataclasses import asdict

    from modformer.planner.artifact import Plan, plan_storage
    from modformer.planner.run import PlanSettings, run_plan
    from modformer.planner.search import SearchConfig, config_record
    from modformer.planner.space import Budget
    from modformer.profiling.profile import resolve_workload

    _quiet_optuna()
    journal = storage or str(Plan.default_storage(out))
    refuse_overlap(
        {"out": out, "storage": None if "://" in journal else journal},
        {
            "modules": modules,
            "profile": _profile_files(profile),
            "data": _data_inputs(data),
            **_teacher_input(modules, teacher),
        },
    )
    refuse_existing(out, overwrite)
    check_seed(seed)
    check_batch(batch, "batch")
    _check_lengths(
        _module_teacher(modules, teacher),
        src_len=src_len,
        gen_len=gen_len,
        max_source_len=max_source_len,
        max_target_len=max_target_len,
        max_new_tokens=max_new_tokens,
    )
    parsed_budget = Budget.parse(budget)
    search = SearchConfig(
        method=method,
        trials=trials,
        population=population,
        exhaustive_limit=exhaustive_limit,
        seed=seed,
        objectives=_csv_tuple(objectives),
        class_seeds=class_seeds,
    )
    loaded_profile = _load_profile(profile)
    workload = resolve_workload(loaded_profile, batch=batch, src_len=src_len, gen_len=gen_len)
    spec = _data_spec(
        data, src_ext, tgt_ext, src_column, tgt_column, prefix, line_format, list_rule, on_bad_line, unescape_entities
    )
    settings = PlanSettings(
        modules=str(modules),
        data=asdict(spec),
        split=split,
        proxy_samples=proxy_samples,
        validate=validate,
        validate_samples=validate_samples,
        metric=metric,
        max_new_tokens=max_new_tokens,
        max_source_len=max_source_len,
        max_target_len=max_target_len,
        budget=str(parsed_budget) if budget.strip() else "",
        workload=workload,
        search=config_record(search),
        targets=list(_csv_tuple(targets)) if targets else None,
        teacher=str(teacher.resolve()) if teacher else None,
    )
    storage = plan_storage(out, storage, study_name, fresh=overwrite)
    started = time.perf_counter()
    with _progress() as progress:
        result = run_plan(
            settings,
            loaded_profile,
            storage=storage,
            study_name=study_name or out.name,
            workers=workers,
            remote_workers=remote_workers,
            on_progress=_phase_tasks(progress),
        )
    Plan.from_result(result).save(out, overwrite=overwrite)
    _print_plan(result, out, time.perf_counter() - started)


def _print_plan(result, out: Path, seconds: float) -> None:
    s = result.summary
    search = s["search"]
    metric = s["metric"]
    table = Table(
        "assembly",
        "target",
        "source",
        "size x",
        "speed x",
        "pred. ms",
        "meas. ms",
        "MB",
        "proxy",
        metric,
        "frontier",
        title="validated assemblies",
    )
    for r in result.frontier[result.frontier["validated"]].itertuples():
        table.add_row(
            r.assembly,
            r.target,
            r.source,
            f"{r.size_ratio:.2f}",
            f"{r.speed_ratio:.2f}",
            f"{r.predicted_latency_ms:.1f}",
            f"{r.measured_latency_ms:.1f}",
            f"{r.memory_mb:.1f}",
            f"{r.proxy_loss:.3f}",
            f"{getattr(r, metric):.2f}",
            "yes" if r.on_validated_frontier else "",
        )
    console.print(table)
    rho = s["proxy_vs_validated_spearman"]
    console.print(
        f"method [bold]{search['method']}[/]: scored {search['scored']:,} of {search['space_size']:,} assemblies "
        f"({100 * search['scored_fraction']:.1f} %) in {search['seconds']:.0f} s; proxy vs {metric} Spearman "
        f"{'n/a' if rho is None else f'{rho:.2f}'}"
    )
    c = result.chosen
    console.print(
        f"chosen: [bold]{c['assembly']}[/] in [bold]{c.get('target', 'torch:fp32')}[/] ({metric} {c[metric]:.2f}, "
        f"measured {c['measured_latency_ms']:.1f} ms, "
        f"{c['memory_mb']:.1f} MB); plan written to [bold]{escape(str(out))}[/] in {seconds:.0f} s"
    )


@app.command("plan-worker")
@handles_errors
def plan_worker(
    storage: Annotated[
        str, typer.Option(help="The plan's optuna storage: the database URL it was given (--storage), reachable here.")
    ],
    study_name: Annotated[str, typer.Option(help="The plan's study name.")],
    index: Annotated[
        int, typer.Option(help="This worker's number: from --workers to --workers + --remote-workers - 1 of the plan.")
    ],
    threads: Annotated[int | None, typer.Option(help="torch threads for this worker.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the plan to create its study.")] = 600,
    teacher: MovedTeacherOpt = None,
) -> None:
    """Join a running plan from another machine and score its share of the assemblies.

    The plan must keep its study in a database both machines reach (`plan --storage
    postgresql://...`) and wait for this worker (`plan --remote-workers M`); this worker's --index runs from the
    plan's --workers to --workers + --remote-workers - 1.

    Example (on the plan's machine, then on another):

        \b
        modformer plan ... --storage postgresql://user@db/plans --workers 1 --remote-workers 1 --out runs/plan
        modformer plan-worker --storage postgresql://user@db/plans --study-name plan --index 1
    """
    from modformer.planner.run import worker_main

    _quiet_optuna()
    if index < 1:
        raise ConfigError(f"--index must be at least 1 (the plan is worker 0), got {index}")
    done = worker_main(storage, study_name, index, threads, wait_s=wait, teacher=teacher)
    console.print(f"worker {index}: scored {done:,} assemblies")


# --- evaluate -----------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def evaluate(
    model: Annotated[Path | None, typer.Option(help="A Hugging Face checkpoint (an export, or any seq2seq).")] = None,
    modules: Annotated[Path | None, typer.Option(help="A modular checkpoint, with --assembly.")] = None,
    assembly: AssemblyOpt = None,
    data: DataOpt = None,
    src_ext: SrcExtOpt = None,
    tgt_ext: TgtExtOpt = None,
    src_column: SrcColOpt = "source",
    tgt_column: TgtColOpt = "target",
    prefix: PrefixOpt = "",
    line_format: LineFormatOpt = None,
    list_rule: ListRuleOpt = None,
    on_bad_line: OnBadLineOpt = "error",
    unescape_entities: UnescapeOpt = False,
    max_source_len: MaxSourceLenOpt = 128,
    max_target_len: MaxTargetLenOpt = 128,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    limit: Annotated[int | None, typer.Option(help="Score only the first N pairs.")] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per generation batch.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length limit.")] = 64,
    num_beams: Annotated[int, typer.Option(help="Beam size (1 = greedy).")] = 1,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the scores, and what reading the data left out or cut, as JSON."),
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Also write the outputs to this file, one a line in the data's order.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing --json / --predictions files.")
    ] = False,
    teacher: MovedTeacherOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Score a model: BLEU and chrF (sacrebleu), ROUGE-1/2/L, exact match, teacher-forced loss.

    Examples:

        \b
        modformer evaluate --model runs/small --data data/ --src-ext en --tgt-ext de --split test --json s.json
        modformer evaluate --model runs/int8 --data data/ --src-ext en --tgt-ext de --split test
        modformer evaluate --modules runs/mods --assembly "enc=6,6 dec=6,6" --data data/ --src-ext en --tgt-ext de
        modformer evaluate --model runs/small --data 'scan/tasks_{split}_simple.txt' \\
            --line-format 'IN: {source} OUT: {target}' --split test --predictions out.txt
    """
    _use_threads(threads)
    from modformer.modular.evaluate import evaluate as evaluate_model

    outputs = [path for path in (json_out, predictions) if path is not None]
    if len(outputs) == 2 and json_out.resolve() == predictions.resolve():
        raise ConfigError(f"--json and --predictions both name {json_out}: give two files")
    refuse_overlap(
        {"json_out": json_out, "predictions": predictions},
        {"model": model, "modules": modules, **_teacher_input(modules, teacher), "data": _data_inputs(data)},
    )
    check_batch(batch_size, "batch_size")
    _check_lengths(
        model or _module_teacher(modules, teacher),
        max_new_tokens=max_new_tokens,
        max_source_len=max_source_len,
        max_target_len=max_target_len,
    )
    for path in outputs:  # before any work: a refusal costs nothing
        refuse_existing(path, overwrite)

    spec = _data_spec(
        data, src_ext, tgt_ext, src_column, tgt_column, prefix, line_format, list_rule, on_bad_line, unescape_entities
    )
    with _progress() as progress:
        tasks: list = []  # the bar appears with the first batch: a refused setting prints only its error

        def on_progress(done: int, total: int) -> None:
            if not tasks:
                tasks.append(progress.add_task("generate", total=total, info=""))
            progress.update(tasks[0], completed=done, total=total)

        result = evaluate_model(
            spec,
            model=model,
            modules=modules,
            assembly=assembly,
            split=split,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            max_source_len=max_source_len,
            max_target_len=max_target_len,
            on_progress=on_progress,
            teacher=teacher,
        )
    scores = result.scores
    table = Table("model", "split", "n", "BLEU", "chrF", "ROUGE-1", "ROUGE-2", "ROUGE-L", "exact", "loss")
    table.add_row(
        escape(result.model),
        split,
        str(scores.n),
        *(f"{getattr(scores, k):.2f}" for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")),
        _fmt(scores.loss),
    )
    console.print(table)
    if json_out:
        result.save(json_out)
    if predictions:
        result.save_predictions(predictions)


# --- demo ---------------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Option(help="Working folder: every stage's output, cached.")] = Path("runs/demo"),
    fast: Annotated[
        bool, typer.Option("--fast", help="A smoke run of every stage: tiny teacher, few steps (under 3 minutes).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh: clear the demo's folder (a rerun without it resumes).")
    ] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for every stage.", min=1)] = 1,
) -> None:
    """The product's whole job on bundled Multi30k data: teacher, modules, profile, plan, export, score.

    Each stage's output is kept in --out, so a rerun resumes where it stopped; --overwrite starts afresh.

    Examples:

        \b
        modformer demo
        modformer demo --fast --out runs/demo-fast
    """
    from dataclasses import replace

    from modformer.demo import BUNDLED_TEACHER, DemoConfig, prepare_folder, run_demo

    config = replace(DemoConfig.fast() if fast else DemoConfig(), threads=threads)
    refuse_overlap({"out": out}, {"data": _data_inputs(None), "teacher": BUNDLED_TEACHER})
    prepare_folder(out, config, overwrite=overwrite)
    started = time.perf_counter()
    with _progress() as progress:
        result = run_demo(config, out, report=_phase_tasks(progress))
    paths = result.save(out)
    _print_demo(result, paths, time.perf_counter() - started)


def _print_demo(result, paths: dict[str, Path], seconds: float) -> None:
    """One screen: what to deploy and how it compares with the teacher, then where everything is."""
    d = result.deployment
    w = d["workload"]
    metric = d["metric"].upper() if d["metric"] == "bleu" else d["metric"]
    speed = (
        f"{d['measured_speedup']:.1f}x the teacher in torch fp32 ({d['measured_latency_ms']:.1f} ms against "
        f"{d['teacher_latency_ms']:.1f} ms"
        if d.get("teacher_latency_ms")
        else f"{d['measured_speedup']:.1f}x the teacher in torch fp32 ({d['measured_latency_ms']:.1f} ms"
    )
    lines = [
        f"[bold]Deploy[/] {escape(d['assembly'])} ({d['shape']} layers) served in [bold]{escape(d['target'])}[/]",
        f"  speed    {speed}; batch {w.get('batch')}, {w.get('src_len')}-token sources, {w.get('gen_len')} new "
        f"tokens, {d['threads']} thread(s), measured by the plan)",
        f"  quality  {metric} {d['quality']:.2f} against the teacher's {d['teacher_quality']:.2f} "
        f"({d['test_split']}, {d['test_pairs']:,} pairs, greedy; {d['quality'] - d['teacher_quality']:+.2f})",
        f"  size     {d['size_mb']:.1f} MB of weights against the teacher's {d['teacher_size_mb']:.1f} MB "
        f"({d['teacher_size_mb'] / d['size_mb']:.1f}x smaller)"
        + (f"; peak memory {d['memory_mb']:.0f} MB (predicted)" if d.get("memory_mb") is not None else ""),
        f"  budget   {escape(d['budget'])} (the plan chose the most accurate validated point within it)",
        "",
        f"report   {escape(result.paths['report'])}",
        f"figures  {escape(result.paths['pareto'])}, {escape(str(paths['figure']))}",
        f"model    {escape(result.paths['export'])} (serve it with {escape(d['target'].split(':')[0])})",
        f"done in {_duration(seconds)}; stage times in {escape(str(paths['json']))}",
    ]
    console.print("\n".join(lines), highlight=False)


# --- profile ------------------------------------------------------------------------------------------------------
profile_app = typer.Typer(
    help="Measure every teacher layer and module on this machine (and every serving target it supports); "
    "`profile show FILE` prints a saved profile.\n\nExamples:\n\n\b\n"
    "    modformer profile --modules runs/mods --out runs/profile.json --threads 1 --validate 20\n"
    "    modformer profile --modules runs/mods --out runs/profile.json --targets ctranslate2:int8 --batch 1\n"
    "    modformer profile show runs/profile.json\n"
    "    modformer profile refresh runs/profile.json --modules runs/mods",
    no_args_is_help=True,
    invoke_without_command=True,
    subcommand_metavar="[show FILE | refresh FILE]",  # measuring needs no subcommand
    options_metavar="--modules DIR --out FILE [OPTIONS]",
)
app.add_typer(profile_app, name="profile")


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} must be whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} must list whole numbers >= 1, got {text!r}")
    return values


@profile_app.callback(invoke_without_command=True)
@handles_errors
def profile(
    ctx: typer.Context,
    modules: Annotated[Path | None, typer.Option(help="Modular checkpoint folder (from `train`).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Profile to write: NAME.json (+ NAME.csv beside it), or a folder.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's current setting).")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (the torch target measured).")] = "fp32",
    targets: Annotated[
        str | None,
        typer.Option(
            help="Serving targets to measure besides torch at --dtype, e.g. ctranslate2:float32,ctranslate2:int8. "
            "Default: every engine target this machine supports (`modformer targets` lists them); 'none': torch only."
        ),
    ] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes to measure, e.g. 1,8.")] = "1,8",
    src_len: Annotated[str, typer.Option(help="Source lengths to measure, e.g. 32,64.")] = "32,64",
    gen_len: Annotated[str, typer.Option(help="New tokens per call, e.g. 32.")] = "32",
    repeats: Annotated[int, typer.Option(help="Timed rounds per block measurement.")] = 20,
    statistic: Annotated[
        str,
        typer.Option(
            help="Summarise the rounds by their min (a call without interference: stable on a shared "
            "machine) or median (the typical call)."
        ),
    ] = "min",
    memory: Annotated[
        bool, typer.Option(help="Measure peak memory (a fresh process per model and grid point).")
    ] = True,
    validate: Annotated[int, typer.Option(help="Held-out assemblies to measure end to end (0 = none).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed (inputs, held-out assemblies).")] = 0,
    teacher: MovedTeacherOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Measure every teacher layer and module (latency per block, fixed costs, memory); optionally validate.

    Examples:

        \b
        modformer profile --modules runs/mods --out runs/profile.json --threads 1 --validate 20
        modformer profile --modules runs/mods --out runs/profile.json --targets ctranslate2:int8 --batch 1
        modformer profile show runs/profile.json
    """
    if ctx.invoked_subcommand is not None:
        return
    from modformer.modular.model import ModularModel
    from modformer.profiling.measure import ProfileConfig
    from modformer.profiling.profile import profile_paths
    from modformer.profiling.run import run_profile
    from modformer.serving.targets import profile_targets

    if modules is None or out is None:
        raise ConfigError("profile needs --modules and --out (or `modformer profile show FILE`)")
    if validate < 0:
        raise ConfigError(f"--validate must be >= 0, got {validate}")
    config = ProfileConfig(
        device=device,
        dtype=dtype,
        threads=threads,
        batch_sizes=_int_list(batch, "--batch"),
        src_lens=_int_list(src_len, "--src-len"),
        gen_lens=_int_list(gen_len, "--gen-len"),
        repeats=repeats,
        memory=memory,
        seed=seed,
        statistic=statistic,
    )
    refuse_overlap({"out": [out, *profile_paths(out)]}, {"modules": modules, **_teacher_input(modules, teacher)})
    for path in profile_paths(out):
        refuse_existing(path, overwrite)
    check_seed(seed)
    check_batch(config.batch_sizes, "batch")
    _check_lengths(_module_teacher(modules, teacher), src_len=config.src_lens, gen_len=config.gen_lens)
    engine_targets = profile_targets(targets, dtype, device)
    model = ModularModel.from_pretrained(modules, teacher)
    _check_profile_memory(config, model.teacher.config)
    started = time.perf_counter()
    with _progress() as progress:
        result = run_profile(
            model, config, engine_targets, validate=validate, seed=seed, on_progress=_phase_tasks(progress)
        )
    result.save(out)
    _print_profile(result)
    console.print(
        f"profile written to [bold]{escape(str(profile_paths(out)[1]))}[/] "
        f"({len(result.table)} rows, {time.perf_counter() - started:.0f} s)"
    )


def _check_profile_memory(config, c) -> None:
    """Before measuring: the largest shape's activations (roughly) fit in this machine's memory (`c`: the teacher's
    config)."""
    import os

    import torch

    from modformer.limits import check_memory

    if config.device == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:  # no way to ask: no estimate is refused
        return
    d_model = getattr(c, "d_model", None) or getattr(c, "hidden_size", 512)
    heads = getattr(c, "num_heads", None) or getattr(c, "encoder_attention_heads", None) or 8
    check_memory(max(config.batch_sizes), max(config.src_lens), max(config.gen_lens), d_model, heads, total)


@profile_app.command("show")
@handles_errors
def profile_show(
    file: Annotated[Path, typer.Argument(help="A saved profile: its .json, its .csv or its folder.")],
) -> None:
    """Print a saved profile: where it was measured, block costs, fixed costs and the validation figures.

    Example:

        \b
        modformer profile show runs/profile.json
    """
    _print_profile(_load_profile(file))


@profile_app.command("refresh")
@handles_errors
def profile_refresh(
    file: Annotated[Path, typer.Argument(help="A saved profile: its .json, its .csv or its folder.")],
    modules: Annotated[Path, typer.Option(help="The modular checkpoint the profile was measured on.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the refreshed profile here (default: update FILE in place).")
    ] = None,
    repeats: Annotated[
        int, typer.Option(help="Timed rounds of the teacher per batch size in torch (engines: twice as many).")
    ] = 20,
    teacher: MovedTeacherOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Re-time the teacher now in every target of a profile and scale its predictions by how much faster or slower
    this machine runs than when it was profiled (a minute or two, against the profile's many).

    Example:

        \b
        modformer profile refresh runs/profile.json --modules runs/mods
    """
    from modformer.modular.model import ModularModel
    from modformer.profiling.profile import profile_paths
    from modformer.profiling.refresh import refresh

    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}", settings="repeats")
    result = _load_profile(file)
    target = out or file
    if out is not None:
        refuse_overlap({"out": [out, *profile_paths(out)]}, {"modules": modules, "file": [*profile_paths(file)]})
        for path in profile_paths(out):
            refuse_existing(path, overwrite)
    model = ModularModel.from_pretrained(modules, teacher)
    with _progress() as progress:
        on_progress = _phase_tasks(progress)
        record = refresh(result, model, repeats=repeats, on_progress=lambda d, t, i: on_progress("refresh", d, t, i))
    result.save(target)
    console.print(_refresh_lines(record), highlight=False)
    console.print(f"refreshed profile written to [bold]{escape(str(profile_paths(target)[1]))}[/]")


def _refresh_lines(record: dict) -> str:
    """'  torch:fp32 batch 1: 229.0 ms now, 219.5 ms from the table: predictions x 1.043' per target and batch."""
    lines = [f"refreshed {record['date']} against the teacher ({record['reference']}):"]
    for row in record["rows"]:
        factor = record["factors"][row["target"]][str(row["batch"])]  # what predictions are scaled by
        lines.append(
            f"  {row['target']} batch {row['batch']}: {row['measured_ms']:.1f} ms now, {row['predicted_ms']:.1f} ms "
            f"from the table: predictions x {factor:.3f}"
        )
    return "\n".join(lines)


def _load_profile(file: Path):
    """Load a profile; print a warning naming what differs where it was measured on other hardware or settings."""
    from modformer.profiling.profile import load_profile

    result, warned = load_profile(file)
    for line in warned:
        err_console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False)
    return result


def _print_profile(result) -> None:
    from modformer.profiling.summary import block_summary, fixed_summary

    meta, fp = result.meta, result.fingerprint
    grid = meta.get("grid", {})
    console.print(
        f"[bold]measured on[/] {escape(str(fp.get('gpu_name') or fp.get('cpu_model')))} ({fp.get('device')}, "
        f"{fp.get('torch_threads')} threads, {fp.get('dtype')}), torch {fp.get('torch')}, "
        f"transformers {fp.get('transformers')}, {meta.get('created', '?')}; "
        f"grid: batch {grid.get('batch_sizes')}, src_len {grid.get('src_lens')}, gen_len {grid.get('gen_lens')}, "
        f"cache_len {grid.get('cache_lens')}; {result.statistic} of the rounds; "
        f"{meta.get('profile_seconds', '?')} s",
        highlight=False,
    )
    for stack in ("encoder", "decoder"):
        _print_frame(block_summary(result, stack), f"{stack} blocks (ms each block adds)", index="block")
    _print_frame(fixed_summary(result), "fixed costs (zero-layer generate), calibration and peak memory")
    if result.engines is not None:
        _print_frame(result.engines, "engine targets: whole models of the teacher's shape at these depths (ms a call)")
    validation = meta.get("validation")
    if validation:
        per_batch = validation.get("per_batch", {})
        keys = sorted({k for figures in per_batch.values() for k in figures})
        title = f"validation: {validation.get('n')} held-out assemblies (percentages 0-100)"
        table = Table("figure", *(f"batch {b}" for b in per_batch), title=title)
        for key in keys:
            table.add_row(key, *(_fmt(figures.get(key)) for figures in per_batch.values()))
        console.print(table)
        export = validation.get("export") or {}
        if export:
            console.print(
                f"export vs native ({escape(str(export.get('assembly')))}): ratio "
                f"{_fmt(export.get('export_vs_native_ratio'))}, outputs match the in-memory assembly: "
                f"{export.get('outputs_match')}",
                highlight=False,
            )
    if meta.get("refresh"):
        console.print(_refresh_lines(meta["refresh"]), highlight=False)


def _fmt(value) -> str:
    """A table cell: thousands separators for counts, three decimals for small figures, '-' for missing."""
    import numbers

    import pandas as pd

    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return "-"
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return escape(str(value))
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    value = float(value)
    return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def _print_frame(frame, title: str, index: str | None = None) -> None:
    frame = frame.reset_index() if index else frame
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


@app.command()
@handles_errors
def targets(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """List the serving targets (engine:compute_type) and whether this machine can run each, from the engines.

    Example:

        \b
        modformer targets
    """
    from modformer.serving.targets import supported_targets

    table = Table("target", "here")
    for name, status in supported_targets(device).items():
        table.add_row(name, "[green]ok[/]" if status == "ok" else escape(status))
    console.print(table)


def main() -> None:  # pragma: no cover - the console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
