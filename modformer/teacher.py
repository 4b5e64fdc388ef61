"""Train a T5-style teacher from scratch, for users without a fine-tuned checkpoint and for the demo.

The result is a plain Hugging Face checkpoint directory (model + tokenizer) that `transformers` loads alone. Every
`save_every` steps (and at the end) the folder is rewritten whole and switched in at once (`Recipe.save_checkpoint`),
with `teacher.json` (`TeacherRun`: settings, completed steps, wall time), `trainer_state.pt`
(`recipe.TrainerCheckpoint`: optimizer, random states) and `checkpoint.json` (the manifest) beside the model, so a
stopped run continues with `resume=True` (`modformer teacher --resume`) and sees exactly the batches an uninterrupted
run would have. The loop is the shared recipe skeleton (`modformer.recipe`); `TeacherTrainer` adds
only its loss, optimiser and what it saves.
Optimiser: Adafactor with relative step sizes, which trains T5 from scratch far more reliably on a CPU than AdamW
(see DESIGN notes: loss 4.9 vs 5.6 at step 500 on Multi30k).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration
from transformers.optimization import Adafactor

from modformer import __version__
from modformer.data import DataSpec, Seq2SeqData, TokenizedData, data_report, load_split, same_data_warning
from modformer.errors import CheckpointError, ConfigError
from modformer.evaluation import teacher_forced_loss
from modformer.io import read_json, write_json
from modformer.recipe import (
    STATE_NAME,
    Recipe,
    StepResult,
    TrainState,
    check_output,
    check_recorded,
    config_from,
)
from modformer.schemas import FORMAT_VERSION, TeacherInfo, validate

INFO_NAME = "teacher.json"
VAL_PAIRS = 500  # held-out pairs for the final loss
# Settings a resumed run must share with the saved one (they decide its tokenizer, model and batches).
RESUME_KEYS = ("preset", "batch_size", "seed", "max_source_len", "max_target_len", "dropout", "label_smoothing")
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: T5's conventions (pad doubles as decoder start)


@dataclass(frozen=True)
class TeacherPreset:
    layers: int  # per stack
    d_model: int
    d_ff: int
    heads: int
    vocab_size: int


PRESETS = {
    "tiny": TeacherPreset(layers=6, d_model=64, d_ff=256, heads=4, vocab_size=2000),  # seconds; tests, --fast
    "small": TeacherPreset(layers=6, d_model=128, d_ff=512, heads=4, vocab_size=4000),  # the demo
    "base": TeacherPreset(layers=12, d_model=128, d_ff=512, heads=4, vocab_size=8000),  # the benchmark teacher's shape
}


@dataclass
class TeacherConfig:
    preset: str = "small"  # tiny | small | base
    steps: int = 1500  # optimizer steps
    batch_size: int = 32  # sentence pairs per step
    max_source_len: int = 128
    max_target_len: int = 128
    label_smoothing: float = 0.1
    dropout: float = 0.1
    seed: int = 0
    save_every: int = 500  # checkpoint (the whole folder) every N steps

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("steps", "batch_size", "max_source_len", "max_target_len", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}", settings=name)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A joint BPE tokenizer over source and target text, T5-style: appends </s>; pad 0, eos 1, unk 2."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_teacher(preset: TeacherPreset, vocab_size: int, dropout: float = 0.1) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=preset.d_model,
        d_ff=preset.d_ff,
        d_kv=preset.d_model // preset.heads,
        num_heads=preset.heads,
        num_layers=preset.layers,
        num_decoder_layers=preset.layers,
        feed_forward_proj="relu",
        dropout_rate=dropout,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config)


@dataclass
class TeacherRun:
    """`teacher.json`: a teacher run's settings and how far it got. A teacher folder holds it beside the Hugging Face
    checkpoint (model, tokenizer) and the trainer checkpoint (`recipe.TrainerCheckpoint`, `trainer_state.pt`)."""

    config: TeacherConfig
    completed_steps: int = 0
    wall_s: float = 0.0  # training wall time, over all sessions
    val_loss: float | None = None  # held-out loss, written at the end of the run (None at intermediate checkpoints)
    modformer_version: str = __version__
    data: str = ""  # where the training pairs came from (files or data set, and split)
    train_pairs: int | None = None  # how many
    data_report: dict = field(default_factory=dict)  # pairs left out and cut, warnings (`data.data_report`)

    def save(self, out_dir: str | Path) -> None:
        write_json(
            Path(out_dir) / INFO_NAME,
            {
                "format_version": FORMAT_VERSION,
                "modformer_version": self.modformer_version,
                "teacher": asdict(self.config),
                "completed_steps": self.completed_steps,
                "wall_s": round(self.wall_s, 1),
                "threads": torch.get_num_threads(),
                "val_loss": self.val_loss,
                "data": self.data,
                "train_pairs": self.train_pairs,
                "data_report": self.data_report,
            },
        )

    @classmethod
    def load(cls, out_dir: str | Path) -> TeacherRun:
        path = Path(out_dir) / INFO_NAME
        info = read_json(path, "teacher info")
        validate(TeacherInfo, info, path)  # one line naming the field; what passes converts below
        try:
            return cls(
                config=config_from(TeacherConfig, info.get("teacher", {}), path),
                completed_steps=int(info.get("completed_steps", 0)),
                wall_s=float(info.get("wall_s") or 0.0),
                val_loss=None if info.get("val_loss") is None else float(info["val_loss"]),
                modformer_version=str(info.get("modformer_version", "")),
                data=str(info.get("data") or ""),
                train_pairs=None if info.get("train_pairs") is None else int(info["train_pairs"]),
                data_report=dict(info.get("data_report") or {}),
            )
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: teacher info is malformed ({err})") from None


class TeacherTrainer(Recipe):
    """The teacher recipe: cross-entropy with label smoothing, Adafactor, held-out loss once at the end."""

    def __init__(self, model, tokenizer, config: TeacherConfig, train: TokenizedData, heldout: TokenizedData):
        self.model, self.tokenizer, self.config, self.train, self.heldout = model, tokenizer, config, train, heldout
        self.optimizer = _optimizer(model)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=config.label_smoothing)
        self.state = TrainState()
        self.origin = ""  # where the training pairs came from (recorded in teacher.json)
        self.data_report: dict = {}  # what reading and tokenizing the pairs did (recorded in teacher.json)
        model.generation_config = GenerationConfig(
            decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, max_new_tokens=config.max_target_len
        )
        model.train()

    @property
    def eval_every(self) -> int:
        return 0  # only at the end: the teacher's held-out loss is a summary, not a curve

    @classmethod
    def start_or_resume(
        cls, train: Seq2SeqData, heldout: Seq2SeqData, config: TeacherConfig, out_dir: str | Path, *, resume: bool
    ) -> TeacherTrainer:
        """A fresh tokenizer and model, or (`resume`) the run saved in `out_dir`, at its step."""
        out_dir = Path(out_dir)
        if resume:
            check_output(out_dir, resume=True, overwrite=False, marker=STATE_NAME, what="teacher run")
            recorded = asdict(TeacherRun.load(out_dir).config)
            check_recorded(out_dir, recorded, config, RESUME_KEYS)
            try:
                model = T5ForConditionalGeneration.from_pretrained(out_dir)
                tokenizer = PreTrainedTokenizerFast.from_pretrained(out_dir)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{out_dir}: cannot load the teacher checkpoint ({err})") from None
        else:
            torch.manual_seed(config.seed)
            preset = PRESETS[config.preset]
            tokenizer = train_tokenizer(train.sources + train.targets, preset.vocab_size)
            model = build_teacher(preset, len(tokenizer), config.dropout)
        lengths = (config.max_source_len, config.max_target_len)
        trainer = cls(
            model, tokenizer, config, train.tokenize(tokenizer, *lengths), heldout.tokenize(tokenizer, *lengths)
        )
        trainer.origin = train.origin
        if resume:
            trainer.resume(out_dir)
        return trainer

    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        started = time.perf_counter()
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        loss = self.loss_fn(out.logits.flatten(0, 1), batch["labels"].flatten())
        if not torch.isfinite(loss):
            raise ConfigError(
                f"teacher training: loss is {float(loss)} at step {self.state.step + 1}; the last checkpoint is kept"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.state.step += 1
        value = float(loss.detach())
        return StepResult(self.state.step, value, {"ce": value}, time.perf_counter() - started)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            return {"loss": teacher_forced_loss(self.model, self.heldout.batches(64, shuffle=False))}
        finally:
            self.model.train()

    def val_loss(self) -> float | None:
        """The held-out loss at the current step, if it was measured."""
        last = self.state.history[-1] if self.state.history else {}
        return last.get("loss") if last.get("step") == self.state.step else None

    def save(self, folder: Path) -> None:
        """Model, tokenizer and `teacher.json` into the checkpoint being written (`Recipe.save_checkpoint`)."""
        run = TeacherRun(
            self.config,
            self.state.step,
            self.state.seconds,
            self.val_loss(),
            data=self.origin,
            train_pairs=len(self.train),
            data_report=self.data_report,
        )
        training = self.model.training
        self.model.eval()
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        run.save(folder)
        self.model.train(training)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.model.named_parameters()

    def summary(self) -> dict:
        val_loss = self.val_loss()
        if val_loss is None:  # nothing left to train (resumed at the last step): measure it now
            val_loss = self.evaluate()["loss"]
        return {
            "preset": self.config.preset,
            "steps": self.config.steps,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "val_loss": val_loss,
            "seconds": self.state.seconds,
            "train_pairs": len(self.train),
            "data": self.origin,
        }


def train_teacher(
    train: Seq2SeqData,
    heldout: Seq2SeqData,
    config: TeacherConfig,
    out_dir: str | Path,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Train tokenizer and model; write a Hugging Face checkpoint to `out_dir`; return a summary.

    `resume`: continue the run whose checkpoint is in `out_dir` (same preset, batch size, seed and lengths; `steps`
    may be raised); `overwrite` is then ignored.
    """
    if not resume:
        check_output(out_dir, resume=False, overwrite=overwrite, marker=STATE_NAME, what="teacher run")
    trainer = TeacherTrainer.start_or_resume(train, heldout, config, out_dir, resume=resume)
    trainer.fit(out_dir, on_step=(lambda r: on_step(r.step, r.loss)) if on_step else None)
    return trainer.summary()


def run_teacher(
    config: TeacherConfig,
    data: DataSpec,
    out_dir: str | Path,
    *,
    train_split: str = "train",
    val_split: str = "val",
    resume: bool = False,
    overwrite: bool = False,
    on_start: Callable[[TeacherTrainer], None] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> dict:
    """What `modformer teacher` does: check `out_dir`, read the splits, train (or continue) and save; a summary.

    `on_start` sees the trainer once it is set up (its `state.step` is where a resumed run continues).
    """
    check_output(out_dir, resume=resume, overwrite=overwrite, marker=STATE_NAME, what="teacher run")
    train, val = load_split(data, train_split), load_split(data, val_split, limit=VAL_PAIRS)
    same = same_data_warning(train, val, val_split=val_split)
    trainer = TeacherTrainer.start_or_resume(train, val, config, out_dir, resume=resume)
    trainer.data_report = data_report({"train": (train, trainer.train), "heldout": (val, trainer.heldout)}, [same])
    if on_start:
        on_start(trainer)
    trainer.fit(out_dir, on_step=on_step)
    return trainer.summary()


def completed_steps(out_dir: str | Path) -> int:
    """Steps of the teacher run saved in `out_dir` (0 when there is none)."""
    return TeacherRun.load(out_dir).completed_steps if (Path(out_dir) / INFO_NAME).is_file() else 0


def _optimizer(model: nn.Module) -> Adafactor:
    return Adafactor(model.parameters(), lr=None, relative_step=True, scale_parameter=True, warmup_init=False)
