"""Source/target pairs for seq2seq models: where they come from, how they become token ids and batches.

`DataSpec` says where the pairs live and how to read them; `load_split` reads one split of them as `Seq2SeqData`;
`Seq2SeqData.tokenize` turns that into `TokenizedData`, which cuts padded, length-bucketed batches and an endless,
resumable training stream.

What `DataSpec.path` may be, tried in this order:

* a path containing ``{split}`` or ``{side}`` — a template: ``data/{split}.jsonl`` (a table per split);
  ``data/{split}`` with src_ext/tgt_ext (line-aligned files ``data/train.en`` and ``data/train.de``);
  ``data/{side}-{split}.txt`` (a line file per side and split, as OpenNMT's ``src-train.txt``/``tgt-train.txt``:
  ``{side}`` stands for src_ext/tgt_ext, without them for src/tgt or source/target, whichever files exist);
  ``data/tasks_{split}.txt`` with line_format (one pair per line);
* a folder saved by ``datasets`` (``save_to_disk``): a DatasetDict with the split, or a single Dataset;
* a folder of line-aligned files ``{split}.{src_ext}`` / ``{split}.{tgt_ext}`` (without extensions given:
  ``{split}.src``/``.tgt`` or ``{split}.source``/``.target``), each plain or gzip-compressed (``train.en.gz``), else a
  table ``{split}.jsonl``, ``.csv`` or ``.tsv``; with line_format, ``{split}.txt``;
* a single ``.jsonl``, ``.csv`` or ``.tsv`` file (with line_format, any text file): it has no splits, so every split
  name reads the whole file (``available_splits`` names it by its stem). The same holds for a folder holding a single
  saved Dataset;
* anything else that does not exist locally: a Hugging Face hub name, ``name`` or ``name:config`` (``wmt14:de-en``).

How values become texts: `line_format` splits each line into a pair (``'IN: {source} OUT: {target}'``); `list_rule`
turns a list value (JSONL, a CSV cell holding a JSON list, a data set's sequence) into text, ``join`` or ``first``,
per side as ``SOURCE,TARGET`` where a target may also be ``references`` (each item a reference: training uses the
first, scoring all of them); `unescape_entities` turns entities left by tokenizers (``&apos;``, ``&quot;``) back
into characters. A bad pair (empty, not text, a line that does not parse) stops the loading (`on_bad_line` ``error``) or
is left out, counted and warned about (``skip``).

Every problem with the data is a `DataError` whose message is one line naming the file and, where there is one, the
line, so the CLI can print it as it is; where a folder's files fit a layout that settings can read, the error says
which settings. What a user should know but need not stop for (pairs left out, texts cut by tokenization, a held-out
split that is the training data) is logged as a warning (logger ``modformer.data``, the settings it concerns in
``extra["settings"]``) and kept in the data's `warnings`, which artifacts record through `data_report`.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import glob
import gzip
import html
import io
import itertools
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
LINE_FORMAT_SUFFIX = ".txt"  # a folder read with line_format holds {split}.txt
AUTO_EXTENSIONS = (("src", "tgt"), ("source", "target"))  # tried in order when src_ext/tgt_ext are not given
KNOWN_SIDES = (*AUTO_EXTENSIONS, ("input", "output"), ("in", "out"))  # which of two side names is the source
SPLIT_FIELD = "{split}"
SIDE_FIELD = "{side}"
SPLIT_WORD = re.compile(r"(train|training|val|valid|validation|dev|test|eval|tune)\d*", re.IGNORECASE)
GZIP_SUFFIX = ".gz"  # line files may come compressed: train.en.gz
TRANSLATION_COLUMN = "translation"  # the WMT layout: one column of {language: text} dicts
LIST_RULES = ("join", "first")  # what a list value becomes: its items joined by spaces, or its first item
REFERENCES = "references"  # a target list rule: every item is a reference
BAD_LINE_RULES = ("error", "skip")
SHOWN_BAD_PAIRS = 3  # bad pairs named in a warning and a record; the rest are counted
LABEL_PAD_ID = -100  # ignored by the cross-entropy loss of Hugging Face seq2seq models
BUCKET_BATCHES = 50  # batches per length-sorted chunk: enough to group similar lengths, few enough to stay random
TOKENIZE_CHUNK = 4096  # texts per tokenizer call, so a large corpus never holds one huge BatchEncoding
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")
UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, as surrogateescape keeps them
SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no character, cannot be encoded

Where = Callable[[str, int], str]  # (side, row) -> "data/train.de line 17": where an error points


# --- the spec -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineFormat:
    """One pair per line: the text around and between `{source}` and `{target}` in a `line_format`."""

    before: str  # the line starts with it ("IN: ")
    between: str  # it separates the two texts (" OUT: ")
    after: str  # the line ends with it (usually "")
    source_first: bool

    @classmethod
    def parse(cls, text: str) -> LineFormat:
        """`'IN: {source} OUT: {target}'`; a written `\\t` stands for a tab (`'{source}\\t{target}'`)."""
        pattern = text.replace("\\t", "\t")
        counts = {name: pattern.count("{" + name + "}") for name in ("source", "target")}
        if counts != {"source": 1, "target": 1}:
            raise DataError(
                f"`line_format` '{text}' must hold {{source}} and {{target}} once each, "
                "e.g. 'IN: {source} OUT: {target}' or '{source}\\t{target}'",
                settings="line_format",
            )
        first, second = sorted(("source", "target"), key=lambda name: pattern.index("{" + name + "}"))
        before, rest = pattern.split("{" + first + "}")
        between, after = rest.split("{" + second + "}")
        if not between:
            raise DataError(
                f"`line_format` '{text}': nothing separates {{{first}}} from {{{second}}}, so a line cannot be split",
                settings="line_format",
            )
        return cls(before, between, after, source_first=first == "source")

    def split(self, line: str) -> tuple[str, str] | str:
        """(source, target) of `line`, or why it does not fit."""
        if not line.startswith(self.before):
            return f"does not start with {self.before!r}"
        if not line.endswith(self.after) or len(line) < len(self.before) + len(self.after):
            return f"does not end with {self.after!r}"
        core = line[len(self.before) : len(line) - len(self.after)]
        found = core.count(self.between)
        if found != 1:
            return f"{self.between!r} " + ("not found" if not found else f"found {found} times: where does it split?")
        first, second = core.split(self.between)
        return (first, second) if self.source_first else (second, first)


@dataclass(frozen=True)
class DataSpec:
    """Where source/target pairs come from and how to read them. See the module docstring for what `path` may be."""

    path: str = field(metadata={"help": "Folder, file, template with {split} and/or {side}, or Hugging Face hub name."})
    src_ext: str | None = field(
        default=None,
        metadata={
            "help": "Source side's name: extension of line files (train.en), the {side} of a template (src), the "
            "source language of `translation` columns."
        },
    )
    tgt_ext: str | None = field(
        default=None,
        metadata={"help": "Target side's name, as src_ext (de, tgt)."},
    )
    src_column: str = field(default="source", metadata={"help": "Source column of JSONL/CSV/TSV files and data sets."})
    tgt_column: str = field(default="target", metadata={"help": "Target column of JSONL/CSV/TSV files and data sets."})
    prefix: str = field(
        default="", metadata={"help": "Task prefix prepended to every source, e.g. 'translate English to German: '."}
    )
    line_format: str | None = field(
        default=None,
        metadata={
            "help": "One pair per line: where the texts sit, e.g. 'IN: {source} OUT: {target}', '{source}\\t{target}' "
            "(\\t: a tab) or '{source} ||| {target}'."
        },
    )
    list_rule: str | None = field(
        default=None,
        metadata={
            "help": "What a list value becomes: join (items joined by spaces), first (its first item), or one rule "
            "per side, SOURCE,TARGET, where the target may be references (each item a reference: training uses the "
            "first, scores use all), e.g. join,references."
        },
    )
    on_bad_line: str = field(
        default="error",
        metadata={"help": "error: stop at the first bad pair (empty, not text, unparsable); skip: leave it out, warn."},
    )
    unescape_entities: bool = field(
        default=False,
        metadata={"help": "Turn entities left by tokenizers (&apos; &quot; &amp; &#124; ...) back into characters."},
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
        if self.line_format is not None:
            LineFormat.parse(self.line_format)
            if SIDE_FIELD in self.path:
                raise DataError(
                    "a template with {side} names one file per side, `line_format` one file holding both: give one",
                    settings="line_format",
                )
        _list_rules(self.list_rule)  # raises for an unknown rule
        if self.on_bad_line not in BAD_LINE_RULES:
            raise DataError(
                f"unknown `on_bad_line` {self.on_bad_line!r}; choose {' or '.join(BAD_LINE_RULES)}",
                settings="on_bad_line",
            )

    @property
    def list_rules(self) -> tuple[str | None, str | None]:
        """(source rule, target rule) of `list_rule`: 'join' is ('join', 'join'); None leaves lists an error."""
        return _list_rules(self.list_rule)

    @property
    def pair_format(self) -> LineFormat | None:
        return None if self.line_format is None else LineFormat.parse(self.line_format)


def _list_rules(text: str | None) -> tuple[str | None, str | None]:
    if text is None:
        return None, None
    parts = [part.strip() for part in text.split(",")]
    rules = (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)
    if len(rules) != 2 or rules[0] not in LIST_RULES or rules[1] not in (*LIST_RULES, REFERENCES):
        raise DataError(
            f"unknown `list_rule` {text!r}: give join, first, or SOURCE,TARGET rules such as join,{REFERENCES} "
            f"(a target may be {REFERENCES}: each item a reference)",
            settings="list_rule",
        )
    return rules[0], rules[1]


def default_data_spec() -> DataSpec:
    """The Multi30k En→De sample bundled with modformer: 3,000 training pairs, 300 for val and for test."""
    return DataSpec(path=str(SAMPLE_DIR), src_ext="en", tgt_ext="de")


def full_data_spec() -> DataSpec:
    """The whole Multi30k En→De set bundled with modformer (gzip-compressed): splits train (29,000 pairs), val
    (1,014) and test_2016_flickr (1,000)."""
    return DataSpec(path=str(FULL_DIR), src_ext="en", tgt_ext="de")


def warn(message: str, *settings: str) -> str:
    """Log `message` as a warning for the user (the CLI prints it, naming `settings` as flags); return it, so that
    the caller can record the same words."""
    logger.warning(message, extra={"settings": settings})
    return message


# --- pairs of texts -----------------------------------------------------------------------------------------------
@dataclass
class Seq2SeqData:
    """Aligned source and target texts of one split, and what loading them left out."""

    sources: list[str]
    targets: list[str]
    origin: str = ""  # human-readable: which files, columns and split the pairs came from
    references: list[list[str]] | None = None  # every reference of each pair, where targets are lists of them
    skipped: int = 0  # bad pairs left out (on_bad_line skip)
    skipped_at: list[str] = field(default_factory=list)  # where the first of them were, and why
    warnings: list[str] = field(default_factory=list)  # what the user was warned of while loading

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.targets):
            raise DataError(f"{self.origin}: {len(self.sources)} sources but {len(self.targets)} targets")
        if self.references is not None and len(self.references) != len(self.targets):
            raise DataError(f"{self.origin}: {len(self.targets)} targets but {len(self.references)} reference lists")

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, n: int | None) -> Seq2SeqData:
        """The first `n` pairs (all of them when `n` is None or not smaller than the data)."""
        _check_limit(n)
        if n is None or n >= len(self):
            return self
        references = None if self.references is None else self.references[:n]
        return dataclasses.replace(
            self,
            sources=self.sources[:n],
            targets=self.targets[:n],
            origin=f"{self.origin}, first {n}",
            references=references,
        )

    def reference_lists(self) -> list[list[str]]:
        """Every reference of each pair: the target alone, or all references where the data has several."""
        return self.references if self.references is not None else [[target] for target in self.targets]

    def tokenize(self, tokenizer: Any, max_source_len: int = 128, max_target_len: int = 128) -> TokenizedData:
        """Token ids with the tokenizer's special tokens (T5 appends </s>), truncated to the given lengths; a warning
        with the share of pairs cut where any was."""
        for name, value in (("max_source_len", max_source_len), ("max_target_len", max_target_len)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1 (got {value})", settings=name)
        if tokenizer.pad_token_id is None:
            raise DataError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos token) first")
        source_ids, source_cut = _token_ids(tokenizer, self.sources, max_source_len, target=False)
        target_ids, target_cut = _token_ids(tokenizer, self.targets, max_target_len, target=True)
        data = TokenizedData(
            source_ids=source_ids,
            target_ids=target_ids,
            pad_id=int(tokenizer.pad_token_id),
            max_source_len=max_source_len,
            max_target_len=max_target_len,
            cut_sources=sum(source_cut),
            cut_targets=sum(target_cut),
            cut_pairs=sum(s or t for s, t in zip(source_cut, target_cut, strict=True)),
        )
        if data.cut_pairs:
            sides = [
                f"{count:,} {side}s longer than `{name}` {limit} tokens"
                for count, side, name, limit in (
                    (data.cut_sources, "source", "max_source_len", max_source_len),
                    (data.cut_targets, "target", "max_target_len", max_target_len),
                )
                if count
            ]
            share = f"{data.cut_pairs:,} of {len(self):,} pairs ({_percent(data.cut_pairs, len(self))})"
            message = f"{self.origin}: {share} were cut to fit: {' and '.join(sides)}"
            data.warnings.append(warn(message, "max_source_len", "max_target_len"))
        return data


def _token_ids(tokenizer: Any, texts: list[str], max_len: int, *, target: bool) -> tuple[list[list[int]], list[bool]]:
    """Token ids of `texts`, each at most `max_len` long (special tokens kept), and whether each was cut."""
    ids: list[list[int]] = []
    cut: list[bool] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start : start + TOKENIZE_CHUNK]
        # Whole first, to know which are too long (verbose=False: no warning about the model's length); only those
        # are encoded again with truncation, which keeps the special tokens (T5's </s>) at the end.
        rows = [list(row) for row in _encode(tokenizer, chunk, target=target, verbose=False)]
        long = [i for i, row in enumerate(rows) if len(row) > max_len]
        if long:
            shorter = _encode(tokenizer, [chunk[i] for i in long], target=target, truncation=True, max_length=max_len)
            for i, row in zip(long, shorter, strict=True):
                rows[i] = list(row)
        ids.extend(rows)
        was_cut = set(long)
        cut.extend(i in was_cut for i in range(len(rows)))
    return ids, cut


def _encode(tokenizer: Any, texts: list[str], *, target: bool, **settings: Any) -> list[list[int]]:
    # text_target= lets tokenizers with separate source/target settings (e.g. language codes) use the target ones.
    encoded = tokenizer(text_target=texts, **settings) if target else tokenizer(texts, **settings)
    return encoded["input_ids"]


def token_lengths(tokenizer: Any, texts: list[str], *, target: bool = True) -> list[int]:
    """How many tokens each text has, special tokens included, uncut."""
    lengths: list[int] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        lengths += [
            len(row) for row in _encode(tokenizer, texts[start : start + TOKENIZE_CHUNK], target=target, verbose=False)
        ]
    return lengths


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / max(whole, 1):.1f} %"


def same_data_warning(train: Seq2SeqData, heldout: Seq2SeqData, *, val_split: str) -> str | None:
    """A warning (logged, and returned for the record) when every held-out pair is also a training pair: a single
    file serving every split, or a copy. None when the held-out split holds pairs of its own."""
    wanted = set(zip(heldout.sources, heldout.targets, strict=True))  # the few held-out pairs, not the corpus
    found = set()
    for pair in zip(train.sources, train.targets, strict=True):
        if pair in wanted:
            found.add(pair)
            if len(found) == len(wanted):
                break
    if not wanted or len(found) < len(wanted):
        return None
    return warn(
        f"the held-out pairs ({heldout.origin}) are all training pairs ({train.origin}): the held-out loss shows "
        f"how well they were learnt, not how the model does on new data; give a held-out split of its own "
        f"(`val_split` {val_split})",
        "val_split",
    )


def data_record(pairs: Seq2SeqData, tokenized: TokenizedData | None = None) -> dict:
    """What an artifact records about the pairs it was made from: origin, count, pairs left out and pairs cut."""
    record: dict[str, Any] = {
        "origin": pairs.origin,
        "pairs": len(pairs),
        "skipped": pairs.skipped,
        "skipped_at": list(pairs.skipped_at),
    }
    if pairs.references is not None:
        record["most_references"] = max((len(refs) for refs in pairs.references), default=0)
    if tokenized is not None:
        record.update(
            max_source_len=tokenized.max_source_len,
            max_target_len=tokenized.max_target_len,
            cut_pairs=tokenized.cut_pairs,
            cut_sources=tokenized.cut_sources,
            cut_targets=tokenized.cut_targets,
        )
    return record


def data_report(
    splits: dict[str, tuple[Seq2SeqData, TokenizedData | None]], warnings: Sequence[str | None] = ()
) -> dict:
    """`{"<name>": data_record, ..., "warnings": [...]}`: each split's record and every warning the user saw about
    the data (the loading's and tokenization's, then `warnings`; None entries are dropped)."""
    report: dict[str, Any] = {name: data_record(pairs, tokenized) for name, (pairs, tokenized) in splits.items()}
    seen = [
        w for pairs, tokenized in splits.values() for w in (*pairs.warnings, *(tokenized.warnings if tokenized else ()))
    ]
    report["warnings"] = [*seen, *(w for w in warnings if w)]
    return report


# --- token ids and batches ----------------------------------------------------------------------------------------
@dataclass
class TokenizedData:
    """Token ids of aligned pairs, cut into padded batches on demand; how many texts the length limits cut."""

    source_ids: list[list[int]]
    target_ids: list[list[int]]
    pad_id: int
    max_source_len: int | None = None  # the limits the ids were cut to (None: not recorded)
    max_target_len: int | None = None
    cut_sources: int = 0  # sources longer than max_source_len, cut
    cut_targets: int = 0
    cut_pairs: int = 0  # pairs with either side cut
    warnings: list[str] = field(default_factory=list)  # what the user was warned of while tokenizing

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
@dataclass(frozen=True)
class _Bad:
    """What a reader keeps in place of a value its line did not give: why, and whether leaving the pair out helps."""

    reason: str
    settings: tuple[str, ...] = ()
    skippable: bool = True


@dataclass
class _Raw:
    """Pairs as read, before the checks: values may still be empty, lists, not text, or `_Bad`."""

    sources: list[Any]
    targets: list[Any]
    origin: str
    where: Where


class _BadPair(Exception):
    """A row that gives no pair: which side, why, the settings that could change it, and whether to skip it helps."""

    def __init__(self, side: str, reason: str, settings: tuple[str, ...] = (), *, skippable: bool = True) -> None:
        super().__init__(reason)
        self.side, self.reason, self.settings, self.skippable = side, reason, settings, skippable


def load_split(spec: DataSpec, split: str, limit: int | None = None) -> Seq2SeqData:
    """Read split `split` of `spec` (its first `limit` good pairs where given), checked and with `spec.prefix` applied.

    A bad pair is a one-line DataError, or with `spec.on_bad_line` 'skip' left out, counted and warned about.
    """
    _check_limit(limit)
    raw = _read_split(spec, split, limit)
    sources: list[str] = []
    references: list[list[str]] = []
    skipped_at: list[str] = []
    skipped = rows = 0
    first_bad: _BadPair | None = None
    named: set[str] = set()  # settings the reasons shown name
    rules = spec.list_rules
    for row in range(len(raw.sources)):
        if limit is not None and len(sources) >= limit:
            break
        rows += 1
        try:
            source, refs = _pair(raw.sources[row], raw.targets[row], rules, spec)
        except _BadPair as bad:
            where = raw.where(bad.side, row)
            if spec.on_bad_line == "error" or not bad.skippable:
                raise _bad_pair_error(where, bad) from None
            skipped += 1
            first_bad = first_bad or bad
            if len(skipped_at) < SHOWN_BAD_PAIRS:
                skipped_at.append(f"{where}: {bad.reason}")
                named.update(bad.settings)
            continue
        sources.append(spec.prefix + source)
        references.append(refs)
    if first_bad is not None and not sources:
        raise DataError(
            f"{raw.origin}: all {skipped:,} pairs read are bad (the first: {skipped_at[0]})",
            settings=first_bad.settings,
        )
    origin = raw.origin if rows >= len(raw.sources) else f"{raw.origin}, first {limit}"
    data = Seq2SeqData(
        sources,
        [refs[0] for refs in references],
        origin,
        references=references if rules[1] == REFERENCES else None,
        skipped=skipped,
        skipped_at=skipped_at,
    )
    if skipped:
        more = f"; and {skipped - len(skipped_at):,} more" if skipped > len(skipped_at) else ""
        data.warnings.append(
            warn(
                f"{origin}: left out {skipped:,} bad {'pair' if skipped == 1 else 'pairs'} of {rows:,} "
                f"({_percent(skipped, rows)}): {'; '.join(skipped_at)}{more}",
                "on_bad_line",
                *sorted(named),
            )
        )
    logger.info("loaded %d pairs from %s", len(data), data.origin)
    return data


def _bad_pair_error(where: str, bad: _BadPair) -> DataError:
    if not bad.skippable:
        return DataError(f"{where}: {bad.reason}", settings=bad.settings)
    return DataError(
        f"{where}: {bad.reason}; `on_bad_line` skip leaves such pairs out", settings=(*bad.settings, "on_bad_line")
    )


def _pair(source: Any, target: Any, rules: tuple[str | None, str | None], spec: DataSpec) -> tuple[str, list[str]]:
    """The source text and the target's references (one, unless the target rule is `references`) of one row."""
    return _texts(source, "source", rules[0], spec)[0], _texts(target, "target", rules[1], spec)


def _texts(value: Any, side: str, rule: str | None, spec: DataSpec) -> list[str]:
    """The text `value` gives for `side`, or with list rule `references` every reference it holds; `_BadPair` where
    it gives none."""
    if isinstance(value, _Bad):
        raise _BadPair(side, value.reason, value.settings, skippable=value.skippable)
    if isinstance(value, list | tuple):
        if rule is None:
            more = f", or join,{REFERENCES} (each item a reference)" if side == "target" else ""
            raise _BadPair(
                side,
                f"the {side} is a list ({_short(value)}); give `list_rule` join (its items joined by spaces) or "
                f"first{more}",
                ("list_rule",),
                skippable=False,
            )
        if not all(isinstance(item, str) for item in value):
            raise _BadPair(side, f"the {side} is not a list of texts (got {_short(value)})")
        if rule == "join":
            texts = [" ".join(item.strip() for item in value if item.strip())]
        else:
            texts = list(value[:1]) if rule == "first" else list(value)
    elif isinstance(value, str):
        texts = [value]
    else:
        raise _BadPair(side, f"the {side} is not text (got {_short(value)})")
    if spec.unescape_entities:
        texts = [html.unescape(text) for text in texts]
    texts = [text.rstrip("\r\n") for text in texts if text.strip()]
    if not texts:
        raise _BadPair(side, f"empty {side}; every pair needs a non-empty source and target")
    for text in texts:
        lone = SURROGATE.search(text)
        if lone:  # a JSON escape such as \ud800 without its pair: no text, and no file can hold it as UTF-8
            raise _BadPair(side, f"the {side} holds a lone surrogate {ascii(lone.group())}, which is not text")
    return texts


def available_splits(spec: DataSpec) -> list[str]:
    """Names of the splits `spec` holds, sorted.

    A single file or saved Dataset has one, named after it (though any name reads it). A folder of line-aligned files
    with extensions other than src/tgt or source/target has none until `spec` names the extensions.
    """
    path = Path(spec.path).expanduser()
    if SPLIT_FIELD in spec.path or SIDE_FIELD in spec.path:
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
    if SPLIT_FIELD in spec.path or SIDE_FIELD in spec.path:
        return _read_template(spec, split)
    if path.is_dir():
        return (
            _read_saved_dataset(path, spec, split, limit)
            if _is_saved_dataset(path)
            else _read_folder(path, spec, split)
        )
    if path.is_file():
        return _read_file(path, spec)
    if _looks_like_hub_name(spec.path):
        return _read_hub(spec, split, limit)
    raise _not_found(spec)


def _read_file(path: Path, spec: DataSpec) -> _Raw:
    return _read_line_pairs(path, spec) if spec.line_format is not None else _read_table(path, spec)


def _looks_like_hub_name(path: str) -> bool:
    """`owner/name` or `name`, whose first part is not a local folder: `data/multi30k` with a `data/` folder here is
    a mistyped local path, answered at once instead of after the hub's retries."""
    return bool(HUB_NAME.match(path)) and not ("/" in path and Path(path.split("/", 1)[0]).is_dir())


def _not_found(spec: DataSpec) -> DataError:
    return DataError(
        f"{spec.path} not found: give a folder, a .jsonl/.csv/.tsv file, a template with {{split}}, or a hub name"
    )


# --- line-aligned files and folders -------------------------------------------------------------------------------
def _read_folder(folder: Path, spec: DataSpec, split: str) -> _Raw:
    if spec.line_format is not None:
        path = data_file(folder, f"{split}{LINE_FORMAT_SUFFIX}")
        if path.is_file():
            return _read_line_pairs(path, spec)
    else:
        pair = _line_pair(folder, spec, split)
        if pair is not None:
            return _read_line_files(*pair, spec)
        for suffix in TABLE_SUFFIXES:
            if (folder / f"{split}{suffix}").is_file():
                return _read_table(folder / f"{split}{suffix}", spec)
    splits = _folder_splits(folder, spec)
    if splits:
        raise DataError(f"no split '{split}' in {folder} ({_found(splits)})")
    hint, settings = _recipe_hint(folder, spec)
    if spec.src_ext is not None or spec.line_format is not None:
        raise DataError(
            f"no split '{split}' in {folder} (no splits found; files: {_describe_files(folder)})"
            + (f"; {hint}" if hint else ""),
            settings=settings,
        )
    raise DataError(
        f"cannot tell which files in {folder} hold split '{split}' (files: {_describe_files(folder)}): "
        + (hint or "give `src_ext` and `tgt_ext`, e.g. `src_ext` en `tgt_ext` de"),
        settings=settings or ("src_ext", "tgt_ext"),
    )


def data_file(folder: Path, name: str) -> Path:
    """`folder / name`, or its gzip-compressed `name.gz` where only that exists."""
    plain = folder / name
    packed = folder / f"{name}{GZIP_SUFFIX}"
    return packed if not plain.is_file() and packed.is_file() else plain


def _line_pair(folder: Path, spec: DataSpec, split: str) -> tuple[Path, Path] | None:
    """The split's source and target files (plain or gzip-compressed), or None where the folder has neither."""
    return _side_files(spec, str(folder / f"{split}.{SIDE_FIELD}"))


def _side_files(spec: DataSpec, template: str) -> tuple[Path, Path] | None:
    """The source and target files `template` names with {side} as spec's sides (without them: src/tgt, then
    source/target), plain or gzip-compressed; None where neither exists."""
    sides = [(spec.src_ext, spec.tgt_ext)] if spec.src_ext is not None else list(AUTO_EXTENSIONS)
    for src, tgt in sides:
        source, target = (_data_path(template.replace(SIDE_FIELD, side)) for side in (src, tgt))
        if source.is_file() and target.is_file():
            return source, target
        if spec.src_ext is not None and source.is_file() != target.is_file():
            missing, present = (target, source) if source.is_file() else (source, target)
            raise DataError(
                f"{missing} not found, though {present.name} is there: every source file needs a target file"
            )
    return None


def _data_path(text: str) -> Path:
    path = Path(text).expanduser()
    return data_file(path.parent, path.name)


def _folder_splits(folder: Path, spec: DataSpec) -> list[str]:
    suffixes = _suffixes_by_stem(folder)
    if spec.line_format is not None:
        return sorted(stem for stem, found in suffixes.items() if LINE_FORMAT_SUFFIX in found)
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


def _read_line_files(source: Path, target: Path, spec: DataSpec) -> _Raw:
    lenient = spec.on_bad_line == "skip"
    sources, targets = _lines(source, lenient), _lines(target, lenient)
    if len(sources) != len(targets):
        raise DataError(
            f"{source} has {len(sources)} lines but {target} has {len(targets)}: the files must be line-aligned"
        )
    paths = {"source": source, "target": target}
    return _Raw(sources, targets, f"{source} + {target}", lambda side, row: f"{paths[side]} line {row + 1}")


def _read_line_pairs(path: Path, spec: DataSpec) -> _Raw:
    """One pair per line, as `spec.line_format` places it; blank lines carry none."""
    layout = spec.pair_format
    assert layout is not None  # only called with a line_format
    sources: list[Any] = []
    targets: list[Any] = []
    numbers: list[int] = []
    for number, line in enumerate(_lines(path, spec.on_bad_line == "skip"), start=1):
        if isinstance(line, str) and not line.strip():
            continue
        pair = line if isinstance(line, _Bad) else layout.split(line)
        if isinstance(pair, str):
            pair = _Bad(f"the line does not fit `line_format` '{spec.line_format}': {pair}", ("line_format",))
        source, target = (pair, pair) if isinstance(pair, _Bad) else pair
        sources.append(source)
        targets.append(target)
        numbers.append(number)
    origin = f"{path} (lines '{spec.line_format}')"
    return _Raw(sources, targets, origin, lambda side, row: f"{path} line {numbers[row]}")


def _lines(path: Path, lenient: bool) -> list[Any]:
    """The file's lines; `lenient`: a line that is not UTF-8 becomes a `_Bad` instead of stopping the reading."""
    return [
        _Bad("not valid UTF-8; save the file as UTF-8") if lenient and UNDECODABLE.search(line) else line
        for line in read_lines(path, lenient=lenient)
    ]


def read_lines(path: Path, *, lenient: bool = False) -> list[str]:
    """The file's lines (UTF-8, final newline and CRs dropped); a DataError for a missing, empty or undecodable file
    (`lenient`: undecodable bytes are kept as surrogates, `UNDECODABLE` finds them)."""
    lines = _read_text(path, lenient=lenient).split("\n")  # not splitlines(): it also splits on \x1c, \u2028, ...
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_text(path: Path, *, lenient: bool = False) -> str:
    """The file (gzip-compressed where its name ends in .gz) as UTF-8 text; a DataError naming the line of the first
    undecodable byte (unless `lenient`), or an empty or broken file."""
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
        if lenient:
            text = raw.decode("utf-8", errors="surrogateescape")
        else:
            line = raw.count(b"\n", 0, err.start) + 1
            raise DataError(
                f"{path} line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x}); save it as UTF-8"
            ) from err
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first source


# --- templates ----------------------------------------------------------------------------------------------------
def _read_template(spec: DataSpec, split: str) -> _Raw:
    text = spec.path.replace(SPLIT_FIELD, split)
    if SIDE_FIELD in text:
        pair = _side_files(spec, text)
        if pair is not None:
            return _read_line_files(*pair, spec)
        src, tgt = (spec.src_ext, spec.tgt_ext) if spec.src_ext is not None else AUTO_EXTENSIONS[0]
        named = " and ".join(str(Path(text.replace(SIDE_FIELD, side)).expanduser()) for side in (src, tgt))
        raise DataError(f"no split '{split}' for {spec.path}: {named} not found ({_found(_template_splits(spec))})")
    path = Path(text).expanduser()
    if spec.src_ext is not None and spec.line_format is None:
        pair = _line_pair(path.parent, spec, path.name)  # {path}.{src_ext} and {path}.{tgt_ext}
        if pair is not None:
            return _read_line_files(*pair, spec)
    if path.is_file():
        return _read_file(path, spec)
    raise DataError(f"no split '{split}' for {spec.path}: {path} not found ({_found(_template_splits(spec))})")


def _template_splits(spec: DataSpec) -> list[str]:
    template = str(Path(spec.path).expanduser())
    if SIDE_FIELD in template:
        return _side_template_splits(spec, template)
    splits = {split for split, _ in _matches(template)}  # tables, or files of one pair per line
    if spec.src_ext is not None:  # line files {template}.{src_ext} with a partner {template}.{tgt_ext}
        for split, _ in _matches(f"{template}.{spec.src_ext}", packed=True):
            if _data_path(f"{template.replace(SPLIT_FIELD, split)}.{spec.tgt_ext}").is_file():
                splits.add(split)
    return sorted(splits)


def _side_template_splits(spec: DataSpec, template: str) -> list[str]:
    sides = [(spec.src_ext, spec.tgt_ext)] if spec.src_ext is not None else list(AUTO_EXTENSIONS)
    for src, tgt in sides:
        source, target = template.replace(SIDE_FIELD, src), template.replace(SIDE_FIELD, tgt)
        if SPLIT_FIELD not in template:  # one pair of files serves every split
            if _data_path(source).is_file() and _data_path(target).is_file():
                return [Path(source).stem]
            continue
        found = {
            split
            for split, _ in _matches(source, packed=True)
            if _data_path(target.replace(SPLIT_FIELD, split)).is_file()
        }
        if found:
            return sorted(found)
    return []


def _matches(template: str, *, packed: bool = False) -> Iterator[tuple[str, str]]:
    """(split, path) of every file `template` names, where each {split} in it stands for the same name;
    `packed`: gzip-compressed files too."""
    pattern = re.escape(template).replace(re.escape(SPLIT_FIELD), "(.+?)")
    pattern += f"(?:{re.escape(GZIP_SUFFIX)})?" if packed else ""
    for match in glob.glob(glob.escape(template).replace(SPLIT_FIELD, "*") + ("*" if packed else "")):
        found = re.fullmatch(pattern, match)
        if found is not None and len(set(found.groups())) == 1:
            yield found.group(1), match


# --- what the files fit, for errors -------------------------------------------------------------------------------
NOT_SIDES = {"txt", "json", "jsonl", "csv", "tsv", "md", "gz", "zip", "xml", "log", "py", "sh", "yaml", "yml"}


def _recipe_hint(folder: Path, spec: DataSpec) -> tuple[str, tuple[str, ...]]:
    """What to give so the files in `folder` are read, when no layout found them by itself: ('give ...', the settings
    it names), or ('', ())."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "README")))
    sides = _side_layout(names, spec)
    if sides is not None:
        template, src, tgt, known = sides
        order = "" if known else f" (the other way round if the {tgt} files hold the sources)"
        if template == f"{SPLIT_FIELD}.{SIDE_FIELD}":  # the folder layout: only the names are missing
            return f"give `src_ext` {src} `tgt_ext` {tgt}{order}", ("src_ext", "tgt_ext")
        return (
            f"they look like a file per side and split: give `path` '{folder / template}' `src_ext` {src} "
            f"`tgt_ext` {tgt}{order}",
            ("path", "src_ext", "tgt_ext"),
        )
    split_layout = _split_layout(names)
    if split_layout is None:
        return "", ()
    template, example = split_layout
    if Path(example).suffix in TABLE_SUFFIXES:
        return f"give `path` '{folder / template}'", ("path",)
    layout = guess_line_format(folder / example)
    if layout is None:
        return "", ()
    if template == f"{SPLIT_FIELD}{LINE_FORMAT_SUFFIX}":
        return f"their lines look like pairs: give `line_format` '{layout}'", ("line_format",)
    return (
        f"their lines look like pairs: give `path` '{folder / template}' `line_format` '{layout}'",
        ("path", "line_format"),
    )


def _name_parts(name: str) -> list[str]:
    """'src-train.txt' -> ['src', '-', 'train', '.', 'txt']: words at even positions, separators between."""
    return re.split(r"([-_.])", name)


def _side_layout(names: list[str], spec: DataSpec) -> tuple[str, str, str, bool] | None:
    """(template, source side, target side, whether their order is known) where two files' names differ in one word
    that is no split name and no file type, the side: 'src-train.txt' and 'tgt-train.txt' give '{side}-{split}.txt'
    (a .gz ending aside: the readers find train.en.gz for train.en)."""
    for a, b in itertools.combinations(names, 2):
        pa, pb = _name_parts(a.removesuffix(GZIP_SUFFIX)), _name_parts(b.removesuffix(GZIP_SUFFIX))
        differ = [i for i, (x, y) in enumerate(zip(pa, pb, strict=False)) if x != y]
        if len(pa) != len(pb) or len(differ) != 1 or differ[0] % 2:
            continue
        i = differ[0]
        words = (pa[i], pb[i])
        if any(SPLIT_WORD.fullmatch(w) or w.lower() in NOT_SIDES or not w for w in words):
            continue
        parts = list(pa)
        parts[i] = SIDE_FIELD
        split_at = next((j for j in range(0, len(parts), 2) if j != i and SPLIT_WORD.fullmatch(parts[j])), None)
        if split_at is not None:
            parts[split_at] = SPLIT_FIELD
        return ("".join(parts), *_order_sides(*words, spec))
    return None


def _order_sides(a: str, b: str, spec: DataSpec) -> tuple[str, str, bool]:
    """(source side, target side, whether the order is known) of two side names."""
    if spec.src_ext is not None and {a, b} == {spec.src_ext, spec.tgt_ext}:
        return spec.src_ext, str(spec.tgt_ext), True
    for src, tgt in KNOWN_SIDES:
        if {a.lower(), b.lower()} == {src, tgt}:
            return (a, b, True) if a.lower() == src else (b, a, True)
    first, second = sorted((a, b))
    return first, second, False


def _split_layout(names: list[str]) -> tuple[str, str] | None:
    """(template, a file it names) for the first file whose name holds a split name: 'tasks_train.txt' gives
    'tasks_{split}.txt'."""
    for name in names:
        parts = _name_parts(name.removesuffix(GZIP_SUFFIX))
        for j in range(0, len(parts), 2):
            if SPLIT_WORD.fullmatch(parts[j]):
                parts[j] = SPLIT_FIELD
                return "".join(parts), name
    return None


def guess_line_format(path: Path) -> str | None:
    """The `line_format` the first line of `path` seems to follow: 'IN: {source} OUT: {target}' for labelled
    halves, '{source}\\t{target}' for a tab, '{source} ||| {target}'; None for none of these."""
    try:
        with gzip.open(path) if path.name.endswith(GZIP_SUFFIX) else path.open("rb") as file:
            head = file.read(1 << 16).decode("utf-8", errors="replace")
    except (OSError, EOFError, zlib.error):
        return None
    line = next((line for line in head.split("\n") if line.strip()), "")
    labelled = re.match(r"([A-Za-z_]+: ?)\S.*?( [A-Za-z_]+: ?)\S", line)
    if labelled:
        return f"{labelled.group(1)}{{source}}{labelled.group(2)}{{target}}"
    for separator, written in (("\t", "\\t"), (" ||| ", " ||| ")):
        if separator in line:
            return f"{{source}}{written}{{target}}"
    return None


# --- tables: JSONL, CSV, TSV --------------------------------------------------------------------------------------
def _read_table(path: Path, spec: DataSpec) -> _Raw:
    if path.suffix == ".jsonl":
        return _read_jsonl(path, spec)
    if path.suffix in (".csv", ".tsv"):
        return _read_delimited(path, spec)
    layout = guess_line_format(path)
    hint = f"; its lines look like pairs: give `line_format` '{layout}'" if layout else ""
    raise DataError(
        f"{path}: cannot tell its format; give a .jsonl, .csv or .tsv file, a folder of line-aligned files "
        f"with `src_ext`/`tgt_ext`, or `line_format` for one pair per line{hint}",
        settings=("src_ext", "tgt_ext", "line_format"),
    )


def _read_jsonl(path: Path, spec: DataSpec) -> _Raw:
    sources: list[Any] = []
    targets: list[Any] = []
    line_numbers: list[int] = []
    for number, line in enumerate(_lines(path, spec.on_bad_line == "skip"), start=1):
        if isinstance(line, str) and not line.strip():
            continue  # blank lines between records carry no pair
        source, target = _record_values(line, spec, f"{path} line {number}")
        sources.append(source)
        targets.append(target)
        line_numbers.append(number)
    columns = f"{spec.src_column}→{spec.tgt_column}"
    return _Raw(sources, targets, f"{path} ({columns})", lambda side, row: f"{path} line {line_numbers[row]}")


def _record_values(line: Any, spec: DataSpec, where: str) -> tuple[Any, Any]:
    """The source and target values of one JSONL line, or `_Bad` for both where the line holds none."""
    if isinstance(line, _Bad):
        return line, line
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        bad = _Bad(f"not valid JSON ({err.msg} at column {err.colno})")
        return bad, bad
    except RecursionError:
        bad = _Bad("not valid JSON (nested too deeply)")
        return bad, bad
    except ValueError as err:  # e.g. an integer literal beyond Python's digit limit
        bad = _Bad(f"not valid JSON ({str(err).splitlines()[0]})")
        return bad, bad
    if not isinstance(record, dict):
        bad = _Bad(f"expected a JSON object, got {type(record).__name__}")
        return bad, bad
    if spec.src_column in record and spec.tgt_column in record:
        return record[spec.src_column], record[spec.tgt_column]
    translation = record.get(TRANSLATION_COLUMN)
    if isinstance(translation, dict) and spec.src_ext is not None:
        _check_languages(list(translation), spec, where)
        return translation[spec.src_ext], translation[spec.tgt_ext]
    bad = _Bad(_missing_column_reason(list(record), spec), MISSING_COLUMN_SETTINGS)
    return bad, bad


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
    if spec.list_rule is not None:  # cells written as lists: ["a", "b"] (JSON) or ['a', 'b'] (Python, as pandas does)
        sources, targets = [_list_cell(v) for v in sources], [_list_cell(v) for v in targets]
    origin = f"{path} ({spec.src_column}→{spec.tgt_column})"
    return _Raw(sources, targets, origin, lambda side, row: f"{path} row {row + 1}")  # rows after the header


def _list_cell(value: str) -> Any:
    """A cell holding a list literal, as that list of texts; any other cell as it is. Literals only: never eval."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        return parsed if isinstance(parsed, list) else value
    return value


MISSING_COLUMN_SETTINGS = ("src_column", "tgt_column", "src_ext", "tgt_ext")


def _missing_column_reason(columns: list[str], spec: DataSpec) -> str:
    missing = spec.src_column if spec.src_column not in columns else spec.tgt_column
    hint = "set `src_column`/`tgt_column`"
    if TRANSLATION_COLUMN in columns:
        hint += f", or `src_ext`/`tgt_ext` to read languages from '{TRANSLATION_COLUMN}'"
    return f"no column '{missing}' (columns: {', '.join(columns) or 'none'}); {hint}"


def _missing_column(where: str, columns: list[str], spec: DataSpec) -> DataError:
    return DataError(f"{where}: {_missing_column_reason(columns, spec)}", settings=MISSING_COLUMN_SETTINGS)


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
