"""Screening recipes for the decoder's coarse modules: train each candidate once, score the shapes that trail.

    python benchmarks/decoder_gap.py [--work runs/seed-claims] [--steps 2000] [--recipes a,b] [--seeds 0] [--also a:1]
        [--carry benchmarks/results/decoder_gap.json]
    python benchmarks/decoder_gap.py --from-results benchmarks/results/decoder_gap.json --results DIR

`benchmarks/seed_claims.py` is the judge (students beside modular runs, two seeds, torch generation, timing); it
takes hours per recipe. This benchmark is the sieve before it: each candidate recipe (`RECIPES`, `modformer train`
options on top of `COMMON` and the seed recipe `SEED`) is trained as a user runs it, on the 12+12 Multi30k teacher,
one thread, into the same work folder and with the same folder names as seed_claims.py's variants
(`<work>/modular-<recipe>[-s<seed>]`), so a candidate that goes on to the judge is not trained twice. Then the
shapes that trail the students (12-3, 12-2) and two that do not (6-6, 4-4), the strategies' assemblies of those
shapes, are scored on `val` (where recipes are chosen) and `test_2016_flickr` (reported): greedy, at most 64 new
tokens, through a CTranslate2 float32 export (token for token what transformers generates here: `export_parity` 1.0
in benchmarks/results/targets.json; a tenth of the time). Each run's held-out loss of the uniform assemblies (all
2-modules, all 3-modules, ...) every 200 steps comes from its trainer checkpoint: the curves of `decoder_gap.png`.

Every training run and score is cached under --work; a rerun skips what is done and resumes a stopped run.
`--carry FILE` (an earlier decoder_gap.json, e.g. the committed one) stands in for runs this work folder lacks: a
recipe's seed or a student that has not started here and that FILE has is not trained again; FILE's record of it is
kept, marked `carried` (and † in the table). So a new candidate is screened beside the old ones without retraining
them on a machine that no longer has their folders.
Results: benchmarks/results/decoder_gap.json, .md and .png, with seed_claims.json's rows at the same shapes and steps
(students, the default recipe) beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from claims.config import seed_recipe
from claims.train import completed_steps, started
from harness import (
    DATASETS,
    RESULTS,
    RUNS,
    TEACHER,
    Results,
    ScoreCache,
    add_results_options,
    data_args,
    measured_or_recorded,
    provenance,
    read_results,
    run,
)

from modformer.data import load_split
from modformer.evaluation import text_scores
from modformer.io import atomic_path
from modformer.modular.export import export_assembly
from modformer.modular.model import CONFIG_NAME, ModularModel
from modformer.modular.strategies import assembly_for_shape
from modformer.recipe import STATE_NAME
from modformer.serving.ctranslate2_engine import CTranslate2Generator, convert
from modformer.serving.targets import Target

NAME = "decoder_gap"
DERIVED = ("summary",)
SEED_CLAIMS = RESULTS / "seed_claims.json"
COMMON = ["--batch-size", "32"]  # the modules (--granularities 2,3,4,6) are part of the seed recipe, SEED
# Every recipe is the seed recipe (the default when these were screened) with its options on top, spelled out so that
# a new default leaves each recipe as it was (the last of a repeated option wins).
SEED = seed_recipe()
UNIFORM_1E3 = ("--lr", "1e-3", "--no-curriculum")
# stop 31's default beyond `_per_row`: the candidates of the eighth sieve are it with one option more
DEFAULT_31 = (*UNIFORM_1E3, "--teacher-encoder-share", "0.5", "--granularities", "2,4,6", "--no-dropout")


def _per_row(rows: int, *more: str) -> list[str]:
    """Six hybrids per step on a split batch, each row through `rows` of them, no attention or hidden-state loss."""
    return [
        *("--hybrids-per-step", "6", "--split-batch", "--hybrids-per-row", str(rows)),
        "--w-attn",
        "0",
        "--w-hidden",
        "0",
        *more,
    ]


RECIPES = {  # name -> `modformer train` options; "h3s" = three hybrids per step, each on a third of the batch
    "h3s-no-attn": ["--hybrids-per-step", "3", "--split-batch", "--w-attn", "0"],
    "h3s-no-attn-top": ["--hybrids-per-step", "3", "--split-batch", "--w-attn", "0", "--top-init"],
    "h3s-no-attn-dep": ["--hybrids-per-step", "3", "--split-batch", "--w-attn", "0", "--deployed-share", "0.33"],
    "h3s-no-attn-no-hidden": ["--hybrids-per-step", "3", "--split-batch", "--w-attn", "0", "--w-hidden", "0"],
    "h6s-no-attn": ["--hybrids-per-step", "6", "--split-batch", "--w-attn", "0"],
    "h6s-no-attn-no-hidden": ["--hybrids-per-step", "6", "--split-batch", "--w-attn", "0", "--w-hidden", "0"],
    "h6s-no-attn-no-hidden-lr1e-3": [
        *("--hybrids-per-step", "6", "--split-batch", "--w-attn", "0", "--w-hidden", "0", "--lr", "1e-3")
    ],
    "h6s-no-attn-no-hidden-lr2e-3": [
        *("--hybrids-per-step", "6", "--split-batch", "--w-attn", "0", "--w-hidden", "0", "--lr", "2e-3")
    ],
    "h12s-no-attn-no-hidden-lr1e-3": [
        *("--hybrids-per-step", "12", "--split-batch", "--w-attn", "0", "--w-hidden", "0", "--lr", "1e-3")
    ],
    "h6s-no-attn-no-hidden-lr1e-3-uniform": [
        *("--hybrids-per-step", "6", "--split-batch", "--w-attn", "0", "--w-hidden", "0", "--lr", "1e-3"),
        "--no-curriculum",
    ],
    # each row through 2 (3) of the 6 hybrids: every module sees about 2x (3x) the rows per step, at about that cost
    "h6s2-no-attn-no-hidden-lr1e-3-uniform": _per_row(2, *UNIFORM_1E3),
    "h6s3-no-attn-no-hidden-lr1e-3-uniform": _per_row(3, *UNIFORM_1E3),
    # a third (a half, two thirds) of the hybrids keep the teacher's encoder whole, as 12-3 and every 12-x assembly does
    **{
        f"h6s2-no-attn-no-hidden-lr1e-3-uniform-te{name}": _per_row(2, *UNIFORM_1E3, "--teacher-encoder-share", share)
        for name, share in (("33", "0.33"), ("50", "0.5"), ("67", "0.67"))
    },
    # the default's modules without the 3-modules (--granularities 2,4,6): each module is in a third of the hybrids,
    # not a quarter, so it sees a third more rows at no extra cost; and the same with each row through three hybrids
    **{
        f"h6s{rows}-no-attn-no-hidden-lr1e-3-uniform-te50-g246": _per_row(
            rows, *UNIFORM_1E3, "--teacher-encoder-share", "0.5", "--granularities", "2,4,6"
        )
        for rows in (2, 3)
    },
    # the default of stop 29 with each stack's top module started as the stack's top layer (as a student's top layer
    # is), not the bottom of its span
    "h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246-top": _per_row(
        2, *UNIFORM_1E3, "--teacher-encoder-share", "0.5", "--granularities", "2,4,6", "--top-init"
    ),
    # the default of stop 29 with its modules trained without dropout (the teacher's 0.1 is for 30 epochs of training
    # from scratch; a module gets about two epochs' rows)
    "h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246-nodrop": _per_row(2, *DEFAULT_31),
    # the default of stop 31 with a share of each step's stacks drawn whole from those the strategies deploy
    # (`dec=4,4,4` among them), so that a coarse module learns on the input it is deployed with, not only on a mix
    **{
        f"h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246-nodrop-dep{name}": _per_row(
            2, *DEFAULT_31, "--deployed-share", share
        )
        for name, share in (("33", "0.33"), ("67", "0.67"))
    },
    # the default of stop 31 with logit distillation at temperature 1 (word-level distillation as Kim & Rush ran it):
    # the teacher's distribution unsoftened, its mode weighed as the best 12-3 student (pseudo-labels) weighs it
    "h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246-nodrop-t1": _per_row(2, *DEFAULT_31, "--temperature", "1"),
    # the default of stop 31 with each row through three hybrids: every module on all the batch's rows, as a
    # student's layer; dearer, but a hybrid that keeps the teacher's encoder no longer runs it (the encoder reuse)
    "h6s3-no-attn-no-hidden-lr1e-3-uniform-te50-g246-nodrop": _per_row(3, *DEFAULT_31),
    # the default of stop 31 saving a moving average of the module weights (decay 0.995: about the last 200 steps):
    # does averaging the noisy updates of modules that serve many neighbours carry better to held-out data?
    "h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246-nodrop-ema995": _per_row(2, *DEFAULT_31, "--ema", "0.995"),
    # cross-entropy alone needs no teacher pass: its cost goes to each row running through four of the six hybrids
    "h6s4-ce-lr1e-3-uniform": _per_row(4, "--w-logit", "0", *UNIFORM_1E3),
    "h6s-no-attn-no-hidden-uniform": [
        *("--hybrids-per-step", "6", "--split-batch", "--w-attn", "0", "--w-hidden", "0", "--no-curriculum")
    ],
}
# Recipes trained on the teacher's own greedy outputs for the training sources (sequence-level distillation, what
# the `pseudo` students train on) instead of the references: `pseudo_data` makes that data set once.
PSEUDO = {
    "h6s-no-attn-no-hidden-lr1e-3-pseudo": RECIPES["h6s-no-attn-no-hidden-lr1e-3"],
    # the default of stop 29 (granularities 2,4,6, each row through two hybrids) on the teacher's outputs
    "h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246-pseudo": RECIPES[
        "h6s2-no-attn-no-hidden-lr1e-3-uniform-te50-g246"
    ],
}
RECIPES |= PSEUDO
# Diagnostic students (`modformer baseline`), trained and scored the same way: name -> (method, shape, options).
# `kd-12-3-decoder-only` trains what a modular 12-3 trains (three decoder layers, everything else the teacher's):
# set beside the KD student of seed_claims.json it says how much of the gap the frozen context explains.
# `-b8` trains it on 8 rows a step, the rows each module gets with `--split-batch` (every module is in a quarter of
# the hybrids, so it sees a quarter of the batch): what the student scores on a module's share of the data; `-b16`
# on a module's share with `--hybrids-per-row 2`.
STUDENTS = {
    "kd-12-3-decoder-only": ("kd", "12-3", ["--train-only", "decoder"]),
    "kd-12-3-decoder-only-b8": ("kd", "12-3", ["--train-only", "decoder", "--batch-size", "8"]),
    "kd-12-3-decoder-only-b16": ("kd", "12-3", ["--train-only", "decoder", "--batch-size", "16"]),
    "kd-6-6": ("kd", "6-6", []),  # the yardstick for the modular run's wall time (train_once)
    # students without dropout, as the default's modules train: does what lifted the modules lift them too?
    "sft-12-3-nodrop": ("sft", "12-3", ["--no-dropout"]),
    "kd-12-3-nodrop": ("kd", "12-3", ["--no-dropout"]),
    "kd-6-6-nodrop": ("kd", "6-6", ["--no-dropout"]),
    # what three decoder layers in the teacher's frozen context reach without dropout (section 3's student, as the
    # default's modules now train): the ceiling of `dec=4,4,4` trained as a student would train it
    "kd-12-3-decoder-only-nodrop": ("kd", "12-3", ["--train-only", "decoder", "--no-dropout"]),
    # the same on the teacher's outputs (the best 12-3 students' targets; the benchmark's pseudo-data, made once)
    "pseudo-12-3-decoder-only-nodrop": ("pseudo", "12-3", ["--train-only", "decoder", "--no-dropout"]),
    # every weight but the encoder's: three decoder layers plus the embeddings, final norm and (tied) head, the most
    # that weights carried per shape could add around the teacher's encoder at 12-3
    "kd-12-3-all-but-encoder-nodrop": ("kd", "12-3", ["--train-only", "all-but-encoder", "--no-dropout"]),
    "pseudo-12-3-all-but-encoder-nodrop": ("pseudo", "12-3", ["--train-only", "all-but-encoder", "--no-dropout"]),
    # seed_claims' pseudo-label student as it trains there (every weight, the teacher's dropout): the 12-3 bar, here
    # in the same export and scoring as the students above, and with a second seed
    "pseudo-12-3": ("pseudo", "12-3", []),
}
SHAPES = ("6-6", "4-4", "12-3", "12-2")
SPLITS = ("val", "test_2016_flickr")
TARGET = "ctranslate2:float32"
THREADS = 1
STEPS = 2000  # the screening budget (--steps); other budgets train into their own folders (`budget`)


def budget(steps: int) -> str:
    """The folder-name part of a longer (or shorter) budget than STEPS, as seed_claims.py names its longer variants
    (`-2x-steps`): a run is never resumed into another budget, which would overwrite it on another schedule."""
    if steps == STEPS:
        return ""
    return f"-{steps // STEPS}x-steps" if steps % STEPS == 0 else f"-{steps}-steps"


def run_folder(work: Path, recipe: str, seed: int, steps: int = STEPS) -> Path:
    """seed_claims.py's folder name for a variant `modular-<recipe>` (seed s > 0 adds `-s<s>`)."""
    name = f"modular-{recipe}{budget(steps)}"
    return work / (f"{name}-s{seed}" if seed else name)


def training(out: Path) -> dict:
    """The run's `training` record (settings, completed steps, wall time); empty where there is no run yet."""
    path = out / CONFIG_NAME
    return json.loads(path.read_text(encoding="utf-8")).get("training", {}) if path.is_file() else {}


def completed(out: Path) -> int:
    return completed_steps(out)[0]


def pseudo_data(work: Path) -> Path:
    """Multi30k with the teacher's greedy outputs (64 new tokens at most, as `modformer baseline pseudo`) as the
    training targets, the held-out splits as they are: `<work>/pseudo-data`, made once. Generated through a
    CTranslate2 float32 conversion of the teacher (token for token what transformers generates: `export_parity`)."""
    out = work / "pseudo-data"
    data = DATASETS["multi30k"]
    if not (out / f"train.{data.tgt_ext}").is_file():
        print("pseudo-labels: the teacher's outputs for the training sources", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        target = Target.parse(TARGET)
        with tempfile.TemporaryDirectory() as tmp:
            generator = CTranslate2Generator(convert(TEACHER, Path(tmp) / "ct2", target), target, threads=THREADS)
            sources = (data.path / f"train.{data.src_ext}").read_text(encoding="utf-8").splitlines()
            labels = generator.generate(sources, max_new_tokens=64, batch_size=64)
        for split in (data.val, data.test):
            for ext in (data.src_ext, data.tgt_ext):
                shutil.copy(data.path / f"{split}.{ext}", out / f"{split}.{ext}")
        shutil.copy(data.path / f"train.{data.src_ext}", out / f"train.{data.src_ext}")
        with atomic_path(out / f"train.{data.tgt_ext}") as tmp:
            tmp.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return out


def train(work: Path, recipe: str, seed: int, steps: int) -> Path:
    out = run_folder(work, recipe, seed, steps)
    if completed(out) < steps:
        again = ["--resume"] if (out / STATE_NAME).is_file() else ["--overwrite"]
        print(f"training {out.name} ({steps} steps, {THREADS} thread)", flush=True)
        data = data_args("multi30k")
        if recipe in PSEUDO:
            data = ["--data", pseudo_data(work), *data[2:]]  # the same extensions and held-out split
        command = ["train", "--teacher", TEACHER, *data, "--steps", steps, *COMMON, *SEED]
        options = [*RECIPES[recipe], "--seed", seed, "--out", out, *again]
        run([*command, *options], out.with_name(f"{out.name}.log"), threads=THREADS)
    return out


def student_folder(work: Path, name: str, seed: int, steps: int = STEPS) -> Path:
    name = f"student-{name}{budget(steps)}"
    return work / (f"{name}-s{seed}" if seed else name)


def train_student(work: Path, name: str, seed: int, steps: int) -> Path:
    out = student_folder(work, name, seed, steps)
    if completed(out) < steps:
        method, shape, options = STUDENTS[name]
        again = ["--resume"] if (out / STATE_NAME).is_file() else ["--overwrite"]
        print(f"training {out.name} ({steps} steps, {THREADS} thread)", flush=True)
        command = ["baseline", method, "--teacher", TEACHER, "--shape", shape, *data_args("multi30k")]
        command += ["--steps", steps, "--batch-size", 32, *options, "--seed", seed, "--out", out, *again]
        if method == "pseudo":  # the teacher's outputs made once for every run here, not once per student
            command += ["--pseudo-labels", pseudo_data(work) / f"train.{DATASETS['multi30k'].tgt_ext}"]
        run(command, out.with_name(f"{out.name}.log"), threads=THREADS)
    return out


def bleu_in_engine(hf_folder: Path, splits: dict) -> dict[str, float]:
    """BLEU per split of the plain checkpoint in `hf_folder`, generated through a CTranslate2 float32 conversion."""
    target = Target.parse(TARGET)
    with tempfile.TemporaryDirectory() as tmp:
        generator = CTranslate2Generator(convert(hf_folder, Path(tmp) / "ct2", target), target, threads=THREADS)
        return {
            name: text_scores(generator.generate(list(pairs.sources), max_new_tokens=64), list(pairs.targets))["bleu"]
            for name, pairs in splits.items()
        }


def score(out: Path, cache: ScoreCache, splits: dict) -> dict:
    """BLEU of each shape's strategy assembly on each split (cached by run folder and assembly)."""
    modular = ModularModel.from_pretrained(out)
    c = modular.config
    scores = {}
    for shape in SHAPES:
        assembly = assembly_for_shape(shape, c.encoder_layers, c.decoder_layers, c.granularities)
        bleu = assembly_bleu(modular, assembly, f"{out.name}|{completed(out)}|{assembly.format()}", cache, splits, out)
        scores[shape] = {"assembly": assembly.format(), **bleu}
    return scores


def assembly_bleu(
    modular: ModularModel, assembly, key: str, cache: ScoreCache, splits: dict, folder: Path
) -> dict[str, float]:
    """BLEU per split of one assembly of `modular` (the run in `folder`), exported and generated in the engine
    (`bleu_in_engine`); cached under `key` for the weights in `folder`."""
    bleu = cache.get(key, folder)
    if bleu is None:
        with tempfile.TemporaryDirectory() as tmp:
            export_assembly(modular, assembly, Path(tmp) / "export")
            bleu = bleu_in_engine(Path(tmp) / "export", splits)
        cache.put(key, folder, bleu)
    return bleu


def history(out: Path) -> list[dict]:
    """The run's periodic held-out losses (trainer checkpoint): {"step": n, "k2": loss, ..., "mean": loss}."""
    return torch.load(out / STATE_NAME, weights_only=False).get("history", [])


def carried_record(carry: dict, kind: str, name: str, seed: int, steps: int, out: Path) -> dict | None:
    """--carry's record of a recipe's (kind "runs") or a student's (kind "students") run, if it has not started in
    `out` and the earlier file has it at these steps; marked `carried`."""
    if not carry or started(out):
        return None
    key = "recipe" if kind == "runs" else "student"
    for record in carry.get(kind, []):
        if record[key] == name and record["seed"] == seed and record["steps"] == steps:
            date = record.get("carried", carry["date"])  # a record carried before keeps the date it was made
            print(f"carried: {out.name} (from {date})", flush=True)
            return record | {"carried": date}
    return None


def measure(args) -> dict:
    torch.set_num_threads(THREADS)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = ScoreCache(args.work / "decoder_gap_scores.json")
    splits = {name: load_split(DATASETS["multi30k"].spec(), name) for name in SPLITS}
    carry = read_results(args.carry) if args.carry else {}
    runs = []
    for recipe in args.recipes:
        for seed in [*args.seeds, *args.also.get(recipe, [])]:
            record = carried_record(
                carry, "runs", recipe, seed, args.steps, run_folder(args.work, recipe, seed, args.steps)
            )
            if record:
                runs.append(record)
                continue
            out = train(args.work, recipe, seed, args.steps)
            info = training(out)
            runs.append(
                {
                    "recipe": recipe,
                    "options": RECIPES[recipe],
                    "seed": seed,
                    "steps": args.steps,
                    "train_s": info.get("wall_s"),
                    "threads": info.get("threads"),
                    "scores": score(out, cache, splits),
                    "history": history(out),
                }
            )
    students = []
    for name, (method, shape, options) in STUDENTS.items():
        if name not in args.students:
            continue
        for seed in [*args.seeds, *args.also.get(name, [])]:
            record = carried_record(
                carry, "students", name, seed, args.steps, student_folder(args.work, name, seed, args.steps)
            )
            if record:
                students.append(record)
                continue
            out = train_student(args.work, name, seed, args.steps)
            key = f"{out.name}|{args.steps}"
            bleu = cache.get(key, out)
            if bleu is None:
                bleu = bleu_in_engine(out, splits)
                cache.put(key, out, bleu)
            info = json.loads((out / "modformer.json").read_text(encoding="utf-8"))
            students.append(
                {"student": name, "method": method, "shape": shape, "options": options, "seed": seed}
                | {"steps": args.steps, "train_s": info.get("wall_s"), "scores": bleu}
                | {"history": info.get("history", [])}
            )
    claims = read_results(SEED_CLAIMS)
    reference = [
        {k: r[k] for k in ("method", "shape", "steps", "seed", "bleu")}
        for r in claims["rows"]
        if r["task"] == "multi30k" and r["shape"] in SHAPES and r["steps"] == args.steps and "random" not in r["method"]
    ]
    return {
        **provenance(threads=THREADS),
        "settings": vars_of(args),
        "runs": runs,
        "students": students,
        "seed_claims_rows": reference,
    }


def vars_of(args) -> dict:
    return {"steps": args.steps, "recipes": args.recipes, "students": args.students, "seeds": args.seeds} | {
        "common": COMMON,
        "target": TARGET,
    }


def report(measured: dict) -> dict:
    """`summary`: per recipe, the mean over seeds (listed) of each shape's test BLEU and val BLEU; the best student's
    test BLEU per shape (mean of its seeds) from seed_claims.json."""
    summary = {"recipes": {}, "best_student": {}}
    for recipe in dict.fromkeys(r["recipe"] for r in measured["runs"]):
        runs = [r for r in measured["runs"] if r["recipe"] == recipe]
        summary["recipes"][recipe] = {
            shape: {split: round(sum(r["scores"][shape][split] for r in runs) / len(runs), 2) for split in SPLITS}
            for shape in SHAPES
        }
        summary["recipes"][recipe]["train_s"] = round(sum(r["train_s"] or 0 for r in runs) / len(runs), 1)
        summary["recipes"][recipe]["seeds"] = [r["seed"] for r in runs]
        if all(r.get("carried") for r in runs):
            summary["recipes"][recipe]["carried"] = True
    for shape in SHAPES:
        by_method: dict[str, list[float]] = {}
        for row in measured["seed_claims_rows"]:
            if row["shape"] == shape and row["method"] in ("sft", "kd", "pseudo"):
                by_method.setdefault(row["method"], []).append(row["bleu"])
        if by_method:
            method, bleus = max(by_method.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
            summary["best_student"][shape] = {"method": method, "bleu": round(sum(bleus) / len(bleus), 2)}
    return {**measured, "summary": summary}


def machine(m: dict) -> str:
    return f"{m.get('cpu_model')}, {m.get('physical_cores')} cores, torch {m.get('torch')}"


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [
        "# Decoder gap: candidate recipes, screened",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine(result['machine'])}; {THREADS} thread per run. BLEU through a {TARGET} export, greedy, "
        "at most 64 new tokens.",
        "",
        f"| recipe | steps | train s | {' | '.join(f'{shape} val / test' for shape in SHAPES)} |",
        "|---|---|---|" + "---|" * len(SHAPES),
    ]
    for recipe, row in s["recipes"].items():
        cells = " | ".join(f"{row[shape]['val']:.2f} / {row[shape]['test_2016_flickr']:.2f}" for shape in SHAPES)
        seeds = row.get("seeds", [0])
        name = recipe if len(seeds) == 1 else f"{recipe} (mean of seeds {', '.join(map(str, seeds))})"
        name += " †" if row.get("carried") else ""
        lines.append(f"| {name} | {result['settings']['steps']} | {row['train_s']:.0f} | {cells} |")
    students = " | ".join(
        f"{s['best_student'][shape]['bleu']:.2f} test ({s['best_student'][shape]['method']})"
        if shape in s["best_student"]
        else "-"
        for shape in SHAPES
    )
    lines.append(
        f"| best student (seed_claims.json, torch generation, test) | {result['settings']['steps']} | | {students} |"
    )
    for st in result.get("students", []):
        cells = " | ".join(
            f"{st['scores']['val']:.2f} / {st['scores']['test_2016_flickr']:.2f}" if shape == st["shape"] else "-"
            for shape in SHAPES
        )
        lines.append(
            f"| student `{st['student']}` (seed {st['seed']}){' †' if st.get('carried') else ''} | {st['steps']} "
            f"| {st['train_s'] or 0:.0f} | {cells} |"
        )
    carried = sorted({r["carried"] for r in [*result["runs"], *result.get("students", [])] if r.get("carried")})
    if carried:
        lines += [
            "",
            f"† carried from an earlier run of this benchmark ({', '.join(carried)}; `--carry`), not trained here.",
        ]
    lines += ["", "Options of each recipe (on top of `" + " ".join([*COMMON, *SEED]) + "`, the seed recipe):", ""]
    lines += [f"- `{name}`: `{' '.join(RECIPES.get(name, []))}`" for name in s["recipes"]]
    for name in dict.fromkeys(st["student"] for st in result.get("students", [])):
        method, shape, options = STUDENTS[name]
        lines.append(f"- student `{name}`: `modformer baseline {method} --shape {shape} {' '.join(options)}`")
    return "\n".join(lines) + "\n"


def plot(result: dict, results: Results) -> bool:
    """The held-out loss of each uniform assembly over training, a panel per module size; False where there is
    nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    probes = [k for k in ("k2", "k3", "k4", "k6") if any(k in h for r in runs for h in r["history"])]
    if not probes:  # students only (--recipes ''): no modules' losses to plot
        return False
    # a colour and line style per run (tens of them), one legend under the panels, as many rows as it needs
    styles = [(colour, dash) for dash in ("-", "--", ":") for colour in plt.get_cmap("tab20").colors]
    figure, axes = plt.subplots(1, len(probes), figsize=(4 * len(probes), 3.4), sharey=True, squeeze=False)
    for ax, probe in zip(axes[0], probes, strict=True):
        for i, r in enumerate(runs):
            points = [(h["step"], h[probe]) for h in r["history"] if probe in h]
            if points:
                colour, dash = styles[i % len(styles)]
                ax.plot(*zip(*points, strict=True), color=colour, linestyle=dash, label=f"{r['recipe']} s{r['seed']}")
        ax.set_title(f"uniform {probe[1:]}-modules")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out loss (val)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=3, fontsize=7, frameon=False)
    figure.tight_layout()
    results.save_figure(figure, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=RUNS / "seed-claims")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--students", default=",".join(STUDENTS), help=f"comma-separated, of {', '.join(STUDENTS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME:SEED",
        help="one more seed of one recipe or student (repeatable), e.g. the leading candidate's second seed",
    )
    parser.add_argument(
        "--carry",
        type=Path,
        help="an earlier results file: its runs and students stand in for those this --work has not started",
    )
    add_results_options(parser, NAME)
    args = parser.parse_args()
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    args.students = [r.strip() for r in args.students.split(",") if r.strip()]
    unknown = [r for r in args.students if r not in STUDENTS]
    if unknown:
        parser.error(f"unknown student(s) {', '.join(unknown)}; known: {', '.join(STUDENTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    also: dict[str, list[int]] = {}
    for item in args.also:
        name, _, seed = item.partition(":")
        if name not in [*args.recipes, *args.students] or not seed.isdigit():
            parser.error(f"--also takes NAME:SEED with a recipe of --recipes or a student of --students, got {item!r}")
        also.setdefault(name, []).append(int(seed))
    args.also = also
    result = report(measured_or_recorded(args, measure, DERIVED))
    results = Results(args.results, NAME)
    written = results.write_with_markdown(result, markdown(result))
    drawn = plot(result, results)
    print(f"wrote {written}" + (f"; the plot {results.path('.png')}" if drawn else ""))


if __name__ == "__main__":
    main()
