"""Scoring seq2seq models: teacher-forced loss, generation, BLEU/chrF (sacrebleu), ROUGE (rouge-score), exact match.

Every text score takes one reference per hypothesis or several: BLEU and chrF count all of them (sacrebleu's
reference streams), ROUGE takes the best-matching one, exact match any one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
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
    """Text scores on a 0-100 scale, the teacher-forced loss (nats; NaN where an engine has none), pairs scored."""

    bleu: float
    chrf: float
    rouge1: float
    rouge2: float
    rougeL: float
    exact_match: float  # the share of hypotheses equal to a reference, whitespace at either end aside
    loss: float
    n: int

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def text_scores(hypotheses: list[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults), mean ROUGE F1 (with stemming) and exact match, all 0-100.

    `references` holds one text per hypothesis, or a list of texts where a hypothesis has several references (their
    number may vary): BLEU and chrF use them all, ROUGE the best-matching one, exact match any one.
    """
    sets = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if len(sets) != len(hypotheses) or any(not refs for refs in sets):
        raise ConfigError(f"{len(hypotheses)} hypotheses need as many non-empty references, got {len(sets)}")
    # sacrebleu's streams: stream k holds each hypothesis's k-th reference, None where it has fewer.
    depth = max((len(refs) for refs in sets), default=1)
    streams = [[refs[k] if k < len(refs) else None for refs in sets] for k in range(depth)]
    bleu = sacrebleu.corpus_bleu(hypotheses, streams).score
    chrf = sacrebleu.corpus_chrf(hypotheses, streams).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    exact = 0
    for hyp, refs in zip(hypotheses, sets, strict=True):
        for key, score in scorer.score_multi(refs, hyp).items():
            sums[key] += score.fmeasure
        exact += hyp.strip() in {ref.strip() for ref in refs}
    n = max(len(hypotheses), 1)
    rouge = {k: 100.0 * v / n for k, v in sums.items()}
    return {"bleu": bleu, "chrf": chrf, **rouge, "exact_match": 100.0 * exact / n}


def check_generation_settings(*, batch_size: int, max_new_tokens: int, num_beams: int) -> None:
    """Refuse settings generation cannot run with, before any work starts."""
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}", settings=name)


def score_outputs(hypotheses: list[str], pairs, loss: float = math.nan) -> Scores:
    """Scores of outputs already generated for `pairs` (an engine with no teacher-forced loss leaves it NaN)."""
    scores = text_scores([h.strip() for h in hypotheses], pairs.reference_lists())
    return Scores(**scores, loss=loss, n=len(pairs))


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
    """Generate for every source of `pairs` (a `Seq2SeqData`) and score against its references; also the loss."""
    check_generation_settings(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    if len(pairs) == 0:
        raise ConfigError("no pairs to score")
    data = pairs.tokenize(tokenizer, max_source_len, max_target_len)
    scores, _ = generate_and_score(
        model,
        tokenizer,
        pairs,
        data,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        on_batch=on_batch,
    )
    return scores


def generate_and_score(
    model: nn.Module,
    tokenizer,
    pairs,
    data,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Scores, list[str]]:
    """The scores of `model` on `pairs` (a `Seq2SeqData`; `data`: its `TokenizedData`), and its outputs in order."""
    check_generation_settings(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    if len(pairs) == 0:
        raise ConfigError("no pairs to score")
    batches = data.batches(batch_size, shuffle=False)
    hypotheses = generate(
        model, tokenizer, batches, max_new_tokens=max_new_tokens, num_beams=num_beams, on_batch=on_batch
    )
    scores = text_scores(hypotheses, pairs.reference_lists())
    return Scores(**scores, loss=teacher_forced_loss(model, batches), n=len(pairs)), hypotheses
