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
(method, shape, copied layers, steps, wall time) and ``trainer_state.pt`` (optimizer, scheduler, random states,
step, held-out history) for ``--resume``. Every checkpoint rewrites the folder whole (write aside, rename).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from modformer import __version__
from modformer.data import TokenizedData, read_lines
from modformer.errors import CheckpointError, ConfigError
from modformer.evaluation import teacher_forced_loss
from modformer.io import atomic_dir, atomic_path, read_json, torch_load, write_json
from modformer.modular.families import STACKS, adapter_for
from modformer.modular.losses import HiddenStateLoss, LogitLoss
from modformer.modular.model import standalone
from modformer.modular.trainer import decode_random_state, encode_random_state, warmup_linear_decay

METHODS = ("sft", "kd", "pseudo")
STATE_NAME = "trainer_state.pt"
INFO_NAME = "modformer.json"
PSEUDO_NAME = "pseudo_labels.txt"


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
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown baseline {self.method!r}; choose from {', '.join(METHODS)}")
        parse_shape(self.shape)
        for name in ("steps", "batch_size", "lr", "temperature", "max_new_tokens"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("w_logit", "w_hidden", "warmup_steps", "eval_every", "save_every"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class StudentState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training wall time so far, over all sessions


class StudentTrainer:
    """Trains one fixed-shape student (see the module docstring)."""

    def __init__(self, teacher: nn.Module, config: BaselineConfig, train: TokenizedData, heldout: TokenizedData):
        self.teacher, self.config, self.train, self.heldout = teacher.eval(), config, train, heldout
        teacher.requires_grad_(False)
        self.student, self.layer_map = make_student(teacher, config.shape)
        self.student.train()
        self.adapter = adapter_for(teacher.config)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.hidden_loss, self.logit_loss = HiddenStateLoss(), LogitLoss(config.temperature)
        self.state = StudentState()
        self.rng = random.Random(config.seed)
        torch.manual_seed(config.seed)

    def _lr_factor(self, step: int) -> float:
        return warmup_linear_decay(step, self.config.warmup_steps, self.config.steps)

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

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        cfg = self.config
        parts = self.losses(batch)
        weights = {"ce": 1.0, "logit": cfg.w_logit, "hidden": cfg.w_hidden}
        loss = sum(weights[k] * v for k, v in parts.items())
        if not torch.isfinite(loss):
            bad = next((k for k, v in parts.items() if not torch.isfinite(v)), "total")
            raise ConfigError(
                f"step {self.state.step + 1}: the {bad} loss is not finite; training stopped "
                "(the last checkpoint is kept; try a lower --lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        return float(loss.detach()), {k: float(v.detach()) for k, v in parts.items()}

    def evaluate(self, batch_size: int = 64) -> float:
        self.student.eval()
        try:
            return teacher_forced_loss(self.student, self.heldout.batches(batch_size, shuffle=False))
        finally:
            self.student.train()

    # --- the loop -------------------------------------------------------------------------------------------------
    def fit(
        self,
        out_dir: Path,
        tokenizer,
        on_step: Callable[[int, float, dict], None] | None = None,
        on_eval: Callable[[int, float], None] | None = None,
    ) -> StudentState:
        cfg = self.config
        stream = self.train.stream(cfg.batch_size, seed=cfg.seed, start_step=self.state.step)
        started = time.perf_counter() - self.state.seconds
        while self.state.step < cfg.steps:
            loss, parts = self.step(next(stream))
            self.state.seconds = time.perf_counter() - started
            if on_step:
                on_step(self.state.step, loss, parts)
            step, last = self.state.step, self.state.step == cfg.steps
            if last or (cfg.eval_every and step % cfg.eval_every == 0):
                held_out = self.evaluate()
                self.state.history.append({"step": step, "loss": held_out})
                if on_eval:
                    on_eval(step, held_out)
            if last or (cfg.save_every and step % cfg.save_every == 0):
                self.save(out_dir, tokenizer)
        return self.state

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save(self, out_dir: Path, tokenizer) -> None:
        """The whole folder, written aside and renamed: the student, tokenizer, info and trainer state."""
        pseudo = Path(out_dir) / PSEUDO_NAME
        keep = pseudo.read_text(encoding="utf-8") if pseudo.is_file() else None
        self.student.eval()
        with atomic_dir(out_dir, overwrite=True) as tmp:
            self.student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / INFO_NAME, self.info())
            torch.save(self._state_dict(), tmp / STATE_NAME)
            if keep is not None:
                (tmp / PSEUDO_NAME).write_text(keep, encoding="utf-8")
        self.student.train()

    def info(self) -> dict:
        params = sum(p.numel() for p in self.student.parameters())
        return {
            "modformer_version": __version__,
            "baseline": asdict(self.config),
            "layers": self.layer_map,
            "parameters": params,
            "completed_steps": self.state.step,
            "wall_s": round(self.state.seconds, 1),
            "history": self.state.history,
        }

    def _state_dict(self) -> dict:
        return {
            "step": self.state.step,
            "seconds": self.state.seconds,
            "history": self.state.history,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "python_rng": encode_random_state(self.rng.getstate()),
            "torch_rng": torch.get_rng_state(),
        }

    def resume(self, out_dir: Path) -> None:
        """Continue the run saved in `out_dir`: its student weights, optimizer, scheduler, random states and step."""
        out_dir = Path(out_dir)
        info = read_json(out_dir / INFO_NAME, "baseline info")
        recorded = info.get("baseline", {})
        for key in ("method", "shape", "batch_size", "seed"):
            if recorded.get(key) != getattr(self.config, key):
                raise ConfigError(
                    f"--resume: {out_dir} was trained with {key} {recorded.get(key)!r}, "
                    f"not {getattr(self.config, key)!r}"
                )
        from safetensors.torch import load_file

        try:
            self.student.load_state_dict(load_file(out_dir / "model.safetensors"), strict=False)
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"{out_dir}: cannot load the student ({err})") from None
        state = torch_load(out_dir / STATE_NAME, "trainer state")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(decode_random_state(state["python_rng"]))
        torch.set_rng_state(state["torch_rng"])
        self.state = StudentState(
            step=int(state["step"]), history=list(state["history"]), seconds=float(state["seconds"])
        )
        if self.state.step > self.config.steps:
            raise ConfigError(f"the run in {out_dir} is at step {self.state.step}, past --steps {self.config.steps}")


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
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The teacher's greedy outputs for `sources`, cached in `out_dir/pseudo_labels.txt` (one per line)."""
    from modformer.data import Seq2SeqData
    from modformer.evaluation import generate

    path = Path(out_dir) / PSEUDO_NAME
    if path.is_file():
        lines = path.read_text(encoding="utf-8").split("\n")[: len(sources)]
        if len(lines) == len(sources):
            return lines
    data = Seq2SeqData(sources, [""] * len(sources), "pseudo-label sources").tokenize(tokenizer)
    outputs = generate(
        teacher, tokenizer, data.batches(batch_size, shuffle=False), max_new_tokens=max_new_tokens, on_batch=on_batch
    )
    outputs = [" ".join(o.split()) or "." for o in outputs]  # one line each, never empty
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(outputs), encoding="utf-8")
    return outputs
