"""Which loss weights should `modformer train` default to? Short runs of each combination, same steps and data.

    python benchmarks/loss_weights.py [--teacher ../shared/models/multi30k-t5-12x12] [--steps 300]

For each setting: train modules from the same start on Multi30k train, then measure on val (a) the held-out
teacher-forced loss of each uniform assembly (all 2-modules, all 3-, 4-, 6-modules) and (b) greedy BLEU of the
6-6 assembly (enc=2,... dec=2,...) and the 4-4 one (3-modules) on the first 300 val sentences. Each finished setting is
cached in the results file, so an interrupted run resumes. Writes benchmarks/results/loss_weights.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modformer.checkpoints import load_seq2seq, load_tokenizer  # noqa: E402
from modformer.data import DataSpec, load_split  # noqa: E402
from modformer.evaluation import score_model  # noqa: E402
from modformer.io import write_json  # noqa: E402
from modformer.modular.assembly import Assembly  # noqa: E402
from modformer.modular.model import ModularModel  # noqa: E402
from modformer.modular.trainer import ReplacingTrainer, TrainConfig  # noqa: E402

SETTINGS = {
    "ce": {"w_hidden": 0.0, "w_attn": 0.0, "w_logit": 0.0},
    "ce+hidden": {"w_hidden": 1.0, "w_attn": 0.0, "w_logit": 0.0},
    "ce+hidden+attn": {"w_hidden": 1.0, "w_attn": 1.0, "w_logit": 0.0},
    "ce+hidden+attn+logit": {"w_hidden": 1.0, "w_attn": 1.0, "w_logit": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(ROOT.parent / "shared/models/multi30k-t5-12x12"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k_en_de"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bleu-pairs", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/loss_weights.json"))
    args = parser.parse_args()

    out = Path(args.out)
    results = json.loads(out.read_text()).get("settings", {}) if out.is_file() else {}
    tokenizer = load_tokenizer(args.teacher)
    spec = DataSpec(path=args.data, src_ext="en", tgt_ext="de")
    train = load_split(spec, "train").tokenize(tokenizer)
    val_pairs = load_split(spec, "val")
    heldout = val_pairs.take(256).tokenize(tokenizer)
    teacher = load_seq2seq(args.teacher, eager=True)
    for name, weights in SETTINGS.items():
        if name in results:
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
        for label, spec_text in (("6-6", "enc=2,2,2,2,2,2 dec=2,2,2,2,2,2"), ("4-4", "enc=3,3,3,3 dec=3,3,3,3")):
            net = model.assemble(Assembly.parse(spec_text))
            bleu[label] = score_model(net, tokenizer, val_pairs.take(args.bleu_pairs), max_new_tokens=48).bleu
        results[name] = {"weights": weights, "heldout_loss": heldout_loss, "val_bleu": bleu, "train_s": train_s}
        print(name, json.dumps(results[name]), flush=True)
        _write(out, args, results)
    _write(out, args, results)


def _write(out: Path, args, results: dict) -> None:
    write_json(
        out,
        {
            "command": "python benchmarks/loss_weights.py " + " ".join(sys.argv[1:]),
            "machine": {
                "platform": platform.platform(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
            "date": time.strftime("%Y-%m-%d"),
            "teacher": args.teacher,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "settings": results,
        },
    )


if __name__ == "__main__":
    main()
