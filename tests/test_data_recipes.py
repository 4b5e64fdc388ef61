"""Public corpora in the layouts they come in, read through the real CLI with at most one data flag beyond --data:
OpenNMT's `src-train.txt`/`tgt-train.txt`, nqg's `{split}.src`/`{split}.tgt` (PTB-tokenized, with entities), one-line
`IN: ... OUT: ...` pairs (SCAN), JSONL with list fields and several references. Then what a user must be told and
what the artifacts record: pairs left out, texts cut, references too long to match, a held-out split that is the
training data; the predictions file and exact match.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from modformer.cli import app
from modformer.data import DataSpec, LineFormat, available_splits, load_split
from modformer.errors import DataError
from modformer.evaluation import text_scores

runner = CliRunner()
TEACHER = ("--preset", "tiny", "--steps", 2, "--batch-size", 4)
SCAN_FORMAT = "IN: {source} OUT: {target}"
ACTIONS = {"jump": "I_JUMP", "walk": "I_WALK", "run": "I_RUN", "look": "I_LOOK"}
TIMES = {"": 1, " twice": 2, " thrice": 3}


def invoke(*args) -> Result:
    return runner.invoke(app, [str(a) for a in args], prog_name="modformer")


def ok(*args) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.exception!r}\nstderr:\n{result.stderr}"
    return result


def one_error(*args) -> str:
    """The single `error:` line a refused command prints."""
    result = invoke(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def warnings_in(result: Result) -> list[str]:
    return [line.removeprefix("warning: ") for line in result.stderr.splitlines() if line.startswith("warning: ")]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def scan_pairs() -> list[tuple[str, str]]:
    """SCAN-style commands and their actions: 'jump twice' -> 'I_JUMP I_JUMP'."""
    return [
        (f"{verb}{times}", " ".join([action] * n)) for verb, action in ACTIONS.items() for times, n in TIMES.items()
    ]


# --- the layouts --------------------------------------------------------------------------------------------------
@pytest.fixture
def opennmt(tmp_path, sample_pairs) -> Path:
    """A WMT-like slice in OpenNMT's layout: src-train.txt, tgt-train.txt, src-val.txt, tgt-val.txt."""
    train, val = sample_pairs
    folder = tmp_path / "wmt"
    for split, pairs in (("train", train.take(40)), ("val", val.take(8))):
        write(folder / f"src-{split}.txt", pairs.sources)
        write(folder / f"tgt-{split}.txt", pairs.targets)
    return folder


@pytest.fixture
def nqg(tmp_path, sample_pairs) -> Path:
    """SQuAD question generation in nqg's layout: {split}.src / {split}.tgt, lowercase, PTB-tokenized, entities."""
    train, val = sample_pairs
    folder = tmp_path / "nqg"
    for split, pairs in (("train", train.take(40)), ("dev", val.take(8))):
        sources = [f"{s.lower().rstrip('.')} , isn &apos;t it ?" for s in pairs.sources]
        targets = [f"what does &quot; {s.split()[0].lower()} &quot; do ?" for s in pairs.sources]
        write(folder / f"{split}.src", sources)
        write(folder / f"{split}.tgt", targets)
    return folder


@pytest.fixture
def scan(tmp_path) -> Path:
    """A command-to-action set as SCAN ships it: tasks_{train,test}_simple.txt, one `IN: ... OUT: ...` a line."""
    folder = tmp_path / "scan"
    pairs = scan_pairs()
    write(folder / "tasks_train_simple.txt", [f"IN: {s} OUT: {t}" for s, t in pairs])
    write(folder / "tasks_test_simple.txt", [f"IN: {s} OUT: {t}" for s, t in pairs[:6]])
    return folder


@pytest.fixture
def summaries(tmp_path, sample_pairs) -> Path:
    """Summarization JSONL with list fields: the document as a list of sentences, the target a list of references."""
    train, _ = sample_pairs
    folder = tmp_path / "summ"
    records = [
        {"id": i, "source": [train.sources[i], train.sources[i + 1]], "target": [train.targets[i], train.sources[i]]}
        for i in range(0, 12, 2)
    ]
    (folder).mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


# --- each layout, through the CLI ---------------------------------------------------------------------------------
def test_opennmt_files_read_through_a_side_template(tmp_path, opennmt):
    # As it comes: the folder alone is refused, and the error gives the recipe, which then runs as written.
    message = one_error("teacher", "--data", opennmt, *TEACHER, "--out", tmp_path / "refused")
    recipe = f"--data '{opennmt}/{{side}}-{{split}}.txt' --src-ext src --tgt-ext tgt"
    assert recipe in message
    out = tmp_path / "teacher"
    ok("teacher", *shlex.split(recipe), *TEACHER, "--out", out)
    # and with the side names left to be found (src/tgt): --data alone
    ok("teacher", "--data", f"{opennmt}/{{side}}-{{split}}.txt", *TEACHER, "--out", tmp_path / "found")
    info = read_json(out / "teacher.json")
    assert info["data"] == f"{opennmt}/src-train.txt + {opennmt}/tgt-train.txt" and info["train_pairs"] == 40
    report = info["data_report"]
    assert report["heldout"]["origin"].endswith("tgt-val.txt") and report["heldout"]["pairs"] == 8
    assert report["train"]["skipped"] == 0 and report["warnings"] == []
    assert available_splits(DataSpec(f"{opennmt}/{{side}}-{{split}}.txt")) == ["train", "val"]


def test_nqg_layout_with_entities_unescaped(tmp_path, nqg):
    out = tmp_path / "teacher"
    ok("teacher", "--data", nqg, "--unescape-entities", "--val-split", "dev", *TEACHER, "--out", out)
    # The tokenizer was trained on the texts read: with the entities turned back into characters, no '&' is left.
    vocab = read_json(out / "tokenizer.json")["model"]["vocab"]
    assert any("'" in token for token in vocab) and any('"' in token for token in vocab)
    assert not any("&" in token for token in vocab)
    unescaped = load_split(DataSpec(str(nqg), unescape_entities=True), "dev")
    assert unescaped.sources[0].endswith(", isn 't it ?") and '"' in unescaped.targets[0]
    assert "&apos;" in load_split(DataSpec(str(nqg)), "dev").sources[0]  # as written, without the flag


def test_one_line_pairs_with_a_line_format(tmp_path, scan, t5_teacher_dir):
    template = f"{scan}/tasks_{{split}}_simple.txt"
    message = one_error("evaluate", "--model", t5_teacher_dir, "--data", scan, "--split", "test")
    recipe = f"--data '{template}' --line-format '{SCAN_FORMAT}'"
    assert recipe in message
    scores, predictions = tmp_path / "scores.json", tmp_path / "predictions.txt"
    args = ["--split", "test", "--max-new-tokens", 12, "--json", scores, "--predictions", predictions]
    ok("evaluate", "--model", t5_teacher_dir, *shlex.split(recipe), *args)
    record = read_json(scores)
    assert record["n"] == 6 and record["split"] == "test" and 0 <= record["exact_match"] <= 100
    assert record["data_report"]["scored"]["origin"].startswith(f"{scan}/tasks_test_simple.txt")
    assert len(predictions.read_text(encoding="utf-8").splitlines()) == 6
    assert load_split(DataSpec(template, line_format=SCAN_FORMAT), "train").sources[:2] == ["jump", "jump twice"]


def test_jsonl_lists_joined_and_scored_against_every_reference(tmp_path, summaries, t5_teacher_dir):
    message = one_error("evaluate", "--model", t5_teacher_dir, "--data", summaries, "--split", "test")
    assert "test.jsonl line 1: the source is a list" in message and "give --list-rule join" in message
    scores = tmp_path / "scores.json"
    args = ["--split", "test", "--max-new-tokens", 8, "--json", scores]
    ok("evaluate", "--model", t5_teacher_dir, "--data", summaries, "--list-rule", "join,references", *args)
    report = read_json(scores)["data_report"]["scored"]
    assert report["pairs"] == 6 and report["most_references"] == 2
    pairs = load_split(DataSpec(str(summaries), list_rule="join,references"), "test")
    record = json.loads((summaries / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert pairs.sources[0] == " ".join(record["source"])  # the sentences, joined
    assert pairs.targets[0] == record["target"][0] and pairs.references[0] == record["target"]  # trains on the first


def test_exact_match_and_multi_reference_scores_count_any_reference(tmp_path, scan, t5_teacher_dir):
    """The model's own outputs as second references: every output matches one, so exact match and chrF are 100;
    as first references only (`first`, what training reads) they match nothing."""
    predictions = tmp_path / "predictions.txt"
    data = ["--data", f"{scan}/tasks_{{split}}_simple.txt", "--line-format", SCAN_FORMAT, "--split", "train"]
    ok("evaluate", "--model", t5_teacher_dir, *data, "--max-new-tokens", 6, "--predictions", predictions)
    outputs = predictions.read_text(encoding="utf-8").splitlines()
    kept = [(s, o) for (s, _), o in zip(scan_pairs(), outputs, strict=True) if o.strip()]
    assert len(kept) >= 3, outputs
    table = tmp_path / "own" / "test.jsonl"
    table.parent.mkdir()
    rows = [{"source": s, "target": ["no such output", f"  {o} "]} for s, o in kept]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for rule, expected in (("first,references", 100.0), ("first", 0.0)):
        scores = tmp_path / f"{rule}.json"
        own = ["--data", table.parent, "--list-rule", rule, "--split", "test", "--max-new-tokens", 6]
        ok("evaluate", "--model", t5_teacher_dir, *own, "--json", scores)
        record = read_json(scores)
        assert record["exact_match"] == expected and record["n"] == len(kept)
        if expected:
            assert record["chrf"] == pytest.approx(100.0)


def test_text_scores_with_several_references():
    hypotheses = ["a dog runs in the park", "two men talk loudly here"]
    references = [["the cat sleeps", " a dog runs in the park "], ["two men talk loudly here"]]
    scores = text_scores(hypotheses, references)
    assert scores["exact_match"] == 100.0 and scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0) and scores["rougeL"] == pytest.approx(100.0)
    single = text_scores(hypotheses, ["the cat sleeps", "two men talk loudly here"])
    assert single["exact_match"] == 50.0 and single["bleu"] < 100.0


# --- what the user is told, and what the artifacts record ---------------------------------------------------------
def test_bad_lines_skipped_are_counted_warned_and_recorded(tmp_path, scan, t5_teacher_dir):
    lines = [f"IN: {s} OUT: {t}" for s, t in scan_pairs()[:6]]
    lines[2] = "IN: jump twice"  # no OUT: part
    lines.insert(4, "IN: walk OUT: ")  # an empty target
    write(scan / "tasks_test_simple.txt", lines)
    data = ["--data", f"{scan}/tasks_{{split}}_simple.txt", "--line-format", SCAN_FORMAT, "--split", "test"]
    refused = one_error("evaluate", "--model", t5_teacher_dir, *data)
    assert "tasks_test_simple.txt line 3: the line does not fit --line-format" in refused
    assert "--on-bad-line skip leaves such pairs out" in refused
    scores = tmp_path / "scores.json"
    result = ok("evaluate", "--model", t5_teacher_dir, *data, "--on-bad-line", "skip", "--json", scores)
    (warning,) = [w for w in warnings_in(result) if "left out" in w]
    assert "left out 2 bad pairs of 7 (28.6 %)" in warning
    assert "tasks_test_simple.txt line 3: the line does not fit --line-format" in warning
    assert "line 5: empty target" in warning
    record = read_json(scores)
    report = record["data_report"]
    assert record["n"] == 5 and report["scored"]["skipped"] == 2
    assert [re.search(r"line \d+", at).group() for at in report["scored"]["skipped_at"]] == ["line 3", "line 5"]
    assert any("left out 2 bad pairs of 7" in w for w in report["warnings"])


def test_truncation_warned_with_the_share_cut_and_recorded(tmp_path, scan, t5_teacher_dir):
    scores = tmp_path / "scores.json"
    data = ["--data", f"{scan}/tasks_{{split}}_simple.txt", "--line-format", SCAN_FORMAT, "--split", "train"]
    result = ok("evaluate", "--model", t5_teacher_dir, *data, "--max-source-len", 3, "--json", scores)
    (shown,) = [w for w in warnings_in(result) if "cut to fit" in w]
    assert "longer than --max-source-len 3 tokens" in shown
    report = read_json(scores)["data_report"]
    (recorded,) = [w for w in report["warnings"] if "cut to fit" in w]
    assert "longer than `max_source_len` 3 tokens" in recorded
    share = re.search(r"(\d+) of (\d+) pairs \(([\d.]+) %\)", shown).groups()
    assert share == re.search(r"(\d+) of (\d+) pairs \(([\d.]+) %\)", recorded).groups()
    assert int(share[0]) == report["scored"]["cut_pairs"] == report["scored"]["cut_sources"] > 0
    assert report["scored"]["max_source_len"] == 3 and report["scored"]["cut_targets"] == 0


def test_teacher_records_targets_cut(tmp_path, opennmt):
    out = tmp_path / "teacher"
    result = ok("teacher", "--data", f"{opennmt}/{{side}}-{{split}}.txt", "--max-target-len", 3, *TEACHER, "--out", out)
    assert any("--max-target-len 3" in w for w in warnings_in(result))
    report = read_json(out / "teacher.json")["data_report"]
    assert report["train"]["cut_targets"] == 40 and report["heldout"]["cut_targets"] == 8
    assert read_json(out / "teacher.json")["teacher"]["max_target_len"] == 3


def test_modules_and_students_record_what_was_cut(tmp_path, opennmt, t5_teacher_dir):
    data = ["--data", f"{opennmt}/{{side}}-{{split}}.txt"]
    steps = ["--steps", 2, "--batch-size", 4, "--eval-every", 0]
    mods = tmp_path / "mods"
    result = ok("train", "--teacher", t5_teacher_dir, *data, *steps, "--max-source-len", 4, "--out", mods)
    assert any("--max-source-len 4" in w for w in warnings_in(result))
    training = read_json(mods / "modular_config.json")["training"]
    assert training["max_source_len"] == 4 and training["data_report"]["train"]["cut_sources"] > 0
    assert training["data_report"]["train"]["origin"].endswith("tgt-train.txt")
    student = tmp_path / "student"
    args = ["baseline", "kd", "--teacher", t5_teacher_dir, "--shape", "1-1", *data, *steps, "--out", student]
    result = ok(*args, "--max-target-len", 3)
    assert any("--max-target-len 3" in w for w in warnings_in(result))
    info = read_json(student / "modformer.json")
    assert info["baseline"]["max_target_len"] == 3
    assert info["data_report"]["train"]["cut_targets"] == 40 and info["data_report"]["heldout"]["pairs"] == 8


def test_references_longer_than_max_new_tokens_are_warned_about(tmp_path, scan, t5_teacher_dir):
    scores = tmp_path / "scores.json"
    data = ["--data", f"{scan}/tasks_{{split}}_simple.txt", "--line-format", SCAN_FORMAT, "--split", "train"]
    result = ok("evaluate", "--model", t5_teacher_dir, *data, "--max-new-tokens", 2, "--json", scores)
    (shown,) = [w for w in warnings_in(result) if "no output can match" in w]
    assert "references" in shown and "longer than --max-new-tokens 2 tokens" in shown
    assert any("`max_new_tokens` 2" in w for w in read_json(scores)["data_report"]["warnings"])


def test_one_file_serving_every_split_is_warned_about_and_recorded(tmp_path, sample_pairs):
    train, _ = sample_pairs
    table = tmp_path / "pairs.jsonl"
    rows = [{"source": s, "target": t} for s, t in zip(train.sources[:30], train.targets[:30], strict=True)]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "teacher"
    result = ok("teacher", "--data", table, *TEACHER, "--out", out)
    (shown,) = [w for w in warnings_in(result) if "are all training pairs" in w]
    assert "give a held-out split of its own (--val-split val)" in shown
    recorded = read_json(out / "teacher.json")["data_report"]["warnings"]
    assert any("are all training pairs" in w and "`val_split` val" in w for w in recorded)


def test_separate_splits_raise_no_same_data_warning(tmp_path, opennmt):
    result = ok("teacher", "--data", f"{opennmt}/{{side}}-{{split}}.txt", *TEACHER, "--out", tmp_path / "t")
    assert not [w for w in warnings_in(result) if "training pairs" in w]


def test_predictions_file_follows_the_overwrite_rule(tmp_path, scan, t5_teacher_dir):
    predictions = tmp_path / "predictions.txt"
    data = ["--data", f"{scan}/tasks_{{split}}_simple.txt", "--line-format", SCAN_FORMAT, "--split", "test"]
    run = ["evaluate", "--model", t5_teacher_dir, *data, "--max-new-tokens", 4, "--predictions", predictions]
    ok(*run)
    first = predictions.read_text(encoding="utf-8")
    assert len(first.splitlines()) == 6 and first.endswith("\n")
    assert "already exists; pass --overwrite" in one_error(*run)
    assert predictions.read_text(encoding="utf-8") == first
    ok(*run, "--overwrite")
    assert predictions.read_text(encoding="utf-8") == first  # greedy: the same outputs again
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left beside it
    same = one_error(*run, "--overwrite", "--json", predictions)
    assert "--json and --predictions both name" in same


# --- the readers behind the recipes -------------------------------------------------------------------------------
def test_line_format_patterns():
    assert LineFormat.parse("{source}\\t{target}").split("a b\tc") == ("a b", "c")
    assert LineFormat.parse("{target} ||| {source}").split("x ||| y") == ("y", "x")
    assert LineFormat.parse("<{source}> => <{target}>").split("<a> => <b>") == ("a", "b")
    assert LineFormat.parse("{source} | {target}").split("a | b | c") == "' | ' found 2 times: where does it split?"
    for bad, phrase in (("IN: {source}", "once each"), ("{source}{target}", "nothing separates")):
        with pytest.raises(DataError, match=phrase) as info:
            DataSpec("d", line_format=bad)
        assert info.value.settings == ("line_format",)


@pytest.mark.parametrize(
    ("kwargs", "phrase", "setting"),
    [
        ({"list_rule": "concat"}, "unknown `list_rule` 'concat'", "list_rule"),
        ({"list_rule": "references"}, "unknown `list_rule` 'references'", "list_rule"),
        ({"list_rule": "join,first,join"}, "unknown `list_rule`", "list_rule"),
        ({"on_bad_line": "ignore"}, "unknown `on_bad_line` 'ignore'", "on_bad_line"),
        ({"path": "d/{side}.txt", "line_format": "{source}\t{target}"}, "give one", "line_format"),
    ],
)
def test_recipe_settings_are_checked(kwargs, phrase, setting):
    with pytest.raises(DataError, match=re.escape(phrase)) as info:
        DataSpec(**{"path": "d", **kwargs})
    assert setting in info.value.settings


def test_csv_cells_holding_lists(tmp_path):
    text = 'source,target\n"[""a b"", ""c""]","[\'x\', \'y\']"\n[citation needed],z\n'
    (tmp_path / "train.csv").write_text(text, encoding="utf-8")
    data = load_split(DataSpec(str(tmp_path), list_rule="join,references"), "train")
    assert data.sources == ["a b c", "[citation needed]"]
    assert data.references == [["x", "y"], ["z"]] and data.targets == ["x", "z"]
    assert load_split(DataSpec(str(tmp_path)), "train").sources[0] == '["a b", "c"]'  # without a rule: text


def test_list_rule_first_and_empty_lists(tmp_path):
    rows = [{"source": ["a", "b"], "target": ["x", "y"]}, {"source": [], "target": ["z"]}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match="t.jsonl line 2: empty source"):
        load_split(DataSpec(str(path), list_rule="first"), "train")
    data = load_split(DataSpec(str(path), list_rule="first", on_bad_line="skip"), "train")
    assert (data.sources, data.targets, data.references) == (["a"], ["x"], None)
    assert data.skipped == 1 and data.skipped_at == [
        f"{path} line 2: empty source; every pair needs a non-empty source and target"
    ]


def test_skipping_undecodable_lines_and_all_bad(tmp_path):
    write(tmp_path / "train.en", ["a dog runs", "the cat", "kids play"])
    (tmp_path / "train.de").write_bytes(b"ein hund\nkaputt \xff\nkinder\n")
    with pytest.raises(DataError, match="train.de line 2: not valid UTF-8"):
        load_split(DataSpec(str(tmp_path), "en", "de"), "train")
    data = load_split(DataSpec(str(tmp_path), "en", "de", on_bad_line="skip"), "train")
    assert data.sources == ["a dog runs", "kids play"] and data.skipped_at[0].endswith(
        "train.de line 2: not valid UTF-8; save the file as UTF-8"
    )
    assert load_split(DataSpec(str(tmp_path), "en", "de", on_bad_line="skip"), "train", limit=1).sources == [
        "a dog runs"
    ]
    write(tmp_path / "bad.txt", ["no separator", "none here"])
    with pytest.raises(DataError, match="all 2 pairs read are bad"):
        load_split(DataSpec(str(tmp_path / "bad.txt"), line_format=SCAN_FORMAT, on_bad_line="skip"), "x")


def test_side_templates_with_language_names_and_gzip(tmp_path):
    import gzip

    write(tmp_path / "train-en.txt", ["a dog runs"])
    (tmp_path / "train-de.txt.gz").write_bytes(gzip.compress(b"ein hund rennt\n"))
    message = str(pytest.raises(DataError, load_split, DataSpec(str(tmp_path)), "train").value)
    assert "give `path` '" + f"{tmp_path}/{{split}}-{{side}}.txt' `src_ext` de `tgt_ext` en" in message
    assert "(the other way round if the en files hold the sources)" in message
    spec = DataSpec(f"{tmp_path}/{{split}}-{{side}}.txt", src_ext="en", tgt_ext="de")
    assert load_split(spec, "train").targets == ["ein hund rennt"] and available_splits(spec) == ["train"]
    with pytest.raises(DataError, match="no split 'val'.*val-en.txt and .*val-de.txt not found"):
        load_split(spec, "val")


def test_folder_of_split_files_with_a_line_format(tmp_path):
    write(tmp_path / "train.txt", ["a\tb", "c\td"])
    message = str(pytest.raises(DataError, load_split, DataSpec(str(tmp_path)), "train").value)
    assert "their lines look like pairs: give `line_format` '{source}\\t{target}'" in message
    spec = DataSpec(str(tmp_path), line_format="{source}\\t{target}")
    assert load_split(spec, "train").targets == ["b", "d"] and available_splits(spec) == ["train"]
