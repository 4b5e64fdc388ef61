"""Where in a stack the coarse modules should go: the same modules in another order, scored on val.

    python benchmarks/stack_order.py [--work runs/seed-claims] [--runs modular,modular-s1,...]
    python benchmarks/stack_order.py --from-results benchmarks/results/stack_order.json --results DIR

The strategies' one-stack rule (modformer/modular/strategies.py) first picks the finest module sizes for a block
count, then an order of those sizes. This benchmark asks which order: for trained modular runs of the default recipe
(seed_claims.py's folders: two seeds at 2,000 and 4,000 steps), each pair in `PAIRS` holds the same modules of one
stack in two orders, coarse modules at the bottom or at the top (or teacher layers below or above the modules), the
other stack the same in both. Each assembly is exported and scored on Multi30k `val` (where rules are chosen; test is
seed_claims.py's), greedy, at most 64 new tokens, through a CTranslate2 float32 export (token for token what
transformers generates here: `export_parity` in benchmarks/results/targets.json), one thread. Nothing is trained.

Scores are cached in <work>/stack_order_scores.json. Results: benchmarks/results/stack_order.json and .md (per pair:
each run's BLEU in both orders, the mean difference and how many runs the first order won).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from decoder_gap import TARGET, assembly_bleu
from harness import (
    DATASETS,
    RUNS,
    Results,
    ScoreCache,
    add_results_options,
    measured_or_recorded,
    provenance,
)

from modformer.data import load_split
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel

NAME = "stack_order"
DERIVED = ("summary",)
THREADS = 1
SPLIT = "val"
RUN_FOLDERS = ("modular", "modular-s1", "modular-2x-steps", "modular-2x-steps-s1")
T = "1,1,1,1,1,1,1,1,1,1,1,1"  # the teacher's own 12 layers
# (what the pair compares, first order, second order): the first is the rule's order since the change
PAIRS = [
    (
        "decoder, 4 blocks: 4-modules at the bottom / at the top",
        "enc=2,2,2,2,2,2 dec=4,4,2,2",
        "enc=2,2,2,2,2,2 dec=2,2,4,4",
    ),
    (
        "encoder, 4 blocks: 4-modules at the bottom / at the top",
        "enc=4,4,2,2 dec=2,2,2,2,2,2",
        "enc=2,2,4,4 dec=2,2,2,2,2,2",
    ),
    (
        "decoder, 4 blocks: the 6-module at the bottom / at the top",
        "enc=2,2,2,2,2,2 dec=6,2,2,2",
        "enc=2,2,2,2,2,2 dec=2,2,2,6",
    ),
    ("decoder, 5 blocks: the 4-module at the bottom / at the top", f"enc={T} dec=4,2,2,2,2", f"enc={T} dec=2,2,2,2,4"),
    (
        "decoder, 10 blocks: 2-modules at the bottom / at the top",
        f"enc={T} dec=2,2,1,1,1,1,1,1,1,1",
        f"enc={T} dec=1,1,1,1,1,1,1,1,2,2",
    ),
    (
        "decoder, 8 blocks: teacher layers on top / below",
        f"enc={T} dec=2,2,2,2,1,1,1,1",
        f"enc={T} dec=1,1,1,1,2,2,2,2",
    ),
    ("decoder, 7 blocks: teacher layers on top / below", f"enc={T} dec=2,2,2,2,2,1,1", f"enc={T} dec=1,1,2,2,2,2,2"),
    (
        "encoder, 8 blocks: teacher layers on top / below",
        "enc=2,2,2,2,1,1,1,1 dec=2,2,2,2,2,2",
        "enc=1,1,1,1,2,2,2,2 dec=2,2,2,2,2,2",
    ),
    ("decoder, 3 blocks (12-3): 4,4,4 / 6,2,4", f"enc={T} dec=4,4,4", f"enc={T} dec=6,2,4"),
    ("decoder, 3 blocks (12-3): 4,4,4 / 4,2,6", f"enc={T} dec=4,4,4", f"enc={T} dec=4,2,6"),
]


def measure(args) -> dict:
    torch.set_num_threads(THREADS)
    cache = ScoreCache(args.work / "stack_order_scores.json")
    splits = {SPLIT: load_split(DATASETS["multi30k"].spec(), SPLIT)}
    assemblies = list(dict.fromkeys(a for _, first, second in PAIRS for a in (first, second)))
    runs = {}
    for run in args.runs:
        folder = args.work / run
        modular = ModularModel.from_pretrained(folder)
        training = modular.config.training
        runs[run] = {
            "steps": training.get("completed_steps"),
            "seed": training.get("seed"),
            "granularities": modular.config.granularities,
            "bleu": {},
        }
        for text in assemblies:
            key = f"{run}|{training.get('completed_steps')}|{text}"
            bleu = assembly_bleu(modular, Assembly.parse(text), key, cache, splits, folder)[SPLIT]
            print(f"{run} {text}: BLEU {bleu:.2f}", flush=True)
            runs[run]["bleu"][text] = bleu
    return {
        **provenance(threads=THREADS),
        "settings": {"split": SPLIT, "target": TARGET, "runs": args.runs},
        "pairs": [{"what": what, "first": first, "second": second} for what, first, second in PAIRS],
        "runs": runs,
    }


def report(measured: dict) -> dict:
    """`summary`: per pair, the first order's BLEU minus the second's, per run and on average, and its wins."""
    summary = []
    runs = measured["runs"]
    for pair in measured["pairs"]:
        differences = {  # in --runs order (the file's keys are sorted)
            run: round(runs[run]["bleu"][pair["first"]] - runs[run]["bleu"][pair["second"]], 2)
            for run in measured["settings"]["runs"]
        }
        summary.append(
            pair
            | {
                "difference_per_run": differences,
                "mean_difference": round(sum(differences.values()) / len(differences), 2),
                "first_wins": sum(d > 0 for d in differences.values()),
                "runs": len(differences),
            }
        )
    return {**measured, "summary": summary}


def markdown(result: dict) -> str:
    runs = {run: result["runs"][run] for run in result["settings"]["runs"]}
    lines = [
        "# Stack order: the same modules, coarse at the bottom or at the top",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine'].get('cpu_model')}, {THREADS} thread. BLEU on Multi30k {SPLIT}, greedy, at most 64 "
        f"new tokens, through a {result['settings']['target']} export. Runs (seed_claims.py's folders): "
        + ", ".join(f"`{name}` ({r['steps']} steps, seed {r['seed']})" for name, r in runs.items())
        + ".",
        "",
        f"| pair | first order | second order | {' | '.join(runs)} | mean | first wins |",
        "|---|---|---|" + "---|" * len(runs) + "---|---|",
    ]
    for row in result["summary"]:
        cells = " | ".join(
            f"{runs[name]['bleu'][row['first']]:.2f} / {runs[name]['bleu'][row['second']]:.2f}" for name in runs
        )
        lines.append(
            f"| {row['what']} | `{row['first']}` | `{row['second']}` | {cells} | {row['mean_difference']:+.2f} "
            f"| {row['first_wins']} of {row['runs']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=RUNS / "seed-claims")
    parser.add_argument("--runs", default=",".join(RUN_FOLDERS), help="modular run folders under --work")
    add_results_options(parser, NAME)
    args = parser.parse_args()
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    result = report(measured_or_recorded(args, measure, DERIVED))
    print("wrote", Results(args.results, NAME).write_with_markdown(result, markdown(result)))


if __name__ == "__main__":
    main()
