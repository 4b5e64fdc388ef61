"""Scoring what a person would ship: an exported (or any) Hugging Face checkpoint, or an assembly of trained modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import DataSpec, Seq2SeqData, TokenizedData, data_report, load_split, token_lengths, warn
from modformer.errors import ConfigError
from modformer.evaluation import Scores, check_generation_settings, generate_and_score, score_outputs
from modformer.io import atomic_path, write_json
from modformer.modular.assembly import Assembly
from modformer.modular.export import EXPORT_INFO_NAME, export_target, read_export_info
from modformer.modular.model import ModularModel
from modformer.serving.ctranslate2_engine import CTranslate2Generator, is_ctranslate2_folder


@dataclass
class Evaluation:
    """What was scored (`model`: a folder or an assembly), on which split and data, the scores, the outputs (one per
    pair, in order) and what reading and tokenizing the pairs did (`data.data_report`)."""

    model: str
    split: str
    data: str
    scores: Scores
    predictions: list[str] = field(default_factory=list, repr=False)
    data_report: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        record = {"model": self.model, "split": self.split, "data": self.data, **self.scores.to_json()}
        return {**record, "threads": torch.get_num_threads(), "data_report": self.data_report}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    def save_predictions(self, path: str | Path) -> None:
        """The outputs, one a line in the data's order (a line break inside one becomes a space), written atomically."""
        lines = [" ".join(text.splitlines()) for text in self.predictions]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


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
    max_source_len: int = 128,
    max_target_len: int = 128,
    on_progress: Callable[[int, int], None] | None = None,
    teacher: str | Path | None = None,
) -> Evaluation:
    """Generate for the first `limit` pairs of `split` and score them (BLEU, chrF, ROUGE, exact match, loss).

    The model is a checkpoint folder (`model`: a Hugging Face checkpoint, or a CTranslate2 export, served in the
    target its `modformer.json` names) or an assembly of a modular checkpoint (`modules` + `assembly`; `teacher`:
    where the modules' teacher is now, if it moved).
    `on_progress(done, total)` is called after each generation batch. A CTranslate2 model has no teacher-forced
    loss (NaN); its outputs are scored the same way. Sources and targets are cut to `max_source_len` /
    `max_target_len` tokens, and a warning (also in the result's `data_report`) says how many were, and how many
    references are longer than `max_new_tokens` allows an output to be.
    """
    if (model is None) == (modules is None):
        raise ConfigError("give either model, or modules with assembly", settings=("model", "modules", "assembly"))
    check_generation_settings(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit} (no pairs to score)", settings="limit")
    for name, value in (("max_source_len", max_source_len), ("max_target_len", max_target_len)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}", settings=name)
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_beams": num_beams}
    if model is not None and (Path(model) / EXPORT_INFO_NAME).is_file():
        read_export_info(model)  # an export's record is checked (schema, agreement) before the model is used
    if model is not None and is_ctranslate2_folder(model):
        pairs = load_split(spec, split, limit=limit)
        folder = Path(model)
        target = export_target(folder)
        generator = CTranslate2Generator(folder, target, threads=torch.get_num_threads())
        data = pairs.tokenize(generator.tokenizer, max_source_len, max_target_len)  # what the engine reads, cut
        outputs = generator.generate(
            list(pairs.sources),
            max_source_len=max_source_len,
            on_batch=_batches_done(on_progress, len(pairs)),
            **settings,
        )
        scores = score_outputs(outputs, pairs)
        return _evaluation(f"{folder} ({target})", split, pairs, data, scores, outputs, generator.tokenizer, settings)
    if modules is not None:
        if assembly is None:
            raise ConfigError("modules needs assembly", settings=("modules", "assembly"))
        modular = ModularModel.from_pretrained(modules, teacher)
        chosen = modular.validate(Assembly.parse(assembly))
        net, tokenizer, name = modular.assemble(chosen), load_tokenizer(modular.config.teacher), chosen.format()
    else:
        net, tokenizer, name = load_seq2seq(model), load_tokenizer(model), str(model)
    pairs = load_split(spec, split, limit=limit)
    data = pairs.tokenize(tokenizer, max_source_len, max_target_len)
    scores, outputs = generate_and_score(
        net, tokenizer, pairs, data, on_batch=_batches_done(on_progress, len(pairs)), **settings
    )
    return _evaluation(name, split, pairs, data, scores, outputs, tokenizer, settings)


def _evaluation(
    name: str,
    split: str,
    pairs: Seq2SeqData,
    data: TokenizedData,
    scores: Scores,
    outputs: list[str],
    tokenizer,
    settings: dict,
) -> Evaluation:
    long = long_references_warning(pairs, tokenizer, settings["max_new_tokens"])
    report = data_report({"scored": (pairs, data)}, [long])
    return Evaluation(name, split, pairs.origin, scores, predictions=[o.strip() for o in outputs], data_report=report)


def long_references_warning(pairs: Seq2SeqData, tokenizer, max_new_tokens: int) -> str | None:
    """A warning (logged, and returned for the record) when some references (the first of each pair) need more
    tokens than `max_new_tokens` lets an output have, their end token included: no output can match them."""
    if len(pairs) == 0:
        return None
    long = sum(n > max_new_tokens for n in token_lengths(tokenizer, list(pairs.targets)))
    if not long:
        return None
    return warn(
        f"{pairs.origin}: {long:,} of {len(pairs):,} references ({100 * long / len(pairs):.1f} %) are longer than "
        f"`max_new_tokens` {max_new_tokens} tokens, so no output can match them in full",
        "max_new_tokens",
    )


def _batches_done(on_progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """A per-batch callback (`n` pairs done) that reports the running count to `on_progress(done, total)`."""
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    return on_batch
