"""Fixed-shape students, trained one per size, to compare the modular run against.

In the style of Shleifer & Rush (2020, "Pre-trained Summarization Distillation"): a student of E+D layers starts as
a copy of the teacher's embeddings, head and *spread-out* layers (`spread_layers`: evenly spaced, first and last
kept, so 12 -> 6 copies layers 0, 2, 4, 7, 9, 11 and 12 -> 3 copies 0, 6, 11), then trains every parameter:

* ``sft``: cross-entropy on the labels;
* ``kd``: cross-entropy + ``w_logit`` * logit KL to the teacher (temperature 2) + ``w_hidden`` * normalised hidden
  MSE between student layer j and the teacher layer it was copied from (the losses the modular run uses);
* ``pseudo``: cross-entropy on the teacher's own greedy outputs for the training sources (generated once and kept
  in the output folder as ``pseudo_labels.txt``, so a resumed run does not generate them again).

The output folder is a plain Hugging Face checkpoint (model, tokenizer, generation config) with ``modformer.json``
(`StudentRun`: method, shape, copied layers, steps, wall time) and ``trainer_state.pt`` (`recipe.TrainerCheckpoint`:
optimizer, scheduler, random states, step, held-out history) for resuming. Every checkpoint rewrites the folder
whole and switches it in at once (`Recipe.save_checkpoint`, with its manifest ``checkpoint.json``). The loop is the
shared recipe skeleton (`modformer.recipe`); `StudentTrainer` adds only its losses and what it saves. `run_baseline`
is the whole of `modformer baseline`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from modformer import __version__
from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import (
    DataSpec,
    Seq2SeqData,
    TokenizedData,
    data_report,
    load_split,
    read_lines,
    same_data_warning,
)
from modformer.errors import CheckpointError, ConfigError
from modformer.evaluation import teacher_forced_loss
from modformer.io import atomic_path, read_json, write_json
from modformer.modular.families import STACKS, adapter_for
from modformer.modular.losses import HiddenStateLoss, LogitLoss
from modformer.modular.model import standalone
from modformer.recipe import (
    STATE_NAME,
    Recipe,
    StepResult,
    TrainState,
    adamw_with_warmup,
    check_output,
    check_recorded,
    config_from,
)
from modformer.schemas import FORMAT_VERSION, StudentInfo, validate

METHODS = ("sft", "kd", "pseudo")
TRAIN_ONLY = ("decoder", "all-but-encoder")  # what `BaselineConfig.train_only` may name
INFO_NAME = "modformer.json"
PSEUDO_NAME = "pseudo_labels.txt"
# Settings a resumed run must share with the saved one (they decide its batches and shapes).
RESUME_KEYS = ("method", "shape", "batch_size", "seed", "max_source_len", "max_target_len")


def spread_layers(depth: int, count: int) -> list[int]:
    """`count` teacher layers out of `depth`, evenly spread, the first and (for count > 1) the last included."""
    if not 1 <= count <= depth:
        raise ConfigError(f"a student stack needs 1 to {depth} layers, got {count}")
    if count == 1:
        return [0]
    return [round(i * (depth - 1) / (count - 1)) for i in range(count)]


def parse_shape(shape: str) -> tuple[int, int]:
    try:
        enc, dec = (int(x) for x in shape.split("-"))
    except ValueError:
        raise ConfigError(f"cannot parse shape {shape!r}: expected 'E-D' layer counts, e.g. '6-6'") from None
    return enc, dec


def make_student(teacher: nn.Module, shape: str) -> tuple[nn.Module, dict[str, list[int]]]:
    """The student of `shape` copied from `teacher`, and which teacher layer each student layer copies."""
    adapter = adapter_for(teacher.config)
    counts = dict(zip(STACKS, parse_shape(shape), strict=True))
    chosen = {s: spread_layers(adapter.depth(teacher.config, s), counts[s]) for s in STACKS}
    layers = {s: [adapter.layers(teacher, s)[i] for i in chosen[s]] for s in STACKS}
    return standalone(teacher, layers), chosen


@dataclass
class BaselineConfig:
    method: str
    shape: str
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4  # AdamW, linear warm-up then linear decay to 10 %, like the modular run
    warmup_steps: int = 100
    grad_clip: float = 1.0
    w_logit: float = 1.0  # kd only
    w_hidden: float = 1.0  # kd only
    temperature: float = 2.0
    eval_every: int = 200
    save_every: int = 200
    eval_pairs: int = 256
    max_new_tokens: int = 64  # pseudo-labels
    max_source_len: int = 128  # tokens; longer texts are cut (and a warning says how many)
    max_target_len: int = 128
    seed: int = 0
    dropout: bool = True  # the teacher's dropout while the student trains (False: without it, as in evaluation)
    # None: every weight trains. "decoder": only the decoder's layers (not their position tables): the embeddings,
    # the encoder, the final norms and the head stay the teacher's, as around a modular assembly's decoder modules.
    # "all-but-encoder": every weight but the encoder's (its layers, norms and position tables; the embeddings the
    # encoder shares with the decoder train): the most that per-shape weights around the teacher's encoder could hold
    train_only: str | None = None

    def __post_init__(self) -> None:
        if self.train_only not in (None, *TRAIN_ONLY):
            raise ConfigError(f"train_only must be one of {', '.join(TRAIN_ONLY)}, got {self.train_only!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown baseline {self.method!r}; choose from {', '.join(METHODS)}")
        parse_shape(self.shape)
        for name in ("steps", "batch_size", "lr", "temperature", "max_new_tokens", "max_source_len", "max_target_len"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("w_logit", "w_hidden", "warmup_steps", "eval_every", "save_every"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class StudentRun:
    """`modformer.json`: what a student is (method, settings, copied layers, size) and how far it trained. A student
    folder holds it beside the Hugging Face checkpoint and the trainer checkpoint (`recipe.TrainerCheckpoint`)."""

    config: BaselineConfig
    layers: dict[str, list[int]]  # stack -> the teacher layer each student layer was copied from
    parameters: int
    completed_steps: int = 0
    wall_s: float = 0.0  # training wall time, over all sessions
    history: list[dict] = field(default_factory=list)  # periodic held-out losses: {"step": n, "loss": x}
    data_report: dict = field(default_factory=dict)  # pairs left out and cut, warnings (`data.data_report`)
    modformer_version: str = __version__

    def save(self, out_dir: str | Path) -> None:
        write_json(
            Path(out_dir) / INFO_NAME,
            {
                "format_version": FORMAT_VERSION,
                "modformer_version": self.modformer_version,
                "baseline": asdict(self.config),
                "layers": self.layers,
                "parameters": self.parameters,
                "completed_steps": self.completed_steps,
                "wall_s": round(self.wall_s, 1),
                "threads": torch.get_num_threads(),
                "history": self.history,
                "data_report": self.data_report,
            },
        )

    @classmethod
    def load(cls, out_dir: str | Path) -> StudentRun:
        path = Path(out_dir) / INFO_NAME
        info = read_json(path, "baseline info")
        validate(StudentInfo, info, path)
        try:
            return cls(
                config=config_from(BaselineConfig, info.get("baseline", {}), path),
                layers={s: [int(i) for i in info["layers"][s]] for s in STACKS},
                parameters=int(info["parameters"]),
                completed_steps=int(info.get("completed_steps", 0)),
                wall_s=float(info.get("wall_s") or 0.0),
                history=list(info.get("history", [])),
                data_report=dict(info.get("data_report") or {}),
                modformer_version=str(info.get("modformer_version", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: baseline info is malformed ({err})") from None


class StudentTrainer(Recipe):
    """Trains one fixed-shape student (see the module docstring); the loop and checkpoints are the shared recipe's."""

    data_report: dict | None = None  # what reading and tokenizing the pairs did (`data.data_report`), saved too

    def __init__(
        self, teacher: nn.Module, tokenizer, config: BaselineConfig, train: TokenizedData, heldout: TokenizedData
    ):
        self.teacher, self.tokenizer, self.config = teacher.eval(), tokenizer, config
        self.train, self.heldout = train, heldout
        teacher.requires_grad_(False)
        self.student, self.layer_map = make_student(teacher, config.shape)
        self.student.train(config.dropout)
        self.adapter = adapter_for(teacher.config)
        if config.train_only == "decoder":
            self.student.requires_grad_(False)
            for layer in self.adapter.layers(self.student, "decoder"):
                layer.requires_grad_(True)
                for name in self.adapter.position_bias_names(layer):
                    layer.get_parameter(name).requires_grad_(False)
        elif config.train_only == "all-but-encoder":
            self.adapter.stack(self.student, "encoder").requires_grad_(False)
            self.student.get_input_embeddings().requires_grad_(True)
        self.optimizer, self.scheduler = adamw_with_warmup(
            [p for p in self.student.parameters() if p.requires_grad],
            lr=config.lr,
            weight_decay=0.01,  # AdamW's default, which the students have always trained with
            warmup_steps=config.warmup_steps,
            steps=config.steps,
        )
        self.hidden_loss, self.logit_loss = HiddenStateLoss(), LogitLoss(config.temperature)
        self.state = TrainState()
        self.rng = random.Random(config.seed)
        torch.manual_seed(config.seed)

    # --- one step -------------------------------------------------------------------------------------------------
    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        if self.config.method != "kd":
            return {"ce": self.student(**inputs, use_cache=False).loss}
        masks = {"encoder": batch["attention_mask"], "decoder": (batch["labels"] != -100).long()}
        t_layers = {
            s: dict(enumerate(self.adapter.layers(self.teacher, s)[i] for i in self.layer_map[s])) for s in STACKS
        }
        s_layers = {s: dict(enumerate(self.adapter.layers(self.student, s))) for s in STACKS}
        with (
            torch.no_grad(),
            self.adapter.record(t_layers["encoder"], "encoder") as te,
            self.adapter.record(t_layers["decoder"], "decoder") as td,
        ):
            teacher_logits = self.teacher(**inputs, use_cache=False).logits
        with (
            self.adapter.record(s_layers["encoder"], "encoder") as se,
            self.adapter.record(s_layers["decoder"], "decoder") as sd,
        ):
            out = self.student(**inputs, use_cache=False)
        hidden = out.loss.new_zeros(())
        n = 0
        for s, (srec, trec) in {"encoder": (se, te), "decoder": (sd, td)}.items():
            for j in srec:
                hidden = hidden + self.hidden_loss(srec[j].hidden, trec[j].hidden, masks[s])
                n += 1
        return {
            "ce": out.loss,
            "logit": self.logit_loss(out.logits, teacher_logits, masks["decoder"]),
            "hidden": hidden / max(n, 1),
        }

    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        started = time.perf_counter()
        cfg = self.config
        parts = self.losses(batch)
        weights = {"ce": 1.0, "logit": cfg.w_logit, "hidden": cfg.w_hidden}
        loss = sum(weights[k] * v for k, v in parts.items())
        if not torch.isfinite(loss):
            bad = next((k for k, v in parts.items() if not torch.isfinite(v)), "total")
            raise ConfigError(
                f"step {self.state.step + 1}: the {bad} loss is not finite; training stopped "
                "(the last checkpoint is kept; try a lower lr)",
                settings="lr",
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        shown = {k: float(v.detach()) for k, v in parts.items()}
        return StepResult(self.state.step, float(loss.detach()), shown, time.perf_counter() - started)

    def evaluate(self, batch_size: int = 64) -> dict[str, float]:
        self.student.eval()
        try:
            return {"loss": teacher_forced_loss(self.student, self.heldout.batches(batch_size, shuffle=False))}
        finally:
            self.student.train(self.config.dropout)

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def run(self) -> StudentRun:
        """What `modformer.json` says about the student as it is now."""
        return StudentRun(
            config=self.config,
            layers=self.layer_map,
            parameters=sum(p.numel() for p in self.student.parameters()),
            completed_steps=self.state.step,
            wall_s=self.state.seconds,
            history=list(self.state.history),
            data_report=self.data_report or {},
        )

    kept_files = (PSEUDO_NAME,)  # generated (or copied) into the folder before the first checkpoint

    def save(self, folder: Path) -> None:
        """The student, tokenizer and info into the checkpoint being written (`Recipe.save_checkpoint`, which keeps
        the pseudo-labels)."""
        self.student.eval()
        self.student.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.run().save(folder)
        self.student.train(self.config.dropout)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.student.named_parameters()

    def resume(self, out_dir: str | Path) -> None:
        """Continue the run saved in `out_dir`: its student weights, optimizer, scheduler, random states and step."""
        out_dir = Path(out_dir)
        check_recorded(out_dir, asdict(StudentRun.load(out_dir).config), self.config, RESUME_KEYS)
        from safetensors.torch import load_file

        try:
            self.student.load_state_dict(load_file(out_dir / "model.safetensors"), strict=False)
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"{out_dir}: cannot load the student ({err})") from None
        super().resume(out_dir)


def student_pairs(
    config: BaselineConfig,
    teacher: nn.Module,
    tokenizer,
    train: Seq2SeqData,
    out_dir: str | Path,
    *,
    pseudo_labels_file: str | Path | None = None,
    on_labels: Callable[[int, int], None] | None = None,
) -> Seq2SeqData:
    """The pairs a student of `config.method` trains on: `train` itself, or (pseudo) its sources with the teacher's
    outputs, read from `pseudo_labels_file` or generated (and cached in `out_dir`).

    `on_labels(done, total)` reports generation: once with 0 before it starts, then after each batch.
    """
    _check_pseudo_option(config, pseudo_labels_file)
    if config.method != "pseudo":
        return train
    if pseudo_labels_file is not None:  # checked, then copied into out_dir
        targets = read_pseudo_labels(Path(pseudo_labels_file), len(train), Path(out_dir))
    else:
        total = len(train)
        report = (lambda n: on_labels(n, total)) if on_labels else None
        if report:
            report(0)
        targets = pseudo_labels(
            teacher,
            tokenizer,
            train.sources,
            Path(out_dir),
            max_new_tokens=config.max_new_tokens,
            max_source_len=config.max_source_len,
            on_batch=report,
        )
    # The reading's record (pairs left out, warnings) stays; the references are the teacher's outputs now.
    return dataclasses.replace(train, targets=targets, origin=f"{train.origin}, teacher's outputs", references=None)


def _check_pseudo_option(config: BaselineConfig, pseudo_labels_file: str | Path | None) -> None:
    if pseudo_labels_file is not None and config.method != "pseudo":
        raise ConfigError(
            f"pseudo_labels_file is for the pseudo method, not {config.method}", settings="pseudo_labels_file"
        )


def run_baseline(
    config: BaselineConfig,
    teacher: str | Path,
    data: DataSpec,
    out_dir: str | Path,
    *,
    train_split: str = "train",
    val_split: str = "val",
    pseudo_labels_file: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_labels: Callable[[int, int], None] | None = None,
    on_start: Callable[[StudentTrainer], None] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainState:
    """What `modformer baseline` does: check `out_dir`, read the splits and the teacher, make the training pairs
    (`student_pairs`), train (or continue) the student and save it.

    `on_start` sees the trainer once it is set up (its `state.step` is where a resumed run continues).
    """
    _check_pseudo_option(config, pseudo_labels_file)  # before anything is read
    check_output(out_dir, resume=resume, overwrite=overwrite, marker=STATE_NAME, what="baseline run")
    train = load_split(data, train_split)
    heldout = load_split(data, val_split, limit=config.eval_pairs)
    same = same_data_warning(train, heldout, val_split=val_split)
    teacher_model = load_seq2seq(teacher, eager=config.method == "kd")
    tokenizer = load_tokenizer(teacher)
    train = student_pairs(
        config, teacher_model, tokenizer, train, out_dir, pseudo_labels_file=pseudo_labels_file, on_labels=on_labels
    )
    lengths = (config.max_source_len, config.max_target_len)
    train_ids, heldout_ids = train.tokenize(tokenizer, *lengths), heldout.tokenize(tokenizer, *lengths)
    trainer = StudentTrainer(teacher_model, tokenizer, config, train_ids, heldout_ids)
    trainer.origin = train.origin
    trainer.data_report = data_report({"train": (train, train_ids), "heldout": (heldout, heldout_ids)}, [same])
    if resume:
        trainer.resume(out_dir)
    if on_start:
        on_start(trainer)
    return trainer.fit(out_dir, on_step=on_step, on_eval=on_eval)


def read_pseudo_labels(path: Path, count: int, out_dir: Path) -> list[str]:
    """Labels made earlier (one per line, e.g. another student's `pseudo_labels.txt`), copied into `out_dir`."""
    lines = read_lines(Path(path))
    if len(lines) != count:
        raise ConfigError(
            f"{path}: {len(lines)} pseudo-labels for {count} training sources; they must pair line by line"
        )
    if any(not line.strip() for line in lines):
        raise ConfigError(f"{path}: line {next(i for i, x in enumerate(lines, 1) if not x.strip())} is empty")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(out_dir) / PSEUDO_NAME) as tmp:
        Path(tmp).write_text("\n".join(lines), encoding="utf-8")
    return lines


def pseudo_labels(
    teacher: nn.Module,
    tokenizer,
    sources: list[str],
    out_dir: Path,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 64,
    max_source_len: int = 128,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The teacher's greedy outputs for `sources` (cut to `max_source_len` tokens), cached in
    `out_dir/pseudo_labels.txt` (one per line)."""
    from modformer.evaluation import generate

    path = Path(out_dir) / PSEUDO_NAME
    if path.is_file():
        lines = path.read_text(encoding="utf-8").split("\n")[: len(sources)]
        if len(lines) == len(sources):
            return lines
    data = Seq2SeqData(sources, [""] * len(sources), "pseudo-label sources").tokenize(tokenizer, max_source_len)
    outputs = generate(
        teacher, tokenizer, data.batches(batch_size, shuffle=False), max_new_tokens=max_new_tokens, on_batch=on_batch
    )
    outputs = [" ".join(o.split()) or "." for o in outputs]  # one line each, never empty
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(outputs), encoding="utf-8")
    return outputs
