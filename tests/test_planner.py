"""The planner: proxy scoring, search space and costs, search methods, frontier, budgets, outputs and the CLI."""

from __future__ import annotations

import random

import pytest
import torch

from modformer.evaluation import teacher_forced_loss
from modformer.modular.assembly import Assembly, valid_stacks
from modformer.modular.model import ModularModel
from modformer.planner.proxy import ProxyScorer

from tests.conftest import tiny_bart, tiny_t5


def _perturbed_modular(family: str, layers: int = 4, granularities=(2,)) -> ModularModel:
    teacher = tiny_t5(layers=layers) if family == "t5" else tiny_bart(layers=layers)
    modular = ModularModel.from_teacher(teacher, "unused", list(granularities))
    torch.manual_seed(1)
    with torch.no_grad():  # modules unlike their init, so a wrong block would show
        for p in modular.blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return modular


@pytest.fixture(scope="module")
def proxy_batches(sample_pairs, tokenizer):
    _, val = sample_pairs
    return val.take(24).tokenize(tokenizer).batches(10, shuffle=False)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_proxy_equals_the_assembled_models_loss(family, proxy_batches):
    modular = _perturbed_modular(family)
    stacks = valid_stacks(4, [1, 2])
    pairs = [Assembly(encoder=e, decoder=d) for e in stacks for d in stacks]
    random.Random(0).shuffle(pairs)
    scorer = ProxyScorer(modular, proxy_batches)
    scores = scorer.score(pairs)
    for a, got in zip(pairs, scores, strict=True):
        want = teacher_forced_loss(modular.assemble(a), proxy_batches)
        assert got == pytest.approx(want, abs=2e-6), a
    # Shared bottoms: fewer block runs than scoring each assembly alone.
    stats = scorer.stats.to_json()
    assert stats["scored"] == len(pairs) and stats["block_runs"] < stats["block_runs_unshared"]
