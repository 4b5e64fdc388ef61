"""Cost of one modular training step against one plain fine-tuning step of the same teacher, side by side.

    python benchmarks/train_step.py [--teacher ../shared/models/multi30k-t5-12x12] [--batch-size 32] [--repeats 20]
        [--threads 1]
    python benchmarks/train_step.py --from-results benchmarks/results/train_step.json --results DIR

Both steps see the same batches, alternating (modular, fine-tune, modular, ...) so that machine noise hits both
alike. The modular step is `ReplacingTrainer.step` with `modformer train`'s defaults (`TrainConfig`: six hybrids
sharing one teacher pass, each row of the batch through two of them, cross-entropy and logit distillation), its
hybrids sampled at progress spread evenly over a run; the fine-tuning step is a forward and backward pass of the
whole teacher with AdamW on all its parameters. Writes
benchmarks/results/train_step.json: every step's time (`*_step_s_all`) as measured, and the medians and ratios
computed from them by `report()` (which `--from-results` reruns on a results file's step times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from harness import DATASETS, TEACHER, Results, add_results_options, measured_or_recorded, provenance

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import load_split
from modformer.modular.model import ModularModel
from modformer.modular.trainer import ReplacingTrainer, TrainConfig

NAME = "train_step"  # results/train_step.json
TARGET = "ratio <= 2.0"
DERIVED = ("modular_step_s", "finetune_step_s", "ratio", "ratio_of_pairs_median", "ratio_of_pairs_max", "target")


def measure(args) -> dict:
    """Alternating modular and fine-tuning steps on the same batches: every step's seconds after warm-up."""
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.teacher)
    spec = DATASETS["multi30k"].spec()
    train = load_split(spec, "train", limit=5000).tokenize(tokenizer)
    heldout = load_split(spec, "val", limit=64).tokenize(tokenizer)
    steps = args.warmup + args.repeats
    batches = [b for b, _ in zip(train.stream(args.batch_size, seed=0), range(steps), strict=False)]

    modular = ModularModel.from_teacher(load_seq2seq(args.teacher, eager=True), args.teacher)
    trainer = ReplacingTrainer(modular, TrainConfig(steps=steps, batch_size=args.batch_size), train, heldout)
    finetune = load_seq2seq(args.teacher)  # default attention, as a user would fine-tune it
    finetune.train()
    optimizer = torch.optim.AdamW(finetune.parameters(), lr=1e-4)

    def finetune_step(batch) -> float:
        started = time.perf_counter()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        loss = finetune(**inputs, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    modular_s, finetune_s, hybrids = [], [], []
    for i, batch in enumerate(batches):
        trainer.state.step = i  # spreads the curriculum's progress over the measured steps
        result = trainer.step(batch)
        ft = finetune_step(batch)
        if i >= args.warmup:
            modular_s.append(result.seconds)
            finetune_s.append(ft)
            hybrids.append(result.hybrid)
        print(f"{i:3d} modular {result.seconds:.3f}s finetune {ft:.3f}s {result.hybrid}", flush=True)
    return {
        **provenance(args.threads),
        "teacher": args.teacher,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "granularities": modular.config.granularities,  # the default's for this teacher (the replay test reads them)
        "modular_step_s_all": modular_s,
        "finetune_step_s_all": finetune_s,
        "hybrids": hybrids,
    }


def report(measured: dict) -> dict:
    """The measured step times with their medians and the modular / fine-tune ratios (of medians, and per pair)."""
    modular_s, finetune_s = measured["modular_step_s_all"], measured["finetune_step_s_all"]
    ratios = [m / f for m, f in zip(modular_s, finetune_s, strict=True)]
    return {
        **measured,
        "modular_step_s": statistics.median(modular_s),
        "finetune_step_s": statistics.median(finetune_s),
        "ratio": statistics.median(modular_s) / statistics.median(finetune_s),
        "ratio_of_pairs_median": statistics.median(ratios),
        "ratio_of_pairs_max": max(ratios),
        "target": TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady beside other jobs)")
    add_results_options(parser, NAME)
    args = parser.parse_args()
    result = report(measured_or_recorded(args, measure, DERIVED))
    Results(args.results, NAME).write(result)
    print(json.dumps({k: result[k] for k in ("modular_step_s", "finetune_step_s", "ratio")}, indent=2))


if __name__ == "__main__":
    main()
