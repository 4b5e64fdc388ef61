"""The demo's teacher: trained with `modformer teacher` on the bundled Multi30k set, scored, and bundled in float16.

    python benchmarks/demo_teacher.py [--steps 6000] [--threads 2] [--work runs/demo-teacher]

Stages, each cached under --work (a rerun continues a stopped training run with --resume and skips what is done):
1. train: `modformer teacher --data modformer/resources/multi30k --src-ext en --tgt-ext de --preset small
   --steps N --batch-size 64 --save-every 500 --threads T --out WORK/teacher`;
2. score: `modformer evaluate --model WORK/teacher` on val and test_2016_flickr (every pair, greedy, 64 new tokens at
   most), with `--json`;
3. bundle: the checkpoint in float16 (`safetensors`), its tokenizer and generation config, `teacher.json` and the
   scores into `modformer/resources/teacher-multi30k-6x6/` with a README recording the commands and the figures.

Writes benchmarks/results/demo_teacher.json with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from harness import ROOT, RUNS, Results, add_results_options, provenance, read_results, run

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.io import atomic_dir, read_json
from modformer.teacher import INFO_NAME, STATE_NAME

NAME = "demo_teacher"
DATA = ["--data", "modformer/resources/multi30k", "--src-ext", "en", "--tgt-ext", "de"]
BUNDLE = ROOT / "modformer" / "resources" / "teacher-multi30k-6x6"
SPLITS = ("val", "test_2016_flickr")


def train_stage(args) -> Path:
    out = args.work / "teacher"
    info = out / INFO_NAME
    if info.is_file() and read_json(info, "teacher info").get("completed_steps", 0) >= args.steps:
        return out
    command = ["teacher", *DATA, "--preset", "small", "--steps", args.steps, "--batch-size", 64]
    command += ["--save-every", 500, "--threads", args.threads, "--out", out]
    if (out / STATE_NAME).is_file():
        command.append("--resume")
    run(command, args.work / "train.log", threads=args.threads)
    return out


def score_stage(args, teacher: Path) -> dict:
    scores = {}
    for split in SPLITS:
        path = args.work / f"scores-{split}.json"
        if not path.is_file():
            command = ["evaluate", "--model", teacher, *DATA, "--split", split, "--json", path]
            run(command + ["--threads", args.threads], args.work / "score.log", threads=args.threads)
        scores[split] = read_json(path, "scores")
    return scores


def bundle_stage(teacher: Path, scores: dict, record: dict) -> None:
    model = load_seq2seq(teacher).half()
    tokenizer = load_tokenizer(teacher)
    with atomic_dir(BUNDLE, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copy(teacher / INFO_NAME, tmp / INFO_NAME)
        (tmp / "scores.json").write_text(json.dumps(scores, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(readme(record), encoding="utf-8")


def readme(record: dict) -> str:
    run_info = record["teacher"]
    cfg = run_info["teacher"]
    test, val = record["scores"]["test_2016_flickr"], record["scores"]["val"]
    return f"""# The demo's teacher: T5, 6+6 layers, trained on Multi30k En→De by `modformer teacher`

A plain Hugging Face checkpoint (`T5ForConditionalGeneration` and its `tokenizers` BPE tokenizer), stored in
float16 to keep the package small; `modformer demo` copies it to float32 before use
(`modformer.demo.copy_bundled_teacher`). Trained from scratch here on the bundled Multi30k training set
(`../multi30k/`, 29,000 pairs), so the demo has a teacher worth compressing without downloading anything.

Made by `python benchmarks/demo_teacher.py` ({record["date"]}, {record["machine"].get("cpu_model")}), which ran:

    modformer teacher --data modformer/resources/multi30k --src-ext en --tgt-ext de --preset {cfg["preset"]} \\
        --steps {cfg["steps"]} --batch-size {cfg["batch_size"]} --save-every {cfg["save_every"]} \\
        --threads {record["threads"]} --out runs/demo-teacher/teacher
    modformer evaluate --model runs/demo-teacher/teacher --data modformer/resources/multi30k \\
        --src-ext en --tgt-ext de --split test_2016_flickr      # and --split val

| | |
|---|---|
| architecture | preset `{cfg["preset"]}`: 6 encoder + 6 decoder layers, d_model 128, d_ff 512, 4 heads, joint BPE vocabulary |
| training | {run_info["completed_steps"]:,} steps of {cfg["batch_size"]} pairs, Adafactor, label smoothing {cfg["label_smoothing"]}, dropout {cfg["dropout"]}; {run_info["wall_s"] / 60:.0f} min with {record["threads"]} threads |
| held-out loss (500 val pairs) | {run_info["val_loss"]:.3f} |
| BLEU, val (greedy, {val["n"]:,} pairs) | {val["bleu"]:.2f} |
| BLEU, test_2016_flickr (greedy, {test["n"]:,} pairs) | {test["bleu"]:.2f} (chrF {test["chrf"]:.2f}) |

`teacher.json` is the training run's record; `scores.json` the two evaluations. Data attribution: `../multi30k/README.md`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=RUNS / "demo-teacher")
    add_results_options(parser, NAME)
    args = parser.parse_args()
    if args.from_results:  # pure measurement: nothing is derived but the bundle, which a rebuild leaves alone
        Results(args.results, NAME).write(read_results(args.from_results))
        return
    teacher = train_stage(args)
    scores = score_stage(args, teacher)
    record = {
        **provenance(threads=args.threads),
        "threads": args.threads,
        "teacher": read_json(teacher / INFO_NAME, "teacher info"),
        "scores": scores,
    }
    bundle_stage(teacher, scores, record)
    Results(args.results, NAME).write(record)
    test = scores["test_2016_flickr"]
    print(f"teacher BLEU {test['bleu']:.2f} on test_2016_flickr ({test['n']} pairs); bundled in {BUNDLE}")


if __name__ == "__main__":
    main()
