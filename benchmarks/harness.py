"""What every benchmark script shares: the shared data sets, running the CLI, provenance, caches and results.

Scripts in this folder import it as a sibling (`from harness import ...`: Python puts a script's folder on the import path);
`modformer` itself is the installed package.

- `DATASETS`, `data_args(name)`: the shared data sets under ../shared/data and the CLI options that name them.
- `cli(...)`, `run(args, log, threads=...)`: a `python -m modformer.cli ...` command, run with its output appended
  to a log and the thread count set explicitly in its environment; the wall time in seconds.
- `provenance()`: the command, the machine (CPU, cores, threads, versions) and the date of this run: one record,
  the same in every results file. `recorded_provenance(result)` keeps a results file's own.
- `JsonCache`: a dict kept in one JSON file under the work folder, written atomically on save, merged with what other
  processes sharing the folder saved since; `ScoreCache`, one whose entries are tied to the weights they were
  measured on (`weights_id`).
- `Results`, `add_results_options(parser, name)`: where a benchmark writes `<name>.json` (and `.md`, `.png`), and
  `--from-results JSON`, which measures nothing and rebuilds the results from a results file's raw part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from modformer.data import DataSpec
from modformer.io import atomic_path, die_with_parent, sha256_file, write_json
from modformer.recipe import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"  # every benchmark's work folder (caches, checkpoints, logs) lives under here
SHARED = ROOT.parent / "shared"
TEACHER = SHARED / "models" / "multi30k-t5-12x12"
PROVENANCE = ("command", "machine", "date")  # what a results file records about the run that measured it
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSet:
    """One of the shared data sets: a folder of `<split>.<ext>` files, and the splits the benchmarks use."""

    path: Path
    src_ext: str
    tgt_ext: str
    val: str  # held-out losses and planning
    test: str  # every reported figure

    def spec(self) -> DataSpec:
        return DataSpec(path=str(self.path), src_ext=self.src_ext, tgt_ext=self.tgt_ext)


DATASETS = {
    "multi30k": DataSet(SHARED / "data" / "multi30k_en_de", "en", "de", val="val", test="test_2016_flickr"),
    "squad_qg": DataSet(SHARED / "data" / "squad_qg", "src", "tgt", val="valid", test="valid"),
}


def data_args(name: str, *, split_option: str | None = "--val-split") -> list[str]:
    """The CLI options naming data set `name`; its held-out split under `split_option` (`--val-split` for the
    training commands, `--split` for `plan`; None: leave the command's default)."""
    data = DATASETS[name]
    args = ["--data", str(data.path), "--src-ext", data.src_ext, "--tgt-ext", data.tgt_ext]
    return [*args, split_option, data.val] if split_option else args


# --------------------------------------------------------------------------------------------------------------------
# Running the CLI
# --------------------------------------------------------------------------------------------------------------------
def cli(*args) -> list[str]:
    """The command line of `modformer <args>` in this interpreter."""
    return [sys.executable, "-m", "modformer.cli", *(str(a) for a in args)]


def cli_env(threads: int | None) -> dict[str, str]:
    """The environment of a CLI subprocess: this one's, with the thread count set where `threads` is given."""
    return {**os.environ, **({var: str(threads) for var in THREAD_VARS} if threads else {})}


def shown(args: Sequence) -> str:
    return "modformer " + " ".join(str(a) for a in args)


def run(args: Sequence, log: Path, *, threads: int | None = None) -> float:
    """Run `modformer <args>` with its output appended to `log` (after a `$ command` line); the wall time in seconds.
    `threads` sets the thread count of the subprocess explicitly (None: the environment's). Stops the benchmark,
    naming the log, if the command fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ {shown(args)}" + (f"  [{', '.join(f'{v}={threads}' for v in THREAD_VARS)}]" if threads else ""))
        f.write("\n")
        f.flush()
        code = subprocess.call(
            cli(*args), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=cli_env(threads), preexec_fn=die_with_parent
        )
    if code != 0:
        sys.exit(f"{shown(args)} failed (exit {code}); see {log}")
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------------
def command() -> str:
    """This run's command line, as a reader would type it from the repository."""
    script = Path(sys.argv[0]).resolve()
    shown_script = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return " ".join(["python", str(shown_script), *sys.argv[1:]])


def provenance(threads: int | None = None) -> dict:
    """The command, the machine (CPU, cores, `threads` or torch's setting, OS, python/torch/transformers/modformer
    versions) and the date of this run: the record every results file carries."""
    from modformer import __version__
    from modformer.profiling.hardware import fingerprint

    machine = {**fingerprint("cpu", "fp32", threads), "modformer": __version__}
    return {"command": command(), "machine": machine, "date": time.strftime("%Y-%m-%d")}


def recorded_provenance(result: dict) -> dict:
    """The provenance a results file recorded (`--from-results` keeps it: the figures are that run's)."""
    return {key: result[key] for key in PROVENANCE if key in result}


# --------------------------------------------------------------------------------------------------------------------
# Caches and results
# --------------------------------------------------------------------------------------------------------------------
class JsonCache:
    """A dict kept in one JSON file: read when made (empty if there is none), written atomically by save().

    Several benchmark processes may share a work folder (e.g. two `decoder_gap.py` lanes, one per core), each with
    its own JsonCache of the same file. save() therefore holds a lock beside the file, reads what the others wrote
    since, and writes the union (this process's entries win where both have a key), so that no lane's entries are
    lost to another's save."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.path}.lock"):
            self.data = {**self._read(), **self.data}
            write_json(self.path, self.data)


def weights_id(folder: Path) -> str:
    """A fingerprint of the weights in a run or model folder: its safetensors files' sha256, as the folder's checkpoint
    manifest records them (computed where it has none), hashed together. Same weights, same id, whatever the folder
    is called; a folder trained again or replaced by another run gets another id."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    recorded = json.loads(manifest.read_text(encoding="utf-8")).get("files", {}) if manifest.is_file() else {}
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):  # read each time: a replaced folder may keep sizes and times
        entry = recorded.get(file.name, {})
        sha = entry.get("sha256") if entry.get("bytes") == file.stat().st_size else None
        digest.update(f"{file.name}:{sha or sha256_file(file)};".encode())
    return digest.hexdigest()[:16]


class ScoreCache(JsonCache):
    """Scores by key, each tied to the weights it was scored on (`weights_id` of the model's folder, kept in a second
    file beside this one): `get` gives None where the folder holds other weights now (a run trained again, or a
    folder replaced by another run's copy), so a stale score is measured again instead of reported.

    A score recorded before the ids were kept is taken as the folder's present weights (its id is recorded then)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.ids = JsonCache(Path(path).with_suffix(".weights.json"))

    def get(self, key: str, folder: Path, *, save: bool = True):
        """The entry for the weights now in `folder`, or None. `save=False` (a report that only reads) records the id
        of an entry from before the ids in memory only."""
        if key not in self.data:
            return None
        wid, recorded = weights_id(folder), self.ids.data.get(key)
        if recorded is None:  # scored before ids were kept
            self.ids.data[key] = wid
            if save:
                self.ids.save()
        elif recorded != wid:
            print(f"{key}: {folder} holds other weights than were scored; scoring again", flush=True)
            return None
        return self.data[key]

    def put(self, key: str, folder: Path, value) -> None:
        self.data[key] = value
        self.ids.data[key] = weights_id(folder)
        self.save()
        self.ids.save()


@dataclass(frozen=True)
class Results:
    """A benchmark's results files: `<folder>/<name>.json`, and `.md` / `.png` beside it where it writes them."""

    folder: Path
    name: str

    def path(self, suffix: str = ".json") -> Path:
        return self.folder / f"{self.name}{suffix}"

    def write(self, record: dict) -> Path:
        write_json(self.path(), record)
        return self.path()

    def write_text(self, suffix: str, text: str) -> Path:
        with atomic_path(self.path(suffix)) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return self.path(suffix)

    def write_with_markdown(self, record: dict, markdown: str) -> str:
        """The record as `.json` and its table as `.md`; what was written, for the closing line."""
        return f"{self.write(record)} and {self.write_text('.md', markdown)}"

    def save_figure(self, figure, suffix: str = ".png", **savefig) -> Path:
        with atomic_path(self.path(suffix)) as tmp:
            figure.savefig(tmp, format="png", **savefig)
        return self.path(suffix)


def add_results_options(parser: argparse.ArgumentParser, name: str) -> None:
    """--results DIR (where `<name>.json` goes) and --from-results JSON (measure nothing: rebuild from a results
    file's raw part)."""
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder to write {name}.json (and plots) to")
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help=f"measure nothing: rebuild the results from the raw part of a results file "
        f"(e.g. benchmarks/results/{name}.json) into --results",
    )


def read_results(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def measured_or_recorded(args, measure, derived) -> dict:
    """The measured part of a result: measured now, or read back from `--from-results` without the `derived` keys
    (which the report computes again)."""
    if args.from_results:
        return {k: v for k, v in read_results(args.from_results).items() if k not in derived}
    return measure(args)
