"""Scoring seq2seq models: teacher-forced loss, generation, BLEU/chrF (sacrebleu) and ROUGE (rouge-score)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import sacrebleu
import torch
from rouge_score import rouge_scorer
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from modformer.errors import ConfigError


@torch.no_grad()
def teacher_forced_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Mean token cross-entropy (nats) of `model` on the batches, weighted by target tokens."""
    total, tokens = 0.0, 0
    for batch in batches:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            use_cache=False,
        )
        n = int((batch["labels"] != -100).sum())
        total += float(out.loss) * n
        tokens += n
    return total / max(tokens, 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded outputs in data order (batches must come unshuffled, as `TokenizedData.batches(shuffle=False)`)."""
    outputs: dict[int, str] = {}
    for batch in batches:
        ids = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            **lazy_cache(model),
        )
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        outputs.update({int(i): t.strip() for i, t in zip(batch["index"], texts, strict=True)})
        if on_batch:
            on_batch(len(texts))
    return [outputs[i] for i in sorted(outputs)]


def lazy_cache(model: nn.Module) -> dict:
    """A key/value cache that grows with the decoder, for `generate(**lazy_cache(model))`.

    transformers 5 sizes its default cache by `num_hidden_layers`, which for T5 is the *encoder* depth; an assembly
    with more decoder than encoder blocks would index past it. A cache built without a config has no such limit.
    """
    if not getattr(model.config, "is_encoder_decoder", False):
        return {}
    return {"cache": EncoderDecoderCache(DynamicCache(), DynamicCache())}


@dataclass
class Scores:
    bleu: float
    chrf: float
    rouge1: float
    rouge2: float
    rougeL: float
    loss: float
    n: int

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def text_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults) and mean ROUGE F1 (with stemming), all on a 0–100 scale."""
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hypotheses, references, strict=True):
        for key, score in scorer.score(ref, hyp).items():
            sums[key] += score.fmeasure
    n = max(len(hypotheses), 1)
    return {"bleu": bleu, "chrf": chrf, **{k: 100.0 * v / n for k, v in sums.items()}}


def check_generation_settings(*, batch_size: int, max_new_tokens: int, num_beams: int) -> None:
    """Refuse settings generation cannot run with, before any work starts."""
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}", settings=name)


def score_outputs(hypotheses: list[str], pairs, loss: float = math.nan) -> Scores:
    """Scores of outputs already generated for `pairs` (an engine with no teacher-forced loss leaves it NaN)."""
    return Scores(**text_scores([h.strip() for h in hypotheses], list(pairs.targets)), loss=loss, n=len(pairs))


def score_model(
    model: nn.Module,
    tokenizer,
    pairs,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    max_source_len: int = 128,
    max_target_len: int = 128,
    on_batch: Callable[[int], None] | None = None,
) -> Scores:
    """Generate for every source of `pairs` (a `Seq2SeqData`) and score against its targets; also the loss."""
    check_generation_settings(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    if len(pairs) == 0:
        raise ConfigError("no pairs to score")
    data = pairs.tokenize(tokenizer, max_source_len, max_target_len)
    batches = data.batches(batch_size, shuffle=False)
    hypotheses = generate(
        model, tokenizer, batches, max_new_tokens=max_new_tokens, num_beams=num_beams, on_batch=on_batch
    )
    scores = text_scores(hypotheses, list(pairs.targets))
    return Scores(**scores, loss=teacher_forced_loss(model, batches), n=len(pairs))
