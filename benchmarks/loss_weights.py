"""Which loss weights should `modformer train` default to? Short runs of each combination, same steps and data.

    python benchmarks/loss_weights.py [--teacher ../shared/models/multi30k-t5-12x12] [--steps 300]
    python benchmarks/loss_weights.py --from-results benchmarks/results/loss_weights.json --results DIR

For each setting: train modules from the same start on Multi30k train, then measure on val (a) the held-out
teacher-forced loss of each uniform assembly (all 2-modules, all 3-, 4-, 6-modules) and (b) greedy BLEU of the
6-6 assembly (enc=2,... dec=2,...) and the 4-4 one (3-modules) on the first 300 val sentences. Each finished setting is
cached under --work, so an interrupted run resumes. Writes benchmarks/results/loss_weights.json.

The results are pure measurement (no figure is derived from others): `--from-results` writes a results file's
record again through the same writer, which checks that nothing else goes into it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import (
    DATASETS,
    RUNS,
    TEACHER,
    JsonCache,
    Results,
    add_results_options,
    provenance,
    read_results,
    recorded_provenance,
)

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import load_split
from modformer.evaluation import score_model
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel
from modformer.modular.trainer import ReplacingTrainer, TrainConfig

NAME = "loss_weights"  # results/loss_weights.json
SETTINGS_NAME = "settings.json"  # the cache: setting -> its figures
SETTINGS = {
    "ce": {"w_hidden": 0.0, "w_attn": 0.0, "w_logit": 0.0},
    "ce+hidden": {"w_hidden": 1.0, "w_attn": 0.0, "w_logit": 0.0},
    "ce+hidden+attn": {"w_hidden": 1.0, "w_attn": 1.0, "w_logit": 0.0},
    "ce+hidden+attn+logit": {"w_hidden": 1.0, "w_attn": 1.0, "w_logit": 1.0},
}
RECORDED = ("teacher", "steps", "batch_size", "settings")  # beside the provenance: all a results file holds
ASSEMBLIES = {"6-6": "enc=2,2,2,2,2,2 dec=2,2,2,2,2,2", "4-4": "enc=3,3,3,3 dec=3,3,3,3"}


def measure(args) -> dict:
    """Train each setting (cached under --work) and score it: the record."""
    cache = JsonCache(Path(args.work) / SETTINGS_NAME)
    tokenizer = load_tokenizer(args.teacher)
    spec = DATASETS["multi30k"].spec()
    train = load_split(spec, "train").tokenize(tokenizer)
    val_pairs = load_split(spec, "val")
    heldout = val_pairs.take(256).tokenize(tokenizer)
    teacher = load_seq2seq(args.teacher, eager=True)
    for name, weights in SETTINGS.items():
        if name in cache.data:
            print(f"{name}: cached")
            continue
        started = time.perf_counter()
        model = ModularModel.from_teacher(teacher, args.teacher)
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=0, save_every=0, **weights)
        trainer = ReplacingTrainer(model, config, train, heldout)
        stream = train.stream(config.batch_size, seed=config.seed)
        while trainer.state.step < config.steps:
            r = trainer.step(next(stream))
            if r.step % 50 == 0:
                print(f"{name} step {r.step} loss {r.loss:.3f} {r.parts}", flush=True)
        train_s = time.perf_counter() - started
        heldout_loss = trainer.evaluate()
        bleu = {}
        for label, spec_text in ASSEMBLIES.items():
            net = model.assemble(Assembly.parse(spec_text))
            bleu[label] = score_model(net, tokenizer, val_pairs.take(args.bleu_pairs), max_new_tokens=48).bleu
        cache.data[name] = {"weights": weights, "heldout_loss": heldout_loss, "val_bleu": bleu, "train_s": train_s}
        print(name, json.dumps(cache.data[name]), flush=True)
        cache.save()
    return {
        **provenance(),
        "teacher": args.teacher,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "settings": cache.data,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(TEACHER))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bleu-pairs", type=int, default=300)
    parser.add_argument("--work", default=str(RUNS / "bench-loss-weights"))
    add_results_options(parser, NAME)
    args = parser.parse_args()
    if args.from_results:
        recorded = read_results(args.from_results)
        record = {**recorded_provenance(recorded), **{k: recorded[k] for k in RECORDED}}
    else:
        record = measure(args)
    Results(args.results, NAME).write(record)
    print(json.dumps({name: s["val_bleu"] for name, s in record["settings"].items()}, indent=2))


if __name__ == "__main__":
    main()
