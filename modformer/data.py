"""Source/target pairs for seq2seq models: where they come from, how they become token ids and batches.

`DataSpec` says where the pairs live; `load_split` reads one split of them as `Seq2SeqData`; `Seq2SeqData.tokenize`
turns that into `TokenizedData`, which cuts padded, length-bucketed batches and an endless, resumable training stream.

What `DataSpec.path` may be, tried in this order:

* a path containing ``{split}`` — a template: ``data/{split}.jsonl`` (a table per split), or ``data/{split}`` with
  src_ext/tgt_ext (line-aligned files ``data/train.en`` and ``data/train.de``);
* a folder saved by ``datasets`` (``save_to_disk``): a DatasetDict with the split, or a single Dataset;
* a folder of line-aligned files ``{split}.{src_ext}`` / ``{split}.{tgt_ext}`` (without extensions given:
  ``{split}.src``/``.tgt`` or ``{split}.source``/``.target``), each plain or gzip-compressed (``train.en.gz``), else a
  table ``{split}.jsonl``, ``.csv`` or ``.tsv``;
* a single ``.jsonl``, ``.csv`` or ``.tsv`` file: it has no splits, so every split name reads the whole file
  (``available_splits`` names it by its stem). The same holds for a folder holding a single saved Dataset;
* anything else that does not exist locally: a Hugging Face hub name, ``name`` or ``name:config`` (``wmt14:de-en``).

Every problem with the data is a `DataError` whose message is one line naming the file and, where there is one, the
line, so the CLI can print it as it is.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from modformer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "resources" / "multi30k_sample"
FULL_DIR = Path(__file__).resolve().parent / "resources" / "multi30k"
TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv")
AUTO_EXTENSIONS = (("src", "tgt"), ("source", "target"))  # tried in order when src_ext/tgt_ext are not given
SPLIT_FIELD = "{split}"
GZIP_SUFFIX = ".gz"  # line files may come compressed: train.en.gz
TRANSLATION_COLUMN = "translation"  # the WMT layout: one column of {language: text} dicts
LABEL_PAD_ID = -100  # ignored by the cross-entropy loss of Hugging Face seq2seq models
BUCKET_BATCHES = 50  # batches per length-sorted chunk: enough to group similar lengths, few enough to stay random
TOKENIZE_CHUNK = 4096  # texts per tokenizer call, so a large corpus never holds one huge BatchEncoding
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")

Where = Callable[[str, int], str]  # (side, row) -> "data/train.de line 17": where an error points


# --- the spec -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """Where source/target pairs come from. See the module docstring for what `path` may be."""

    path: str = field(metadata={"help": "Folder, file, file template with {split}, or Hugging Face hub name."})
    src_ext: str | None = field(
        default=None,
        metadata={"help": "Extension of source files (e.g. 'en'); for `translation` columns, the source language."},
    )
    tgt_ext: str | None = field(
        default=None,
        metadata={"help": "Extension of target files (e.g. 'de'); for `translation` columns, the target language."},
    )
    src_column: str = field(default="source", metadata={"help": "Source column of JSONL/CSV/TSV files and data sets."})
    tgt_column: str = field(default="target", metadata={"help": "Target column of JSONL/CSV/TSV files and data sets."})
    prefix: str = field(
        default="", metadata={"help": "Task prefix prepended to every source, e.g. 'translate English to German: '."}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))  # accept a Path; frozen, so set it the dataclass way
        if not self.path.strip():
            raise DataError("the data path is empty: give a folder, a file, a template with {split}, or a hub name")
        if (self.src_ext is None) != (self.tgt_ext is None):
            raise DataError(
                f"give both `src_ext` and `tgt_ext` or neither (got {self.src_ext!r} and {self.tgt_ext!r})",
                settings=("src_ext", "tgt_ext"),
            )
        for name, ext in (("src_ext", self.src_ext), ("tgt_ext", self.tgt_ext)):
            if ext is not None and (not ext or ext.startswith(".") or "/" in ext or "\\" in ext):
                raise DataError(
                    f"`{name}` {ext!r} is not a file extension: give it without the dot, e.g. 'en'", settings=name
                )
        if self.src_ext is not None and self.src_ext == self.tgt_ext:
            raise DataError(f"src_ext and tgt_ext are both {self.src_ext!r}: sources and targets need different files")
        if not self.src_column or not self.tgt_column or self.src_column == self.tgt_column:
            raise DataError(
                f"src_column {self.src_column!r} and tgt_column {self.tgt_column!r} must be two different, non-empty names"
            )


def default_data_spec() -> DataSpec:
    """The Multi30k En→De sample bundled with modformer: 3,000 training pairs, 300 for val and for test."""
    return DataSpec(path=str(SAMPLE_DIR), src_ext="en", tgt_ext="de")


def full_data_spec() -> DataSpec:
    """The whole Multi30k En→De set bundled with modformer (gzip-compressed): splits train (29,000 pairs), val
    (1,014) and test_2016_flickr (1,000)."""
    return DataSpec(path=str(FULL_DIR), src_ext="en", tgt_ext="de")


# --- pairs of texts -----------------------------------------------------------------------------------------------
@dataclass
class Seq2SeqData:
    """Aligned source and target texts of one split."""

    sources: list[str]
    targets: list[str]
    origin: str = ""  # human-readable: which files, columns and split the pairs came from

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.targets):
            raise DataError(f"{self.origin}: {len(self.sources)} sources but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, n: int | None) -> Seq2SeqData:
        """The first `n` pairs (all of them when `n` is None or not smaller than the data)."""
        _check_limit(n)
        if n is None or n >= len(self):
            return self
        return Seq2SeqData(self.sources[:n], self.targets[:n], f"{self.origin}, first {n}")

    def tokenize(self, tokenizer: Any, max_source_len: int = 128, max_target_len: int = 128) -> TokenizedData:
        """Token ids with the tokenizer's special tokens (T5 appends </s>), truncated to the given lengths."""
        if max_source_len < 1 or max_target_len < 1:
            raise ConfigError(f"max lengths must be at least 1 (got {max_source_len} and {max_target_len})")
        if tokenizer.pad_token_id is None:
            raise DataError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos token) first")
        return TokenizedData(
            source_ids=_token_ids(tokenizer, self.sources, max_source_len, target=False),
            target_ids=_token_ids(tokenizer, self.targets, max_target_len, target=True),
            pad_id=int(tokenizer.pad_token_id),
        )


def _token_ids(tokenizer: Any, texts: list[str], max_len: int, *, target: bool) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start : start + TOKENIZE_CHUNK]
        # text_target= lets tokenizers with separate source/target settings (e.g. language codes) use the target ones.
        encoded = (
            tokenizer(text_target=chunk, truncation=True, max_length=max_len)
            if target
            else tokenizer(chunk, truncation=True, max_length=max_len)
        )
        ids.extend(list(row) for row in encoded["input_ids"])
    return ids


# --- token ids and batches ----------------------------------------------------------------------------------------
@dataclass
class TokenizedData:
    """Token ids of aligned pairs, cut into padded batches on demand."""

    source_ids: list[list[int]]
    target_ids: list[list[int]]
    pad_id: int

    def __post_init__(self) -> None:
        if len(self.source_ids) != len(self.target_ids):
            raise DataError(f"{len(self.source_ids)} tokenized sources but {len(self.target_ids)} targets")

    def __len__(self) -> int:
        return len(self.source_ids)

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
    ) -> list[dict[str, torch.Tensor]]:
        """One epoch of batches: input_ids, attention_mask, labels (padded with -100) and index, all (B, ...) long.

        shuffle=True buckets by source length and shuffles, deterministically for (seed, epoch); shuffle=False keeps
        the data's order so outputs line up with it.
        """
        plan = batch_plan([len(ids) for ids in self.source_ids], batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return [self.batch(index) for index in plan]

    def stream(self, batch_size: int, *, seed: int = 0, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled batches, epoch after epoch, starting at global step `start_step`.

        Steps before `start_step` are skipped by index, never collated, so resuming is cheap and a resumed run sees
        exactly the batches an uninterrupted one would have.
        """
        if start_step < 0:
            raise ConfigError(f"start_step must be at least 0 (got {start_step})")
        if len(self) == 0:
            raise DataError("no pairs to train on: the data set is empty")
        lengths = [len(ids) for ids in self.source_ids]
        epoch, offset = divmod(start_step, math.ceil(len(self) / _check_batch_size(batch_size)))
        return self._stream(lengths, batch_size, seed, epoch, offset)

    def _stream(
        self, lengths: list[int], batch_size: int, seed: int, epoch: int, offset: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        # A generator apart from `stream`, so bad arguments raise at the call rather than at the first next().
        while True:
            for index in batch_plan(lengths, batch_size, shuffle=True, seed=seed, epoch=epoch)[offset:]:
                yield self.batch(index)
            epoch, offset = epoch + 1, 0

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The pairs at `indices` (in that order) as one padded batch: input_ids, attention_mask, labels (padded with
        -100) and index (the positions given), all (B, ...) long."""
        index = np.asarray(indices, dtype=np.int64)
        if index.ndim != 1 or len(index) == 0:
            raise ConfigError(f"a batch needs a flat, non-empty list of positions, got {index.tolist()}")
        if index.min() < 0 or index.max() >= len(self):
            raise ConfigError(f"batch positions must lie in 0-{len(self) - 1}, got {index.min()}-{index.max()}")
        sources = [self.source_ids[i] for i in index]
        input_ids = _pad(sources, self.pad_id)  # (B, S)
        lengths = torch.tensor([len(ids) for ids in sources], dtype=torch.long)
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()  # (B, S)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": _pad([self.target_ids[i] for i in index], LABEL_PAD_ID),  # (B, T)
            "index": torch.as_tensor(index),  # (B,)
        }


def batch_plan(
    lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
) -> list[np.ndarray]:
    """Which data positions go into each batch of one epoch (a list of int arrays); every position exactly once.

    Shuffled: permute, sort by length within chunks of BUCKET_BATCHES batches (so a batch pads little), cut, then
    permute the batches so lengths do not ramp within a chunk. One generator seeded by (seed, epoch) drives both.
    """
    _check_batch_size(batch_size)
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be at least 0 (got {seed} and {epoch})")
    if not shuffle:
        order = np.arange(len(lengths))
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    sizes = np.asarray(lengths, dtype=np.int64)
    chunk = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(sizes[part], kind="stable")]
        batches.extend(part[at : at + batch_size] for at in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max((len(row) for row in rows), default=0)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")
    return batch_size


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be at least 0 or None (got {limit})")


# --- loading ------------------------------------------------------------------------------------------------------
@dataclass
class _Raw:
    """Pairs as read, before the checks: values may still be empty or not text."""

    sources: list[Any]
    targets: list[Any]
    origin: str
    where: Where


def load_split(spec: DataSpec, split: str, limit: int | None = None) -> Seq2SeqData:
    """Read split `split` of `spec` (the first `limit` pairs where given), checked and with `spec.prefix` applied."""
    _check_limit(limit)
    raw = _read_split(spec, split, limit)
    keep = len(raw.sources) if limit is None else limit
    sources = _checked_texts(raw.sources[:keep], "source", raw.where)
    targets = _checked_texts(raw.targets[:keep], "target", raw.where)
    origin = raw.origin if keep >= len(raw.sources) else f"{raw.origin}, first {keep}"
    data = Seq2SeqData([spec.prefix + text for text in sources], targets, origin)
    logger.info("loaded %d pairs from %s", len(data), data.origin)
    return data


def available_splits(spec: DataSpec) -> list[str]:
    """Names of the splits `spec` holds, sorted.

    A single file or saved Dataset has one, named after it (though any name reads it). A folder of line-aligned files
    with extensions other than src/tgt or source/target has none until `spec` names the extensions.
    """
    path = Path(spec.path).expanduser()
    if SPLIT_FIELD in spec.path:
        return _template_splits(spec)
    if path.is_dir():
        return _saved_dataset_splits(path) if _is_saved_dataset(path) else _folder_splits(path, spec)
    if path.is_file():
        return [path.stem]
    if _looks_like_hub_name(spec.path):
        return _hub_splits(spec)
    raise _not_found(spec)


def _read_split(spec: DataSpec, split: str, limit: int | None) -> _Raw:
    path = Path(spec.path).expanduser()
    if SPLIT_FIELD in spec.path:
        return _read_template(spec, split)
    if path.is_dir():
        return (
            _read_saved_dataset(path, spec, split, limit)
            if _is_saved_dataset(path)
            else _read_folder(path, spec, split)
        )
    if path.is_file():
        return _read_table(path, spec)
    if _looks_like_hub_name(spec.path):
        return _read_hub(spec, split, limit)
    raise _not_found(spec)


def _looks_like_hub_name(path: str) -> bool:
    """`owner/name` or `name`, whose first part is not a local folder: `data/multi30k` with a `data/` folder here is
    a mistyped local path, answered at once instead of after the hub's retries."""
    return bool(HUB_NAME.match(path)) and not ("/" in path and Path(path.split("/", 1)[0]).is_dir())


def _not_found(spec: DataSpec) -> DataError:
    return DataError(
        f"{spec.path} not found: give a folder, a .jsonl/.csv/.tsv file, a template with {{split}}, or a hub name"
    )


def _checked_texts(values: list[Any], side: str, where: Where) -> list[str]:
    texts = []
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{where(side, row)}: the {side} is not text (got {_short(value)})")
        text = value.rstrip("\r\n")
        if not text.strip():
            raise DataError(f"{where(side, row)}: empty {side}; every pair needs a non-empty source and target")
        texts.append(text)
    return texts


# --- line-aligned files and folders -------------------------------------------------------------------------------
def _read_folder(folder: Path, spec: DataSpec, split: str) -> _Raw:
    pair = _line_pair(folder, spec, split)
    if pair is not None:
        return _read_line_files(*pair)
    for suffix in TABLE_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return _read_table(folder / f"{split}{suffix}", spec)
    splits = _folder_splits(folder, spec)
    if splits:
        raise DataError(f"no split '{split}' in {folder} ({_found(splits)})")
    if spec.src_ext is not None:
        raise DataError(f"no split '{split}' in {folder} (no splits found; files: {_describe_files(folder)})")
    raise DataError(
        f"cannot tell which files in {folder} hold split '{split}' (files: {_describe_files(folder)}): "
        "give `src_ext` and `tgt_ext`, e.g. `src_ext` en `tgt_ext` de",
        settings=("src_ext", "tgt_ext"),
    )


def data_file(folder: Path, name: str) -> Path:
    """`folder / name`, or its gzip-compressed `name.gz` where only that exists."""
    plain = folder / name
    packed = folder / f"{name}{GZIP_SUFFIX}"
    return packed if not plain.is_file() and packed.is_file() else plain


def _line_pair(folder: Path, spec: DataSpec, split: str) -> tuple[Path, Path] | None:
    """The split's source and target files (plain or gzip-compressed), or None where the folder has neither."""
    if spec.src_ext is None or spec.tgt_ext is None:
        for src_ext, tgt_ext in AUTO_EXTENSIONS:
            source, target = data_file(folder, f"{split}.{src_ext}"), data_file(folder, f"{split}.{tgt_ext}")
            if source.is_file() and target.is_file():
                return source, target
        return None
    source, target = data_file(folder, f"{split}.{spec.src_ext}"), data_file(folder, f"{split}.{spec.tgt_ext}")
    if source.is_file() != target.is_file():
        missing, present = (target, source) if source.is_file() else (source, target)
        raise DataError(f"{missing} not found, though {present.name} is there: every source file needs a target file")
    return (source, target) if source.is_file() else None


def _folder_splits(folder: Path, spec: DataSpec) -> list[str]:
    suffixes = _suffixes_by_stem(folder)
    pairs = [(spec.src_ext, spec.tgt_ext)] if spec.src_ext is not None else list(AUTO_EXTENSIONS)
    return sorted(
        stem
        for stem, found in suffixes.items()
        if any({f".{a}", f".{b}"} <= found for a, b in pairs) or found & set(TABLE_SUFFIXES)
    )


def _suffixes_by_stem(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.iterdir():
        name = Path(path.name.removesuffix(GZIP_SUFFIX))  # train.en.gz holds train.en
        if path.is_file() and name.suffix and not path.name.startswith((".", "README")):  # notes, not data
            found.setdefault(name.stem, set()).add(name.suffix)
    return found


def _describe_files(folder: Path, most: int = 8) -> str:
    """'train.{de,en}, val.{de,en}': what a folder holds, short enough for a one-line error."""
    suffixes = _suffixes_by_stem(folder)
    parts = [f"{stem}.{{{','.join(sorted(s[1:] for s in found))}}}" for stem, found in sorted(suffixes.items())]
    more = f", and {len(parts) - most} more" if len(parts) > most else ""
    return ", ".join(parts[:most]) + more if parts else "none"


def _found(splits: list[str]) -> str:
    return f"splits found: {', '.join(splits)}" if splits else "no splits found"


def _read_line_files(source: Path, target: Path) -> _Raw:
    sources, targets = read_lines(source), read_lines(target)
    if len(sources) != len(targets):
        raise DataError(
            f"{source} has {len(sources)} lines but {target} has {len(targets)}: the files must be line-aligned"
        )
    paths = {"source": source, "target": target}
    return _Raw(sources, targets, f"{source} + {target}", lambda side, row: f"{paths[side]} line {row + 1}")


def read_lines(path: Path) -> list[str]:
    """The file's lines (UTF-8, final newline and CRs dropped); a DataError for a missing, empty or undecodable file."""
    lines = _read_text(path).split("\n")  # not splitlines(): it also splits on \x1c, \u2028 and friends
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_text(path: Path) -> str:
    """The file (gzip-compressed where its name ends in .gz) as UTF-8 text; a DataError naming the line of the first
    undecodable byte, or an empty or broken file."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror})") from err
    if path.name.endswith(GZIP_SUFFIX):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{path}: not a complete gzip file ({err}); compress it again or give it uncompressed"
            ) from err
    if not raw.strip():
        raise DataError(f"{path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path} line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x}); save it as UTF-8") from err
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first source


# --- tables: JSONL, CSV, TSV --------------------------------------------------------------------------------------
def _read_template(spec: DataSpec, split: str) -> _Raw:
    path = Path(spec.path.replace(SPLIT_FIELD, split)).expanduser()
    if spec.src_ext is not None:
        pair = _line_pair(path.parent, spec, path.name)  # {path}.{src_ext} and {path}.{tgt_ext}
        if pair is not None:
            return _read_line_files(*pair)
    if path.is_file():
        return _read_table(path, spec)
    raise DataError(f"no split '{split}' for {spec.path}: {path} not found ({_found(_template_splits(spec))})")


def _template_splits(spec: DataSpec) -> list[str]:
    template = str(Path(spec.path).expanduser())
    suffixes = [""] if spec.src_ext is None else ["", f".{spec.src_ext}"]  # tables, and line files where exts are given
    splits = set()
    for suffix in suffixes:
        pattern = re.escape(template).replace(re.escape(SPLIT_FIELD), "(.+?)") + re.escape(suffix)
        for match in glob.glob(glob.escape(template).replace(SPLIT_FIELD, "*") + glob.escape(suffix)):
            found = re.fullmatch(pattern, match)
            if found is None or len(set(found.groups())) != 1:  # every {split} must stand for the same name
                continue
            partner = Path(f"{match[: len(match) - len(suffix)]}.{spec.tgt_ext}")
            if not suffix or partner.is_file():
                splits.add(found.group(1))
    return sorted(splits)


def _read_table(path: Path, spec: DataSpec) -> _Raw:
    if path.suffix == ".jsonl":
        return _read_jsonl(path, spec)
    if path.suffix in (".csv", ".tsv"):
        return _read_delimited(path, spec)
    raise DataError(
        f"{path}: cannot tell its format; give a .jsonl, .csv or .tsv file, or a folder of line-aligned files "
        "with `src_ext`/`tgt_ext`",
        settings=("src_ext", "tgt_ext"),
    )


def _read_jsonl(path: Path, spec: DataSpec) -> _Raw:
    sources, targets, line_numbers = [], [], []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue  # blank lines between records carry no pair
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        source, target = _record_pair(record, spec, f"{path} line {number}")
        sources.append(source)
        targets.append(target)
        line_numbers.append(number)
    columns = f"{spec.src_column}→{spec.tgt_column}"
    return _Raw(sources, targets, f"{path} ({columns})", lambda side, row: f"{path} line {line_numbers[row]}")


def _record_pair(record: dict, spec: DataSpec, where: str) -> tuple[Any, Any]:
    if spec.src_column in record and spec.tgt_column in record:
        return record[spec.src_column], record[spec.tgt_column]
    translation = record.get(TRANSLATION_COLUMN)
    if isinstance(translation, dict) and spec.src_ext is not None:
        _check_languages(list(translation), spec, where)
        return translation[spec.src_ext], translation[spec.tgt_ext]
    raise _missing_column(where, list(record), spec)


def _read_delimited(path: Path, spec: DataSpec) -> _Raw:
    text = _read_text(path)
    tsv = path.suffix == ".tsv"
    try:
        # header=None, then take row 0 as the header: with a header, pandas silently turns an extra field on every
        # row into an index column, shifting the columns, where this way any row longer than the first is an error.
        # TSV is read without quoting: text corpora hold unbalanced quote marks that would swallow lines.
        table = pd.read_csv(
            io.StringIO(text),
            sep="\t" if tsv else ",",
            header=None,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        )
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: {_first_line(err)}; every row needs one value per column") from err
    columns = [str(name) for name in table.iloc[0]]
    table = table.iloc[1:]
    if spec.src_column not in columns or spec.tgt_column not in columns:
        raise _missing_column(str(path), columns, spec)
    if table.empty:
        raise DataError(f"{path} is empty: it has a header but no rows")
    sources = table.iloc[:, columns.index(spec.src_column)].tolist()
    targets = table.iloc[:, columns.index(spec.tgt_column)].tolist()
    origin = f"{path} ({spec.src_column}→{spec.tgt_column})"
    return _Raw(sources, targets, origin, lambda side, row: f"{path} row {row + 1}")  # rows after the header


def _missing_column(where: str, columns: list[str], spec: DataSpec) -> DataError:
    missing = spec.src_column if spec.src_column not in columns else spec.tgt_column
    hint = "set `src_column`/`tgt_column`"
    if TRANSLATION_COLUMN in columns:
        hint += f", or `src_ext`/`tgt_ext` to read languages from '{TRANSLATION_COLUMN}'"
    return DataError(
        f"{where}: no column '{missing}' (columns: {', '.join(columns) or 'none'}); {hint}",
        settings=("src_column", "tgt_column", "src_ext", "tgt_ext"),
    )


def _check_languages(languages: list[str], spec: DataSpec, where: str) -> None:
    for language in (spec.src_ext, spec.tgt_ext):
        if language not in languages:
            raise DataError(
                f"{where}: '{TRANSLATION_COLUMN}' has no language '{language}' (languages: {', '.join(languages)}); "
                "set `src_ext`/`tgt_ext`",
                settings=("src_ext", "tgt_ext"),
            )


# --- Hugging Face datasets: saved folders and the hub -------------------------------------------------------------
def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _import_datasets(why: str) -> Any:
    try:
        import datasets  # optional: only data sets in its formats need it
    except ImportError as err:
        raise DataError(f"{why}, which needs Hugging Face `datasets`: pip install 'modformer[datasets]'") from err
    return datasets


def _saved_dataset_splits(folder: Path) -> list[str]:
    index = folder / "dataset_dict.json"
    if not index.is_file():
        return [folder.name]  # a single Dataset: every split name reads it
    try:
        return sorted(json.loads(index.read_text(encoding="utf-8"))["splits"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{index}: not a readable datasets index ({_first_line(err)})") from err


def _read_saved_dataset(folder: Path, spec: DataSpec, split: str, limit: int | None) -> _Raw:
    datasets = _import_datasets(f"{folder} is a saved Hugging Face data set")
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # datasets raises many kinds for a damaged folder; all mean the same to the user
        raise DataError(f"{folder}: cannot load the saved data set ({_first_line(err)})") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"no split '{split}' in {folder} ({_found(sorted(loaded))})")
        return _from_dataset(loaded[split], spec, f"{folder} split {split}", limit)
    return _from_dataset(loaded, spec, str(folder), limit)


def _read_hub(spec: DataSpec, split: str, limit: int | None) -> _Raw:
    datasets = _import_datasets(f"{spec.path} is not a local path, so it would be a hub data set")
    name, _, config = spec.path.partition(":")
    # A slice of the split, where a limit allows, so a quick run does not prepare a whole corpus.
    split_arg = f"{split}[:{limit}]" if limit else split
    try:
        dataset = datasets.load_dataset(name, config or None, split=split_arg)
    except Exception as err:  # network, missing split or name, bad config: datasets raises all kinds
        raise DataError(
            f"{spec.path} is not a local path, and loading split '{split}' from the Hugging Face hub failed: "
            f"{_first_line(err)}"
        ) from err
    return _from_dataset(dataset, spec, f"{spec.path} split {split}", limit)


def _hub_splits(spec: DataSpec) -> list[str]:
    datasets = _import_datasets(f"{spec.path} is not a local path, so it would be a hub data set")
    name, _, config = spec.path.partition(":")
    try:
        return sorted(datasets.get_dataset_split_names(name, config or None))
    except Exception as err:  # as in _read_hub
        raise DataError(
            f"{spec.path} is not a local path, and the Hugging Face hub did not answer: {_first_line(err)}"
        ) from err


def _from_dataset(dataset: Any, spec: DataSpec, origin: str, limit: int | None) -> _Raw:
    if len(dataset) == 0:
        raise DataError(f"{origin} is empty")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    columns = list(dataset.column_names)

    def where(side: str, row: int) -> str:
        return f"{origin} row {row}"  # the data set's own 0-based index

    if spec.src_column in columns and spec.tgt_column in columns:
        sources, targets = list(dataset[spec.src_column]), list(dataset[spec.tgt_column])
        return _Raw(sources, targets, f"{origin} ({spec.src_column}→{spec.tgt_column})", where)
    if TRANSLATION_COLUMN in columns and spec.src_ext is not None:
        pairs = list(dataset[TRANSLATION_COLUMN])
        if pairs:
            _check_languages(list(pairs[0]), spec, f"{origin} row 0")
        sources = [pair.get(spec.src_ext) for pair in pairs]
        targets = [pair.get(spec.tgt_ext) for pair in pairs]
        return _Raw(sources, targets, f"{origin} ({TRANSLATION_COLUMN} {spec.src_ext}→{spec.tgt_ext})", where)
    raise _missing_column(origin, columns, spec)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _short(value: Any, most: int = 40) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."
