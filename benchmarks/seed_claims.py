"""The seed's claims on real data: one modular run against SFT, KD and pseudo-labelling students of fixed shapes.

    python benchmarks/seed_claims.py [--work runs/seed-claims] [--steps 2000] [--stages ...] [--report-only]
        [--carry FILE [--carry-as OLD=NEW]]
    python benchmarks/seed_claims.py --from-results benchmarks/results/seed_claims.json --results DIR

Every training run and every score is cached under --work; a rerun skips what is done, and a run that was stopped
mid-training continues from its last checkpoint (`--resume`), so the benchmark can be interrupted at any time.
Training goes through the CLI exactly as a user runs it; scoring and timing load the results in this process.

Multi30k En->De (../shared/data/multi30k_en_de; train to train, val for held-out losses, every reported figure on
test_2016_flickr, greedy, sacrebleu BLEU and chrF). Teacher: ../shared/models/multi30k-t5-12x12, used as any
user's checkpoint.

1. modular: `modformer train` with its defaults (granularities 2,4,6 for the 12-layer stacks; --steps,
   --batch-size), two seeds (`modular`, `modular-s1`; DEFAULT_SEEDS).
2. assemblies: the teacher; 12-6, 6-6, 4-4 (size-first shapes), 12-3, 12-2 (speed-first), 3-3, 2-2; and --spread
   assemblies from the size-first and speed-first sequences with depth ratios (teacher layers / assembly blocks)
   spread log-evenly over 1.1x-6x (seed 0); seed 1 at the named shapes and the size-first assembly nearest 2x.
3. random orders: at 6-6 and 12-3, up to 5 other valid assemblies with the same block counts, drawn at random
   (granularities and their order): the same modules, no training; for each seed.
4. students: `modformer baseline sft|kd|pseudo` at 6-6 and 12-3, the modular run's steps and batch size; and again
   at every longer variant's steps (5b), so that each modular run is compared with students of its own budget
   (`students/<method>-<shape>-<steps>steps-s0`). The teacher's greedy outputs for the 29,000 training sources are
   generated once (timed), before the first pseudo student trains, and shared by every pseudo student.
5. ablations of the seed recipe (`modular-v0`): without the curriculum, and without attention distillation (same
   steps), scored at 6-6 and 12-3.
5b. variants (`VARIANTS`): the default recipe at twice the steps (`modular-2x-steps`, two seeds); and the older
   recipes, each named in full (`config.seed_recipe`) so that a new default leaves them as they were: the seed's
   recipe (`modular-v0`: one hybrid per step with attention distillation and the curriculum, the default until the
   decoder-gap sieves), with three hybrids per step (`modular-h3`), that without attention distillation, and that
   at twice the steps (two seeds each). Each is scored at the named shapes, the size-first assembly nearest 2x, and
   the same random orders as 3; claims are reported for it (means over its seeds) beside the default run's, against
   students trained for its steps (4).
6. seeds: where a modular run's assembly (the default run or a variant, mean over its seeds) and a student of the
   same shape and steps are within 0.5 BLEU, the student gets a second seed and the comparison uses the means.
6b. plans: `modformer profile` once, then `modformer plan` of every modular run (each seed) with the budget
   `params_m<=` half the teacher's parameters (at least 2x smaller), searched and validated on `val` (500 pairs);
   the chosen assembly is scored on test like the others (rule `planned`).
7. timing: every Multi30k model above and the teacher, round-robin in one run (`generate` of exactly 32 new tokens
   for a 32-token source, batch 1, the profiler's timer and thread count; the least of 10 rounds, as the profiler's
   default statistic): speed_ratio = teacher ms / model ms. Models added to the benchmark after that run are timed
   in a further round-robin run together with the teacher, and their ratio uses the teacher's time from that run.
8. squad: SQuAD question generation (../shared/data/squad_qg): a 12+12 teacher trained with `modformer teacher
   --preset base`, one modular run and a KD 6-6 student (same steps); BLEU-4 (sacrebleu) and ROUGE-L on the first
   --squad-eval pairs of `valid`, timed like 7.

Writes benchmarks/results/seed_claims.json (`rows`: one per model), seed_claims.md (the tables), seed_claims.png,
with the command, the machine and the wall time of each stage. A partial run writes them too, marking what is missing.
`--report-only` trains, scores and times nothing and reports what is cached; `--from-results` reads nothing but a
results file and rebuilds the claims, the table and the plot from its rows (and keeps its provenance).
`--carry FILE [--carry-as OLD=NEW]` takes the rows of the runs this --work lacks from an earlier results file
instead of training them again (benchmarks/claims/carry.py; the table marks them †), e.g. after the default changed:

    python benchmarks/seed_claims.py --carry benchmarks/results/seed_claims.json --carry-as modular=modular-v0

The stages live in benchmarks/claims/ (one module per group: train, score, students, plans, timing, report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from claims.carry import Carry
from claims.config import OPTIONAL_STAGES, Settings, parse_rename
from claims.report import NAME, result_record, write
from claims.stages import multi30k, squad
from claims.work import Carried, NotDone, Work
from harness import RUNS, Results, add_results_options, provenance, read_results, recorded_provenance


def measure(settings: Settings) -> dict:
    """Run (or, --report-only, look up) every stage asked for; the results record."""
    torch.set_num_threads(settings.threads)
    carry = Carry.load(settings.carry, dict(settings.carry_as), settings.steps) if settings.carry else None
    work = Work(settings, carry)
    rows: list[dict] = []
    for name, stage in (("multi30k", multi30k), ("squad", squad)):
        if name == "multi30k" or work.asked(name):
            try:
                stage(work, rows)
            except Carried as err:  # --carry has the rest of the stage
                work.not_done(err)
            except NotDone as err:  # --report-only: the stage's rows so far are kept
                work.not_done(f"{name} from here on: {err}")
        elif carry is None:
            work.skipped.append("squad_qg")
    walls = work.walls.data
    if carry is not None:
        rows, walls = carry.merge(rows, walls)
    record = result_record(rows, walls, settings.record(), provenance(settings.threads), work.left_out())
    return record | ({"carried": carry.record()} if carry else {})


def rebuild(recorded: dict) -> dict:
    """The results record from a results file's raw part: its rows, stage walls, settings, what it left out, what it
    carried and its provenance; the claims and the machine summary are computed again."""
    record = result_record(
        recorded["rows"], recorded["walls"], recorded["settings"], recorded_provenance(recorded), recorded["missing"]
    )
    return record | ({"carried": recorded["carried"]} if "carried" in recorded else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=RUNS / "seed-claims")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps of every modular run and student")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--spread", type=int, default=24, help="assemblies spread over 1.1x-6x depth ratio")
    parser.add_argument("--squad-teacher-steps", type=int, default=3000)
    parser.add_argument("--squad-eval", type=int, default=2000, help="score SQuAD on the first N valid pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--stages",
        default=",".join(OPTIONAL_STAGES),
        help="optional stages to run, comma-separated (Multi30k modular + assemblies always run)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train, score and time nothing: write the results from what is cached, listing the rest",
    )
    parser.add_argument(
        "--carry",
        type=Path,
        help="an earlier results file (e.g. the committed one): its rows stand in for runs this --work lacks, "
        "which are then not trained (see benchmarks/claims/carry.py)",
    )
    parser.add_argument(
        "--carry-as",
        action="append",
        default=[],
        type=parse_rename,
        metavar="OLD=NEW",
        help="rename a method of the carried rows (repeatable), e.g. modular=modular-v0 when the default changed",
    )
    add_results_options(parser, NAME)
    args = parser.parse_args()
    if args.carry_as and not args.carry:
        parser.error("--carry-as renames carried rows: give --carry FILE too")
    if args.from_results:
        result = rebuild(read_results(args.from_results))
    else:
        result = measure(Settings.from_args(args))
    write(Results(args.results, NAME), result)
    print(json.dumps(result["claims"], indent=2))


if __name__ == "__main__":
    main()
