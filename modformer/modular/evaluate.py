"""Scoring what a person would ship: an exported (or any) Hugging Face checkpoint, or an assembly of trained modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import DataSpec, load_split
from modformer.errors import ConfigError
from modformer.evaluation import Scores, check_generation_settings, score_model, score_outputs
from modformer.io import write_json
from modformer.modular.assembly import Assembly
from modformer.modular.export import export_target
from modformer.modular.model import ModularModel
from modformer.serving.ctranslate2_engine import CTranslate2Generator, is_ctranslate2_folder


@dataclass
class Evaluation:
    """What was scored (`model`: a folder or an assembly), on which split and data, and the scores."""

    model: str
    split: str
    data: str
    scores: Scores

    def to_json(self) -> dict:
        return {"model": self.model, "split": self.split, "data": self.data, **self.scores.to_json()}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())


def evaluate(
    spec: DataSpec,
    *,
    model: str | Path | None = None,
    modules: str | Path | None = None,
    assembly: str | None = None,
    split: str = "val",
    limit: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Generate for the first `limit` pairs of `split` and score them (BLEU, chrF, ROUGE, loss).

    The model is a checkpoint folder (`model`: a Hugging Face checkpoint, or a CTranslate2 export, served in the
    target its `modformer.json` names) or an assembly of a modular checkpoint (`modules` + `assembly`).
    `on_progress(done, total)` is called after each generation batch. A CTranslate2 model has no teacher-forced
    loss (NaN); its outputs are scored the same way.
    """
    if (model is None) == (modules is None):
        raise ConfigError("give either model, or modules with assembly", settings=("model", "modules", "assembly"))
    check_generation_settings(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit} (no pairs to score)", settings="limit")
    if model is not None and is_ctranslate2_folder(model):
        return _evaluate_ctranslate2(
            Path(model),
            load_split(spec, split, limit=limit),
            split=split,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            on_progress=on_progress,
        )
    if modules is not None:
        if assembly is None:
            raise ConfigError("modules needs assembly", settings=("modules", "assembly"))
        modular = ModularModel.from_pretrained(modules)
        chosen = modular.validate(Assembly.parse(assembly))
        net, tokenizer, name = modular.assemble(chosen), load_tokenizer(modular.config.teacher), chosen.format()
    else:
        net, tokenizer, name = load_seq2seq(model), load_tokenizer(model), str(model)
    pairs = load_split(spec, split, limit=limit)
    on_batch = _batches_done(on_progress, len(pairs))
    scores = score_model(
        net,
        tokenizer,
        pairs,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        on_batch=on_batch,
    )
    return Evaluation(model=name, split=split, data=pairs.origin, scores=scores)


def _batches_done(on_progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """A per-batch callback (`n` pairs done) that reports the running count to `on_progress(done, total)`."""
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    return on_batch


def _evaluate_ctranslate2(folder: Path, pairs, *, split: str, on_progress, **settings) -> Evaluation:
    target = export_target(folder)
    generator = CTranslate2Generator(folder, target, threads=torch.get_num_threads())
    on_batch = _batches_done(on_progress, len(pairs))
    outputs = generator.generate(list(pairs.sources), on_batch=on_batch, **settings)
    return Evaluation(
        model=f"{folder} ({target})", split=split, data=pairs.origin, scores=score_outputs(outputs, pairs)
    )
