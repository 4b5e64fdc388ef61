"""The replacing trainer: losses, curriculum, frozen teacher, checkpoints and exact resume."""

from __future__ import annotations

import random
from dataclasses import fields

import pytest
import torch

from modformer.errors import ConfigError
from modformer.modular.assembly import Assembly
from modformer.modular.curriculum import Curriculum, sample_hybrid, sample_stack
from modformer.modular.losses import AttentionLoss, HiddenStateLoss, LogitLoss
from modformer.modular.model import ModularModel
from modformer.modular.strategies import stack_sequence
from modformer.modular.trainer import ReplacingTrainer, TrainConfig, split_rows
from tests.conftest import tiny_bart, tiny_t5

# The tests below check one mechanism at a time, so they start from one hybrid per step on the whole batch with every
# loss on; the default recipe (six hybrids, rows split, logits and cross-entropy only) is checked on its own.
ONE_HYBRID = {
    "hybrids_per_step": 1,
    "split_batch": False,
    "w_hidden": 1.0,
    "w_attn": 1.0,
    "curriculum": True,  # a varied draw: at rate 1 every hybrid of a 4-layer tiny teacher is 2,2 | 2,2
    "teacher_encoder_share": 0.0,
}


def _trainer(make, sample_pairs, tokenizer, **overrides) -> ReplacingTrainer:
    train, val = sample_pairs
    settings = {"steps": 4, "batch_size": 8, "eval_every": 0, "save_every": 0, "warmup_steps": 1, **ONE_HYBRID}
    settings |= overrides
    model = ModularModel.from_teacher(make(vocab=len(tokenizer)), "in-memory")
    return ReplacingTrainer(model, TrainConfig(**settings), train.tokenize(tokenizer), val.tokenize(tokenizer))


def _module_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.blocks.state_dict().items()}


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_a_step_trains_modules_only_with_every_loss_part(make, sample_pairs, tokenizer):
    trainer = _trainer(make, sample_pairs, tokenizer, w_logit=0.5)
    teacher_before = {k: v.clone() for k, v in trainer.model.teacher.state_dict().items()}
    modules_before = _module_state(trainer)
    result = trainer.step(next(trainer.train.stream(8)))
    assert set(result.parts) == {"ce", "hidden", "attn", "logit"}
    assert all(v > 0 for v in result.parts.values()), result.parts
    after = trainer.model.teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in teacher_before.items())
    changed = [k for k, v in trainer.model.blocks.state_dict().items() if not torch.equal(v, modules_before[k])]
    assert changed
    assert not trainer.model.teacher.training and not any(m.training for m in trainer.model.blocks.modules())


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_no_dropout_trains_modules_without_the_teachers_dropout(make, sample_pairs, tokenizer):
    """With dropout (the teacher's 0.1 here) a hybrid's loss depends on the random state; with `dropout=False` it
    does not, and equals the loss of the same hybrid with every block in evaluation mode."""
    hybrid = Assembly(encoder=(2, 2), decoder=(2, 1, 1))
    losses = {}
    for dropout in (True, False):
        trainer = _trainer(make, sample_pairs, tokenizer, dropout=dropout)
        batch = next(trainer.train.stream(8))
        targets = trainer.teacher_targets(batch, [hybrid])
        runs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            runs.append(trainer.hybrid_losses(batch, hybrid, targets)["ce"].item())
        losses[dropout] = runs
        assert not any(m.training for m in trainer.model.blocks.modules())  # back in eval mode after the pass
    assert losses[True][0] != losses[True][1]
    assert losses[False][0] == losses[False][1]
    with torch.no_grad():  # the same hybrid, evaluation mode throughout
        trainer.model.blocks.eval()
        assert trainer.hybrid_losses(batch, hybrid, targets)["ce"].item() == pytest.approx(losses[False][0], abs=1e-6)


@pytest.mark.parametrize("make", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_a_hybrid_with_the_teachers_encoder_reuses_the_teacher_pass(make, sample_pairs, tokenizer):
    """A hybrid that keeps the teacher's encoder whole reads the encoder output of the step's teacher pass instead of
    running the encoder again: same losses and gradients as running it, and the encoder is not called."""
    trainer = _trainer(make, sample_pairs, tokenizer, w_logit=0.5)
    encoder = trainer.model.adapter.stack(trainer.model.teacher, "encoder")
    hybrid = Assembly(encoder=(1,) * trainer.model.config.encoder_layers, decoder=(2, 2))
    with_modules = Assembly(encoder=(2, 2), decoder=(2, 2))
    batch = next(trainer.train.stream(8))
    targets = trainer.teacher_targets(batch, [hybrid, with_modules])
    calls = []
    hook = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        results = {}
        for reuse in (True, False):
            calls.clear()
            trainer.model.blocks.zero_grad(set_to_none=True)
            given = targets if reuse else {k: v for k, v in targets.items() if k != "encoder_out"}
            parts = trainer.hybrid_losses(batch, hybrid, given)
            sum(parts.values()).backward()
            grads = {n: p.grad.clone() for n, p in trainer.model.blocks.named_parameters() if p.grad is not None}
            results[reuse] = ({k: v.item() for k, v in parts.items()}, grads, len(calls))
    finally:
        hook.remove()
    (reused, reused_grads, reused_calls), (ran, ran_grads, ran_calls) = results[True], results[False]
    assert (reused_calls, ran_calls) == (0, 1)
    assert reused == pytest.approx(ran, abs=1e-5)
    assert reused_grads.keys() == ran_grads.keys() and reused_grads
    for name, grad in reused_grads.items():
        assert torch.allclose(grad, ran_grads[name], atol=1e-5), name
    # a hybrid with encoder modules runs its own encoder even when the teacher's output is at hand
    calls.clear()
    hook = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        trainer.hybrid_losses(batch, with_modules, targets)
    finally:
        hook.remove()
    assert calls == [1]


def _assert_same_gradients(stepped, reference) -> None:
    """`stepped`'s modules have the gradients `reference`'s got; a module that got none in one got none in the other."""
    grads = {n: p.grad for n, p in reference.model.blocks.named_parameters() if p.grad is not None}
    assert grads
    for name, p in stepped.model.blocks.named_parameters():
        if name in grads:
            assert torch.allclose(p.grad, grads[name], atol=1e-5), (name, (p.grad - grads[name]).abs().max())
        else:
            assert p.grad is None, name  # a module in no hybrid gets no update


def test_several_hybrids_per_step_average_their_gradients(sample_pairs, tokenizer):
    """One step with 2 hybrids = the mean of each hybrid's gradient, with one shared teacher pass."""
    both = _trainer(tiny_t5, sample_pairs, tokenizer, hybrids_per_step=2, w_logit=0.5, grad_clip=1e9)
    one = _trainer(tiny_t5, sample_pairs, tokenizer, w_logit=0.5)
    one.model.blocks.load_state_dict(both.model.blocks.state_dict())
    batch = next(both.train.stream(8))
    torch.manual_seed(1)
    result = both.step(batch)
    hybrids = [Assembly.parse(h) for h in result.hybrid.split(" | ")]
    assert len(hybrids) == 2 and hybrids[0] != hybrids[1]
    torch.manual_seed(1)  # the same dropout draws, in the same order
    weights = {"ce": 1.0, "hidden": 1.0, "attn": 1.0, "logit": 0.5}
    for h in hybrids:
        parts = one.losses(batch, h)
        (sum(weights[k] * v for k, v in parts.items()) / 2).backward()
    _assert_same_gradients(both, one)


@pytest.mark.parametrize(
    "count, per_row, rows",
    [
        (3, 1, ([0, 3, 6], [1, 4, 7], [2, 5])),  # --split-batch alone: hybrid i sees rows i, i+3, ...
        (3, 2, ([0, 1, 3, 4, 6, 7], [1, 2, 4, 5, 7], [0, 2, 3, 5, 6])),  # row r trains hybrids r and r-1 (mod 3)
        (6, 2, ([0, 1, 6, 7], [1, 2, 7], [2, 3], [3, 4], [4, 5], [0, 5, 6])),  # the default: 6 hybrids, 2 per row
    ],
)
def test_split_batch_gives_each_hybrid_its_rows(sample_pairs, tokenizer, count, per_row, rows):
    """With --split-batch (and --hybrids-per-row), one step with H hybrids = the mean of each hybrid's gradient on its
    rows, against the teacher's targets for those rows."""
    recipe = {"hybrids_per_step": count, "split_batch": True, "hybrids_per_row": per_row}
    split = _trainer(tiny_t5, sample_pairs, tokenizer, **recipe, grad_clip=1e9)
    one = _trainer(tiny_t5, sample_pairs, tokenizer)
    one.model.blocks.load_state_dict(split.model.blocks.state_dict())
    batch = next(split.train.stream(8))
    torch.manual_seed(1)
    result = split.step(batch)
    hybrids = [Assembly.parse(h) for h in result.hybrid.split(" | ")]
    torch.manual_seed(1)
    for h, mine in zip(hybrids, rows, strict=True):
        parts = one.losses({k: v[mine].contiguous() for k, v in batch.items()}, h)
        (sum(parts.values()) / count).backward()
    _assert_same_gradients(split, one)


def test_the_defaults_are_the_measured_recipe_and_the_cli_gives_the_same():
    """TrainConfig's defaults are the recipe docs/decoder-gap.md measured best, and `modformer train` with no recipe
    flags builds exactly that config (a default changed in one place only would fail here)."""
    import inspect

    from modformer import cli

    config = TrainConfig()
    recipe = {
        "hybrids_per_step": 6,
        "split_batch": True,
        "hybrids_per_row": 2,
        "teacher_encoder_share": 0.5,
        "curriculum": False,
        "lr": 1e-3,
        "w_ce": 1.0,
        "w_logit": 1.0,
        "w_hidden": 0.0,
        "w_attn": 0.0,
        "temperature": 2.0,
        "dropout": False,
        "ema": 0.0,
    }
    assert {k: getattr(config, k) for k in recipe} == recipe
    options = inspect.signature(cli.train).parameters
    shared = [f.name for f in fields(TrainConfig) if f.name in options]
    assert len(shared) >= 20
    assert {n: options[n].default for n in shared} == {n: getattr(config, n) for n in shared}


@pytest.mark.parametrize("per_row", [3, 5])
def test_hybrids_per_row_at_or_past_the_hybrids_gives_every_hybrid_every_row(per_row):
    """R >= H (e.g. the default R=2 with --hybrids-per-step 1 or 2) is no error: every row runs through every hybrid."""
    TrainConfig(hybrids_per_step=3, hybrids_per_row=per_row)
    TrainConfig(hybrids_per_step=1, split_batch=False)  # the default R=2 with one hybrid on the whole batch
    for i in range(3):
        assert split_rows(7, i, 3, per_row).tolist() == list(range(7))


def test_a_batch_smaller_than_the_hybrids_trains_one_hybrid_per_row(sample_pairs, tokenizer):
    """An epoch's last batch can hold fewer rows than there are hybrids (Multi30k's 29,000 pairs in batches of 32 end
    with 8), and so can a small --batch-size under the default six hybrids: the first hybrids get a row each, the
    rest sit the step out (it crashed here before)."""
    TrainConfig(batch_size=2)  # under the default six hybrids: no error
    for settings in ({"hybrids_per_step": 3, "split_batch": True, "hybrids_per_row": 1}, {}):
        split = _trainer(tiny_t5, sample_pairs, tokenizer, **(settings or _defaults()))
        batch = {k: v[:2] for k, v in next(split.train.stream(8)).items()}
        result = split.step(batch)
        assert len(result.hybrid.split(" | ")) == 2 and result.loss == result.loss > 0


def _defaults() -> dict:
    """The recipe fields of TrainConfig's defaults (what ONE_HYBRID overrides)."""
    return {k: getattr(TrainConfig(), k) for k in ONE_HYBRID}


def _probs(shape, g):
    return torch.softmax(torch.randn(shape, generator=g), dim=-1)


@pytest.mark.parametrize("kind", ["hidden", "attn", "logit"])
def test_losses_are_zero_on_equal_inputs_positive_otherwise_and_ignore_padding(kind):
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # (B, T): the last two tokens of row 0 are padding
    if kind == "attn":
        loss, x = AttentionLoss(), _probs((2, 4, 5, 5), g)  # (B, H, Q, K)
        y = _probs(x.shape, g)
    else:
        loss = HiddenStateLoss() if kind == "hidden" else LogitLoss(2.0)
        x = torch.randn(2, 5, 11, generator=g)  # (B, T, C)
        y = 1.5 * x + 0.1 * torch.randn(x.shape, generator=g)
    assert loss(x, x, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(y, x, mask).item() > 1e-3
    garbage = y.clone()
    if kind == "attn":
        garbage[0, :, 3:, :] = _probs((4, 2, 5), g)  # other distributions for padded queries
    else:
        garbage[0, 3:] += 100.0
    assert loss(garbage, x, mask).item() == pytest.approx(loss(y, x, mask).item(), rel=1e-5)


def test_training_lowers_the_held_out_loss_of_the_modules(sample_pairs, tokenizer):
    trainer = _trainer(tiny_t5, sample_pairs, tokenizer, steps=30, lr=2e-3, w_hidden=0, w_attn=0)
    before = trainer.evaluate()["mean"]
    for batch, _ in zip(trainer.train.stream(8), range(30), strict=False):
        trainer.step(batch)
    assert trainer.evaluate()["mean"] < before


class _Killed(Exception):
    pass


def _kill_at(step: int):
    def on_step(result) -> None:
        if result.step == step:
            raise _Killed

    return on_step


def test_resume_continues_exactly(tmp_path, sample_pairs, tokenizer):
    straight = _trainer(tiny_t5, sample_pairs, tokenizer, steps=6)
    straight.fit(tmp_path / "straight")
    first = _trainer(tiny_t5, sample_pairs, tokenizer, steps=6, save_every=3)
    with pytest.raises(_Killed):  # dies during step 4, after the step-3 checkpoint
        first.fit(tmp_path / "resumed", on_step=_kill_at(4))
    model = ModularModel.from_pretrained(tmp_path / "resumed", first.model.teacher)
    second = ReplacingTrainer(model, first.config, first.train, first.heldout)
    second.resume(tmp_path / "resumed")
    assert second.state.step == 3
    second.fit(tmp_path / "resumed")
    for key, value in straight.model.blocks.state_dict().items():
        assert torch.allclose(value, second.model.blocks.state_dict()[key], atol=1e-6), key


def test_ema_saves_and_evaluates_the_moving_average_of_the_trained_weights(tmp_path, sample_pairs, tokenizer):
    """--ema D: after each step the average moves to D * average + (1 - D) * weights (the first step copies them);
    the modules file and the held-out loss are the average's, the trained weights go on training untouched."""
    decay = 0.5
    trainer = _trainer(tiny_t5, sample_pairs, tokenizer, steps=3, ema=decay)
    expected = None
    stream = trainer.train.stream(8)
    for _ in range(3):
        trainer.step(next(stream))
        now = _module_state(trainer)
        expected = now if expected is None else {k: decay * expected[k] + (1 - decay) * now[k] for k in now}
    trained = _module_state(trainer)
    assert any(not torch.allclose(trained[k], expected[k]) for k in trained)  # the average is not the weights
    trainer.save(tmp_path)
    saved = ModularModel.from_pretrained(tmp_path, trainer.model.teacher)
    for key, value in saved.blocks.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6), key
    assert all(torch.equal(v, trained[k]) for k, v in _module_state(trainer).items())  # back to the trained ones
    loss = trainer.evaluate()["mean"]
    averaged = _trainer(tiny_t5, sample_pairs, tokenizer)
    averaged.model.blocks.load_state_dict(saved.blocks.state_dict())
    assert loss == pytest.approx(averaged.evaluate()["mean"], abs=1e-6)


def test_resume_with_ema_continues_exactly_and_refuses_another_ema(tmp_path, sample_pairs, tokenizer):
    straight = _trainer(tiny_t5, sample_pairs, tokenizer, steps=6, ema=0.5)
    straight.fit(tmp_path / "straight")
    first = _trainer(tiny_t5, sample_pairs, tokenizer, steps=6, save_every=3, ema=0.5)
    with pytest.raises(_Killed):
        first.fit(tmp_path / "resumed", on_step=_kill_at(4))
    model = ModularModel.from_pretrained(tmp_path / "resumed", first.model.teacher)
    other = ReplacingTrainer(model, TrainConfig(**{**vars(first.config), "ema": 0.0}), first.train, first.heldout)
    with pytest.raises(ConfigError, match="trained with ema 0.5, not 0.0"):
        other.resume(tmp_path / "resumed")
    model = ModularModel.from_pretrained(tmp_path / "resumed", first.model.teacher)
    second = ReplacingTrainer(model, first.config, first.train, first.heldout)
    second.resume(tmp_path / "resumed")
    second.fit(tmp_path / "resumed")
    for run in (tmp_path / "straight", tmp_path / "resumed"):
        assert (run / "modules_training.safetensors").is_file()
    ends = [
        ModularModel.from_pretrained(run, first.model.teacher) for run in (tmp_path / "straight", tmp_path / "resumed")
    ]
    for key, value in ends[0].blocks.state_dict().items():
        assert torch.allclose(value, ends[1].blocks.state_dict()[key], atol=1e-6), key
    for key, value in straight.model.blocks.state_dict().items():  # and the trained weights
        assert torch.allclose(value, second.model.blocks.state_dict()[key], atol=1e-6), key


def test_non_finite_loss_stops_with_the_step_and_part(sample_pairs, tokenizer):
    trainer = _trainer(tiny_t5, sample_pairs, tokenizer)
    with torch.no_grad():
        next(iter(trainer.model.blocks.values())).layer[-1].DenseReluDense.wo.weight.fill_(float("nan"))
        for p in trainer.model.trainable_parameters():
            p.fill_(float("nan"))
    with pytest.raises(ConfigError, match=r"step 1: the \w+ loss is nan"):
        trainer.step(next(trainer.train.stream(8)))


def test_curriculum_goes_coarse_to_fine_with_a_growing_rate():
    c = Curriculum()
    early, late = c.granularity_weights([2, 3, 4, 6], 0.0), c.granularity_weights([2, 3, 4, 6], 1.0)
    assert early[6] > early[2] and late[2] > late[6]
    assert c.replace_rate(0.0) == 0.5 and c.replace_rate(1.0) == 1.0
    flat = Curriculum(coarse_to_fine=False)
    assert set(flat.granularity_weights([2, 6], 0.3).values()) == {1.0}
    with pytest.raises(ConfigError):
        Curriculum(replace_start=0.0)


def test_a_coarse_bias_draws_granularity_k_with_weight_k_to_that_power():
    coarse = Curriculum(coarse_to_fine=False, coarse_bias=1.0)
    assert coarse.granularity_weights([2, 3, 6], 0.9) == {2: 2.0, 3: 3.0, 6: 6.0}
    rng = random.Random(0)  # at the first layer every k fits: 6 is drawn about 6/15 of the time, 2 about 2/15
    firsts = [
        sample_stack(12, [2, 3, 4, 6], 1.0, coarse.granularity_weights([2, 3, 4, 6], 0.5), rng)[0] for _ in range(3000)
    ]
    assert abs(firsts.count(6) / 3000 - 6 / 15) < 0.03 and abs(firsts.count(2) / 3000 - 2 / 15) < 0.03
    for bad in ({"coarse_bias": 1.0}, {"coarse_to_fine": False, "coarse_bias": float("nan")}):
        with pytest.raises(ConfigError, match="coarse_bias"):
            Curriculum(**bad)
    with pytest.raises(ConfigError, match="coarse_bias"):
        TrainConfig(coarse_bias=0.5, curriculum=True)
    TrainConfig(coarse_bias=0.5)  # the default has no curriculum


def test_sampled_hybrids_are_valid_mix_granularities_and_always_hold_a_module():
    rng = random.Random(0)
    seen = set()
    for i in range(300):
        a = sample_hybrid(12, 12, [2, 3, 4, 6], Curriculum(), i / 300, rng)
        a.validate(12, 12, [2, 3, 4, 6])
        assert max(a.encoder + a.decoder) > 1
        seen |= set(a.encoder + a.decoder)
    assert seen == {1, 2, 3, 4, 6}
    assert sample_stack(12, [2], rate=1.0, weights={2: 1.0}, rng=rng) == (2,) * 6


def _stacks(a: Assembly) -> tuple[tuple[int, ...], ...]:
    return a.encoder, a.decoder


def test_a_teacher_encoder_share_keeps_that_share_of_encoders_whole():
    """At a replacement rate of 1 (no curriculum) a walk never leaves the encoder whole; with the share it does, and the
    decoder then always holds a module (something must learn)."""
    flat = Curriculum(coarse_to_fine=False)
    teacher = (1,) * 12
    never = [sample_hybrid(12, 12, [2, 3, 4, 6], flat, 0.5, random.Random(i)) for i in range(300)]
    assert not any(a.encoder == teacher for a in never)
    rng = random.Random(0)
    some = [sample_hybrid(12, 12, [2, 3, 4, 6], flat, 0.5, rng, teacher_encoder_share=0.4) for _ in range(3000)]
    whole = [a for a in some if a.encoder == teacher]
    assert abs(len(whole) / 3000 - 0.4) < 0.03 and all(max(a.decoder) > 1 for a in whole)
    with pytest.raises(ConfigError, match="teacher_encoder_share"):
        TrainConfig(teacher_encoder_share=1.5)


def test_a_deployed_share_draws_that_share_of_stacks_from_the_strategies_stacks():
    deployed = set(stack_sequence(12, [2, 3, 4, 6])[1:])
    assert (4, 4, 4) in deployed and (1,) * 12 not in deployed
    always = [sample_hybrid(12, 12, [2, 3, 4, 6], Curriculum(), 0.5, random.Random(i), 1.0) for i in range(50)]
    assert all(a.encoder in deployed and a.decoder in deployed for a in always)
    assert len({a.decoder for a in always}) > 5  # drawn among them, not one
    rng = random.Random(0)
    stacks = [s for _ in range(400) for s in _stacks(sample_hybrid(12, 12, [2, 3, 4, 6], Curriculum(), 0.9, rng, 0.25))]
    assert 0.3 < sum(s in deployed for s in stacks) / len(stacks) < 0.5  # a quarter, plus walks that hit one
    walks = [sample_hybrid(12, 12, [2, 3, 4, 6], Curriculum(), 0.5, random.Random(i)) for i in range(20)]
    assert walks == [sample_hybrid(12, 12, [2, 3, 4, 6], Curriculum(), 0.5, random.Random(i), 0.0) for i in range(20)]
    with pytest.raises(ConfigError, match="deployed_share"):
        TrainConfig(deployed_share=1.5)


def test_train_config_rejects_bad_settings():
    for bad in (
        {"steps": 0},
        {"batch_size": -1},
        {"w_hidden": -1.0},
        {"w_ce": 0, "w_hidden": 0, "w_attn": 0, "w_logit": 0},
        {"hybrids_per_step": 0},
    ):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
