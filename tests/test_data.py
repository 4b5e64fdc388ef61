"""modformer.data: every input format, every error a user can hit, and the batching guarantees training relies on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from modformer.data import (
    DataSpec,
    Seq2SeqData,
    TokenizedData,
    available_splits,
    batch_plan,
    data_record,
    data_report,
    default_data_spec,
    load_split,
    same_data_warning,
)
from modformer.errors import ConfigError, DataError, ModformerError

SOURCES = ["a dog runs", "two men talk", "a red car", "the cat sleeps on a mat", "kids play"]
TARGETS = [
    "ein hund rennt",
    "zwei männer reden",
    "ein rotes auto",
    "die katze schläft auf einer matte",
    "kinder spielen",
]


# --- helpers ------------------------------------------------------------------------------------------------------
def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_pairs(folder: Path, split: str, src_ext: str, tgt_ext: str, n: int | None = None) -> None:
    write_lines(folder / f"{split}.{src_ext}", SOURCES[:n])
    write_lines(folder / f"{split}.{tgt_ext}", TARGETS[:n])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def records(src: str = "source", tgt: str = "target") -> list[dict]:
    return [{src: s, tgt: t, "id": i} for i, (s, t) in enumerate(zip(SOURCES, TARGETS, strict=True))]


def data_error(call: Callable[[], object], phrase: str) -> str:
    """Run `call`, expect a one-line DataError containing `phrase`; return the message."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert phrase in message
    assert "\n" not in message
    assert isinstance(info.value, ModformerError)
    return message


def make_tokenizer(template: str = "$A </s>", pad_first: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over SOURCES and TARGETS. pad_first=False puts <s> at 0 and <pad> at 1, as BART does."""
    specials = ["<pad>", "</s>", "<unk>"] if pad_first else ["<s>", "<pad>", "</s>", "<unk>"]
    words = sorted({word for text in SOURCES + TARGETS for word in text.split()} | {"translate:"})
    vocab = {token: i for i, token in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    used = [(token, vocab[token]) for token in ("<s>", "</s>") if token in template]
    core.post_processor = processors.TemplateProcessing(single=template, special_tokens=used)
    extra = {} if pad_first else {"bos_token": "<s>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", **extra
    )


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def synthetic(n: int, seed: int = 0) -> TokenizedData:
    """n pairs of varied lengths; source i starts with token 10 + i so a row can be traced back to its pair."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (n,), generator=gen).tolist()
    sources = [[10 + i] + [5] * (length - 1) for i, length in enumerate(lengths)]
    targets = [[7] * (1 + (i % 4)) for i in range(n)]
    return TokenizedData(sources, targets, pad_id=0)


# --- line-aligned files -------------------------------------------------------------------------------------------
def test_line_files_with_explicit_extensions(tmp_path: Path) -> None:
    write_pairs(tmp_path, "train", "en", "de")
    write_pairs(tmp_path, "val", "en", "de", n=2)
    spec = DataSpec(str(tmp_path), src_ext="en", tgt_ext="de")
    data = load_split(spec, "train")
    assert data.sources == SOURCES and data.targets == TARGETS
    assert len(data) == 5 and "train.en" in data.origin and "train.de" in data.origin
    assert available_splits(spec) == ["train", "val"]
    assert len(load_split(spec, "val")) == 2


@pytest.mark.parametrize(("src_ext", "tgt_ext"), [("src", "tgt"), ("source", "target")])
def test_line_files_with_detected_extensions(tmp_path: Path, src_ext: str, tgt_ext: str) -> None:
    write_pairs(tmp_path, "train", src_ext, tgt_ext)
    spec = DataSpec(str(tmp_path))
    assert load_split(spec, "train").targets == TARGETS
    assert available_splits(spec) == ["train"]


def test_gzip_compressed_line_files_read_like_plain_ones(tmp_path: Path) -> None:
    import gzip

    write_pairs(tmp_path, "val", "en", "de", n=2)
    for side, texts in (("en", SOURCES), ("de", TARGETS)):
        (tmp_path / f"train.{side}.gz").write_bytes(gzip.compress(("\n".join(texts) + "\n").encode()))
    spec = DataSpec(str(tmp_path), src_ext="en", tgt_ext="de")
    data = load_split(spec, "train")
    assert data.sources == SOURCES and data.targets == TARGETS and "train.en.gz" in data.origin
    assert available_splits(spec) == ["train", "val"]
    # cut short: one line naming the file, not a traceback from gzip
    (tmp_path / "train.de.gz").write_bytes(gzip.compress(b"ein hund\n" * 50)[:20])
    with pytest.raises(DataError, match=r"train.de.gz: not a complete gzip file"):
        load_split(spec, "train")


def test_line_files_keep_inner_whitespace_and_drop_line_ends(tmp_path: Path) -> None:
    (tmp_path / "train.src").write_bytes(b"\xef\xbb\xbfa  dog\t runs \r\nlast line without newline")
    (tmp_path / "train.tgt").write_bytes(b"ein  hund\r\nzwei\n")
    data = load_split(DataSpec(str(tmp_path)), "train")
    assert data.sources == ["a  dog\t runs ", "last line without newline"]
    assert data.targets == ["ein  hund", "zwei"]


def test_prefix_and_limit(tmp_path: Path) -> None:
    write_pairs(tmp_path, "train", "en", "de")
    spec = DataSpec(str(tmp_path), src_ext="en", tgt_ext="de", prefix="translate: ")
    data = load_split(spec, "train", limit=2)
    assert data.sources == ["translate: a dog runs", "translate: two men talk"]
    assert data.targets == TARGETS[:2]
    assert len(load_split(spec, "train", limit=100)) == 5
    assert len(load_split(spec, "train", limit=0)) == 0
    with pytest.raises(ConfigError):
        load_split(spec, "train", limit=-1)


def test_bundled_sample() -> None:
    spec = default_data_spec()
    assert (spec.src_ext, spec.tgt_ext) == ("en", "de")
    assert Path(spec.path, "README.md").is_file()  # the attribution travels with the data
    assert available_splits(spec) == ["test", "train", "val"]
    sizes = {split: len(load_split(spec, split)) for split in available_splits(spec)}
    assert sizes == {"test": 300, "train": 3000, "val": 300}
    train = load_split(spec, "train", limit=1)
    assert train.sources[0].startswith("Two young, White males are outside")
    assert train.targets[0].startswith("Zwei junge weiße Männer")


# --- tables: JSONL, CSV, TSV, templates, single files -------------------------------------------------------------
def test_jsonl_folder_with_custom_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", records("en", "de"))
    spec = DataSpec(str(tmp_path), src_column="en", tgt_column="de")
    data = load_split(spec, "train")
    assert data.sources == SOURCES and data.targets == TARGETS
    assert available_splits(spec) == ["train"]


def test_jsonl_skips_blank_lines_and_reads_translation_dicts(tmp_path: Path) -> None:
    lines = [json.dumps({"translation": {"en": s, "de": t}}) for s, t in zip(SOURCES, TARGETS, strict=True)]
    (tmp_path / "train.jsonl").write_text("\n\n".join(lines) + "\n\n", encoding="utf-8")
    data = load_split(DataSpec(str(tmp_path), src_ext="en", tgt_ext="de"), "train")
    assert data.sources == SOURCES and data.targets == TARGETS


def test_csv_with_quotes_commas_and_newlines(tmp_path: Path) -> None:
    text = 'source,target\n"a dog, running","ein hund, rennend"\n"two\nlines",zwei\n007,null\n'
    (tmp_path / "train.csv").write_text(text, encoding="utf-8")
    data = load_split(DataSpec(str(tmp_path)), "train")
    assert data.sources == ["a dog, running", "two\nlines", "007"]
    assert data.targets == ["ein hund, rennend", "zwei", "null"]  # dtype=str, no NA guessing


def test_tsv_keeps_unbalanced_quotes(tmp_path: Path) -> None:
    text = 'source\ttarget\nhe said "hi\ter sagte "hallo\nNA\tn/a\n'
    (tmp_path / "val.tsv").write_text(text, encoding="utf-8")
    data = load_split(DataSpec(str(tmp_path)), "val")
    assert data.sources == ['he said "hi', "NA"]
    assert data.targets == ['er sagte "hallo', "n/a"]


def test_template_path(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "pairs-train.jsonl", records())
    write_jsonl(tmp_path / "pairs-test.jsonl", records()[:1])
    spec = DataSpec(str(tmp_path / "pairs-{split}.jsonl"))
    assert available_splits(spec) == ["test", "train"]
    assert len(load_split(spec, "train")) == 5 and len(load_split(spec, "test")) == 1
    message = data_error(lambda: load_split(spec, "val"), "no split 'val'")
    assert "test, train" in message


def test_template_of_line_files(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    write_pairs(tmp_path / "train", "corpus", "en", "de")
    spec = DataSpec(str(tmp_path / "{split}" / "corpus"), src_ext="en", tgt_ext="de")
    assert available_splits(spec) == ["train"]
    assert load_split(spec, "train").sources == SOURCES


def test_single_file_serves_every_split(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", records())
    spec = DataSpec(str(path))
    assert available_splits(spec) == ["pairs"]
    assert load_split(spec, "train").sources == load_split(spec, "anything").sources == SOURCES


# --- Hugging Face datasets ----------------------------------------------------------------------------------------
def test_saved_dataset_dict_and_single_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"source": SOURCES, "target": TARGETS})
    datasets.DatasetDict({"train": train, "validation": train.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    spec = DataSpec(str(tmp_path / "dd"))
    assert available_splits(spec) == ["train", "validation"]
    assert load_split(spec, "train").targets == TARGETS
    assert len(load_split(spec, "validation")) == 2
    assert len(load_split(spec, "train", limit=3)) == 3
    message = data_error(lambda: load_split(spec, "test"), "no split 'test'")
    assert "train, validation" in message

    train.save_to_disk(str(tmp_path / "single"))
    assert load_split(DataSpec(str(tmp_path / "single")), "whatever").sources == SOURCES


def test_saved_dataset_with_translation_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"de": t, "en": s} for s, t in zip(SOURCES, TARGETS, strict=True)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": rows})}).save_to_disk(str(tmp_path))
    data = load_split(DataSpec(str(tmp_path), src_ext="en", tgt_ext="de"), "train")
    assert data.sources == SOURCES and data.targets == TARGETS
    data_error(lambda: load_split(DataSpec(str(tmp_path), src_ext="en", tgt_ext="fr"), "train"), "no language 'fr'")
    data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "no column 'source'")


def test_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach the Hub\nretry later\n")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    data_error(lambda: load_split(DataSpec("someone/no-such-set"), "train"), "Hugging Face hub")


def test_hub_name_reads_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake(name: str, config: str | None, split: str) -> object:
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"source": SOURCES, "target": TARGETS})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_split(DataSpec("wmt14:de-en"), "train", limit=2)
    assert calls == [("wmt14", "de-en", "train[:2]")]
    assert data.sources == SOURCES[:2]


# --- errors -------------------------------------------------------------------------------------------------------
def test_path_not_found(tmp_path: Path) -> None:
    spec = DataSpec(str(tmp_path / "missing"))
    data_error(lambda: load_split(spec, "train"), "not found")
    data_error(lambda: available_splits(spec), "not found")


def test_split_missing_lists_the_splits(tmp_path: Path) -> None:
    write_pairs(tmp_path, "train", "en", "de")
    write_pairs(tmp_path, "val", "en", "de")
    message = data_error(lambda: load_split(DataSpec(str(tmp_path), "en", "de"), "test"), "no split 'test'")
    assert "train, val" in message


def test_undetectable_extensions_ask_for_them(tmp_path: Path) -> None:
    write_pairs(tmp_path, "train", "en", "de")
    message = data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "`src_ext`")
    assert "train.{de,en}" in message


def test_target_file_missing(tmp_path: Path) -> None:
    write_lines(tmp_path / "train.en", SOURCES)
    data_error(lambda: load_split(DataSpec(str(tmp_path), "en", "de"), "train"), "train.de not found")


@pytest.mark.parametrize("suffix", ["de", "jsonl", "csv", "tsv"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    write_lines(tmp_path / "train.en", SOURCES)
    (tmp_path / f"train.{suffix}").write_bytes(b"" if suffix != "de" else b"\n  \n")
    spec = DataSpec(str(tmp_path), "en", "de") if suffix == "de" else DataSpec(str(tmp_path / f"train.{suffix}"))
    data_error(lambda: load_split(spec, "train"), "is empty")


def test_csv_with_header_only_is_empty(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("source,target\n", encoding="utf-8")
    data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "is empty")


def test_unequal_line_counts(tmp_path: Path) -> None:
    write_lines(tmp_path / "train.en", SOURCES)
    write_lines(tmp_path / "train.de", TARGETS[:4])
    message = data_error(lambda: load_split(DataSpec(str(tmp_path), "en", "de"), "train"), "has 5 lines but")
    assert "train.de has 4" in message


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    write_lines(tmp_path / "train.en", SOURCES)
    (tmp_path / "train.de").write_bytes("\n".join(TARGETS[:2]).encode() + b"\nkaputt \xff\n" + b"a\nb\n")
    data_error(lambda: load_split(DataSpec(str(tmp_path), "en", "de"), "train"), "train.de line 3: not valid UTF-8")


def test_invalid_utf8_in_csv(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(b"source,target\na,b\nc,\xe4\n")
    data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "train.csv line 3: not valid UTF-8")


@pytest.mark.parametrize("side", ["en", "de"])
def test_empty_line_names_file_and_line(tmp_path: Path, side: str) -> None:
    write_pairs(tmp_path, "train", "en", "de")
    lines = (SOURCES if side == "en" else TARGETS).copy()
    lines[3] = "   "
    write_lines(tmp_path / f"train.{side}", lines)
    data_error(lambda: load_split(DataSpec(str(tmp_path), "en", "de"), "train"), f"train.{side} line 4: empty")


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", records())
    path.write_text(path.read_text() + '{"source": "x", "target": \n', encoding="utf-8")
    data_error(lambda: load_split(DataSpec(str(path)), "train"), "train.jsonl line 6: not valid JSON")


def test_jsonl_value_errors_name_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", records() + [{"source": "x", "target": None}])
    data_error(lambda: load_split(DataSpec(str(path)), "train"), "train.jsonl line 6: the target is not text")
    write_jsonl(path, records() + [{"source": "", "target": "y"}])
    data_error(lambda: load_split(DataSpec(str(path)), "train"), "train.jsonl line 6: empty source")
    path.write_text("[1, 2]\n", encoding="utf-8")
    data_error(lambda: load_split(DataSpec(str(path)), "train"), "expected a JSON object")


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", records("en", "de"))
    message = data_error(lambda: load_split(DataSpec(str(jsonl)), "train"), "no column 'source'")
    assert "en, de, id" in message
    (tmp_path / "b.csv").write_text("source,tgt\na,b\n", encoding="utf-8")
    message = data_error(lambda: load_split(DataSpec(str(tmp_path / "b.csv")), "train"), "no column 'target'")
    assert "source, tgt" in message


def test_ragged_csv_row(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("source,target\na,b\nc,d,e\n", encoding="utf-8")
    message = data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "train.csv")
    assert "line 3" in message and "one value per column" in message


def test_ragged_tsv_row_every_row_longer_than_the_header(tmp_path: Path) -> None:
    # With a header, pandas would quietly make the extra field an index and shift the columns.
    (tmp_path / "train.tsv").write_text("source\ttarget\na\tb\tc\nd\te\tf\n", encoding="utf-8")
    data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "one value per column")


def test_short_csv_row_is_an_empty_target(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("source,target\na,b\nc\n", encoding="utf-8")
    data_error(lambda: load_split(DataSpec(str(tmp_path)), "train"), "train.csv row 2: empty target")


def test_unknown_file_format(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pairs.txt", SOURCES)
    data_error(lambda: load_split(DataSpec(str(path)), "train"), "cannot tell its format")


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"path": ""}, "path is empty"),
        ({"path": "d", "src_ext": "en"}, "give both `src_ext` and `tgt_ext`"),
        ({"path": "d", "src_ext": ".en", "tgt_ext": "de"}, "without the dot"),
        ({"path": "d", "src_ext": "en", "tgt_ext": "en"}, "both 'en'"),
        ({"path": "d", "src_column": "text", "tgt_column": "text"}, "two different"),
    ],
)
def test_spec_validation(kwargs: dict, phrase: str) -> None:
    data_error(lambda: DataSpec(**kwargs), phrase)


def test_spec_accepts_a_path_object(tmp_path: Path) -> None:
    assert DataSpec(tmp_path).path == str(tmp_path)


# --- Seq2SeqData and tokenization ---------------------------------------------------------------------------------
def test_take() -> None:
    data = Seq2SeqData(SOURCES, TARGETS, "memory")
    assert data.take(None) is data
    assert data.take(2).sources == SOURCES[:2] and len(data.take(2)) == 2
    assert len(data.take(99)) == 5
    with pytest.raises(DataError):
        Seq2SeqData(SOURCES, TARGETS[:2], "memory")


def test_tokenize_appends_eos_and_truncates(tokenizer: PreTrainedTokenizerFast) -> None:
    data = Seq2SeqData(SOURCES, TARGETS, "memory")
    tokens = data.tokenize(tokenizer, max_source_len=4, max_target_len=3)
    eos = tokenizer.eos_token_id
    assert tokens.pad_id == tokenizer.pad_token_id == 0 and len(tokens) == 5
    assert tokens.source_ids[0] == tokenizer("a dog runs")["input_ids"] and tokens.source_ids[0][-1] == eos
    assert all(len(ids) <= 4 and ids[-1] == eos for ids in tokens.source_ids)
    assert all(len(ids) <= 3 and ids[-1] == eos for ids in tokens.target_ids)
    assert tokens.target_ids[1] == tokenizer(text_target=["zwei männer"])["input_ids"][0]


def test_tokenize_with_a_bart_style_tokenizer() -> None:
    bart = make_tokenizer("<s> $A </s>", pad_first=False)
    tokens = Seq2SeqData(SOURCES[:2], TARGETS[:2], "memory").tokenize(bart)
    assert tokens.pad_id == 1
    assert tokens.source_ids[0][0] == bart.bos_token_id and tokens.source_ids[0][-1] == bart.eos_token_id
    batch = tokens.batches(2, shuffle=False)[0]
    short = int(batch["attention_mask"][0].sum())
    assert (batch["input_ids"][0, short:] == 1).all()


def test_tokenizer_without_pad_token_is_an_error() -> None:
    core = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    no_pad = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    data_error(lambda: Seq2SeqData(["a"], ["a"], "memory").tokenize(no_pad), "no pad token")


# --- batches and the training stream ------------------------------------------------------------------------------
def test_unshuffled_batches_pad_and_keep_order(tokenizer: PreTrainedTokenizerFast) -> None:
    tokens = Seq2SeqData(SOURCES, TARGETS, "memory").tokenize(tokenizer)
    batches = tokens.batches(2, shuffle=False)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    for batch in batches:
        assert all(value.dtype == torch.long for value in batch.values())
        for row, i in enumerate(batch["index"].tolist()):
            source, target = tokens.source_ids[i], tokens.target_ids[i]
            assert batch["input_ids"][row, : len(source)].tolist() == source
            assert (batch["input_ids"][row, len(source) :] == tokens.pad_id).all()
            assert batch["attention_mask"][row].tolist() == [1] * len(source) + [0] * (
                batch["input_ids"].shape[1] - len(source)
            )
            assert batch["labels"][row, : len(target)].tolist() == target
            assert (batch["labels"][row, len(target) :] == -100).all()
    assert batches[1]["input_ids"].shape == (2, max(len(tokens.source_ids[i]) for i in (2, 3)))


def test_a_batch_of_chosen_pairs_keeps_their_order() -> None:
    data = synthetic(6)
    batch = data.batch([4, 1, 3])
    assert batch["index"].tolist() == [4, 1, 3] and batch["input_ids"][:, 0].tolist() == [14, 11, 13]
    assert batch["input_ids"].shape == (3, max(len(data.source_ids[i]) for i in (4, 1, 3)))
    assert batch["labels"].shape == (3, max(len(data.target_ids[i]) for i in (4, 1, 3)))
    assert all(value.dtype == torch.long for value in batch.values())
    # The same rows as the epoch's batches give.
    first = data.batches(2, shuffle=False)[0]
    assert all(torch.equal(first[k], v) for k, v in data.batch(range(2)).items())
    for bad, phrase in (([], "non-empty"), ([[0, 1]], "flat"), ([0, 6], "0-5, got 0-6"), ([-1], "0-5")):
        with pytest.raises(ConfigError, match=phrase):
            data.batch(bad)


def test_shuffled_batches_are_deterministic_per_seed_and_epoch() -> None:
    data = synthetic(300)

    def order(**kwargs: int) -> list[list[int]]:
        return [b["index"].tolist() for b in data.batches(8, shuffle=True, **kwargs)]

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    assert order(seed=1, epoch=0) != order(seed=2, epoch=0)
    assert order(seed=1, epoch=0) != [list(range(s, min(s + 8, 300))) for s in range(0, 300, 8)]


def test_every_pair_once_per_epoch_and_rows_match_index() -> None:
    data = synthetic(123)
    for epoch in range(3):
        batches = data.batches(10, shuffle=True, seed=5, epoch=epoch)
        seen = sorted(i for b in batches for i in b["index"].tolist())
        assert seen == list(range(123))
        for batch in batches:
            assert batch["input_ids"][:, 0].tolist() == [10 + i for i in batch["index"].tolist()]


def test_bucketing_reduces_padding() -> None:
    data = synthetic(2000)

    def padding(shuffle: bool) -> float:
        batches = data.batches(16, shuffle=shuffle, seed=0)
        return sum(float((b["attention_mask"] == 0).sum()) for b in batches) / len(data)

    assert padding(shuffle=True) < 0.5 * padding(shuffle=False)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), max_size=300),
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 100),
)
def test_batch_plan_is_a_partition(lengths: list[int], batch_size: int, shuffle: bool, seed: int, epoch: int) -> None:
    plan = batch_plan(lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
    assert sorted(i for batch in plan for i in batch.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in plan)
    assert len(plan) == -(-len(lengths) // batch_size)


def test_stream_runs_epoch_after_epoch() -> None:
    data = synthetic(30)  # 4 batches of 8 an epoch
    stream = data.stream(8, seed=3)
    first = [next(stream)["index"].tolist() for _ in range(8)]
    expected = [b["index"].tolist() for epoch in (0, 1) for b in data.batches(8, shuffle=True, seed=3, epoch=epoch)]
    assert first == expected


@pytest.mark.parametrize("start_step", [0, 1, 3, 4, 9])
def test_stream_resumes_exactly(start_step: int) -> None:
    data = synthetic(30)
    uninterrupted = data.stream(8, seed=3)
    reference = [next(uninterrupted) for _ in range(start_step + 6)][start_step:]
    resumed = data.stream(8, seed=3, start_step=start_step)
    for want in reference:
        got = next(resumed)
        assert all(torch.equal(got[key], want[key]) for key in want)


def test_stream_and_batches_reject_bad_arguments() -> None:
    data = synthetic(5)
    with pytest.raises(ConfigError):
        data.stream(0)
    with pytest.raises(ConfigError):
        data.stream(2, start_step=-1)
    with pytest.raises(ConfigError):
        data.batches(0, shuffle=False)
    data_error(lambda: TokenizedData([], [], pad_id=0).stream(2), "empty")
    assert TokenizedData([], [], pad_id=0).batches(4, shuffle=True) == []


# --- what loading and tokenizing tell the user --------------------------------------------------------------------
def test_tokenize_counts_the_pairs_cut_and_warns(tokenizer: PreTrainedTokenizerFast) -> None:
    data = Seq2SeqData(SOURCES, TARGETS, "memory")
    whole = data.tokenize(tokenizer)
    assert (whole.cut_pairs, whole.cut_sources, whole.cut_targets, whole.warnings) == (0, 0, 0, [])
    cut = data.tokenize(tokenizer, max_source_len=4, max_target_len=3)
    # sources of 3, 3, 3, 6 and 2 words (+ </s>); targets of 3, 3, 3, 5 and 2
    assert (cut.cut_sources, cut.cut_targets, cut.cut_pairs) == (1, 4, 4)
    assert cut.source_ids[3][-1] == tokenizer.eos_token_id and len(cut.source_ids[3]) == 4
    (warning,) = cut.warnings
    assert warning == (
        "memory: 4 of 5 pairs (80.0 %) were cut to fit: 1 sources longer than `max_source_len` 4 tokens and 4 targets "
        "longer than `max_target_len` 3 tokens"
    )
    record = data_record(data, cut)
    assert record == {
        "origin": "memory",
        "pairs": 5,
        "skipped": 0,
        "skipped_at": [],
        "max_source_len": 4,
        "max_target_len": 3,
        "cut_pairs": 4,
        "cut_sources": 1,
        "cut_targets": 4,
    }
    assert data_report({"train": (data, cut)}, [None, "other"])["warnings"] == [warning, "other"]
    with pytest.raises(ConfigError, match="max_source_len must be at least 1") as info:
        data.tokenize(tokenizer, max_source_len=0)
    assert info.value.settings == ("max_source_len",)


def test_same_data_warning_only_when_every_held_out_pair_is_a_training_pair() -> None:
    train = Seq2SeqData(SOURCES, TARGETS, "a.jsonl")
    assert "are all training pairs" in same_data_warning(train, train.take(2), val_split="val")
    other = Seq2SeqData([SOURCES[0], "new"], [TARGETS[0], "neu"], "b.jsonl")
    assert same_data_warning(train, other, val_split="val") is None
    assert same_data_warning(train, Seq2SeqData([], [], "empty"), val_split="val") is None


def test_take_keeps_references_and_what_was_skipped() -> None:
    data = Seq2SeqData(SOURCES[:3], TARGETS[:3], "m", references=[[t, "x"] for t in TARGETS[:3]], skipped=2)
    first = data.take(2)
    assert first.references == [[TARGETS[0], "x"], [TARGETS[1], "x"]] and first.skipped == 2
    assert Seq2SeqData(SOURCES, TARGETS).reference_lists() == [[t] for t in TARGETS]
    with pytest.raises(DataError, match="reference lists"):
        Seq2SeqData(SOURCES, TARGETS, "m", references=[["x"]])
