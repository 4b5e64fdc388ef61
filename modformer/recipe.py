"""The one training skeleton every recipe shares (teacher, modules, students), in the spirit of torchtune's recipes.

A recipe is a small object: its constructor sets up (model, optimizer, scheduler, losses); `step` trains on one
batch; `evaluate` scores the held-out data; `save` writes what the recipe makes; `resume` continues a saved run. What
every recipe does the same way lives here:

* the loop (`Recipe.fit`): the training stream from the current step, held-out scores every `eval_every` steps,
  a checkpoint every `save_every` steps, both at the last step too;
* one state class (`TrainState`: step, held-out history, wall time);
* the trainer checkpoint (`TrainerCheckpoint`, `trainer_state.pt`): optimizer, scheduler, the python, numpy and torch
  random states and the state, so that a resumed run sees exactly the batches and draws of an uninterrupted one;
* a checkpoint as one unit (`Recipe.save_checkpoint`): the recipe's files, the trainer checkpoint and last a manifest
  (`checkpoint.json`: the step and the sha256 of every file) are written into a new folder beside the last checkpoint
  and switched in at once (`io.atomic_dir`), so a run killed at any instant resumes from the last complete checkpoint,
  and `resume` refuses a folder whose files do not match their manifest;
* the checks before a run writes its output folder (`check_output`).

A subclass specialises only what differs: how a step's loss is computed and what it saves into a checkpoint.
"""

from __future__ import annotations

import random
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from modformer import __version__
from modformer.data import TokenizedData
from modformer.errors import CheckpointError, ConfigError
from modformer.io import (
    atomic_dir,
    listed,
    nonfinite,
    read_json,
    recover_dir,
    refuse_existing,
    sha256_file,
    torch_load,
    torch_save,
    write_json,
)
from modformer.schemas import FORMAT_VERSION, CheckpointManifest, TrainerStateRecord, invalid, validate

STATE_NAME = "trainer_state.pt"
MANIFEST_NAME = "checkpoint.json"  # written last into every checkpoint: its step and the sha256 of each file


@dataclass
class TrainState:
    """Where a run stands; the same for every recipe."""

    step: int = 0
    history: list[dict] = field(default_factory=list)  # periodic held-out scores: {"step": n, name: loss, ...}
    seconds: float = 0.0  # training wall time so far, over all sessions (resumes included)


@dataclass
class StepResult:
    """What one optimizer step reports."""

    step: int
    loss: float  # the weighted total
    parts: dict[str, float]  # each loss part, unweighted
    seconds: float


@dataclass
class TrainerCheckpoint:
    """`trainer_state.pt`: everything beyond the weights that an exact resume needs.

    Older checkpoints lack some entries (the teacher's had no scheduler, history or python/numpy states; none had a
    numpy state); those load as empty and are left alone on resume.
    """

    state: TrainState
    optimizer: dict
    scheduler: dict | None = None
    python_rng: tuple | None = None  # the recipe's own random.Random
    numpy_rng: tuple | None = None  # numpy's global generator
    torch_rng: torch.Tensor | None = None  # torch's global CPU generator

    def save(self, out_dir: str | Path) -> None:
        """Write `out_dir/trainer_state.pt` atomically, as tensors and plain containers (loads with weights_only)."""
        obj = {
            "format_version": FORMAT_VERSION,
            "step": self.state.step,
            "history": self.state.history,
            "seconds": self.state.seconds,
            "optimizer": self.optimizer,
        }
        if self.scheduler is not None:
            obj["scheduler"] = self.scheduler
        if self.python_rng is not None:
            obj["python_rng"] = encode_random_state(self.python_rng)
        if self.numpy_rng is not None:
            obj["numpy_rng"] = encode_numpy_state(self.numpy_rng)
        if self.torch_rng is not None:
            obj["torch_rng"] = self.torch_rng
        torch_save(Path(out_dir) / STATE_NAME, obj)

    @classmethod
    def load(cls, out_dir: str | Path) -> TrainerCheckpoint:
        path = Path(out_dir) / STATE_NAME
        obj = torch_load(path, "trainer state")
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: trainer state must be a dictionary, got {type(obj).__name__}")
        validate(TrainerStateRecord, obj, path)
        try:
            return cls(
                state=TrainState(
                    step=int(obj["step"]),
                    history=list(obj.get("history", [])),
                    seconds=float(obj.get("seconds", 0.0)),
                ),
                optimizer=obj["optimizer"],
                scheduler=obj.get("scheduler"),
                python_rng=decode_random_state(obj["python_rng"]) if "python_rng" in obj else None,
                numpy_rng=decode_numpy_state(obj["numpy_rng"]) if "numpy_rng" in obj else None,
                torch_rng=obj.get("torch_rng"),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: cannot resume from it ({err})") from None


class Recipe(ABC):
    """The skeleton: a subclass sets `config` (steps, batch_size, seed, eval_every, save_every), `train`,
    `optimizer` (and `scheduler`, `rng` where it has them) in its constructor and implements `step`, `evaluate`,
    `save` and `named_weights`. `fit` is the loop; `save_checkpoint` writes a checkpoint as one unit; `checkpoint` /
    `resume` carry the trainer state across sessions."""

    config: object
    train: TokenizedData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    rng: random.Random | None = None  # the recipe's own draws (hybrids, ...), saved with the checkpoint
    origin: str = ""  # where the training pairs came from, for reports
    state: TrainState
    kept_files: tuple[str, ...] = ()  # put into the folder before the first checkpoint (pseudo-labels); kept in each

    # --- what each recipe specialises -----------------------------------------------------------------------------
    @abstractmethod
    def step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        """One optimizer step on `batch`."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Held-out losses by name."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the recipe's artifact (model, info) into `folder`, the checkpoint being written
        (`save_checkpoint` adds the trainer checkpoint and the manifest, then switches the folder in)."""

    @abstractmethod
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights the recipe trains and saves, by name (a checkpoint refuses them when not finite)."""

    @property
    def eval_every(self) -> int:
        return self.config.eval_every

    @property
    def save_every(self) -> int:
        return self.config.save_every

    # --- several processes (one by default) -----------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, reports and writes checkpoints."""
        return True

    def wait_for_everyone(self) -> None:
        """A barrier across processes; nothing to wait for in one process (the modular trainer overrides it)."""
        return None

    # --- the loop -------------------------------------------------------------------------------------------------
    def fit(
        self,
        out_dir: str | Path,
        on_step: Callable[[StepResult], None] | None = None,
        on_eval: Callable[[int, dict[str, float]], None] | None = None,
    ) -> TrainState:
        """Train from `state.step` to `config.steps`; evaluate and save on schedule and at the last step."""
        cfg, out_dir = self.config, Path(out_dir)
        stream = self.train.stream(cfg.batch_size, seed=cfg.seed, start_step=self.state.step)
        started = time.perf_counter() - self.state.seconds
        while self.state.step < cfg.steps:
            result = self.step(next(stream))
            self.state.seconds = time.perf_counter() - started
            if on_step:
                on_step(result)
            step, last = self.state.step, self.state.step == cfg.steps
            if self.is_main and (last or _due(step, self.eval_every)):
                scores = self.evaluate()
                self.state.history.append({"step": step, **scores})
                if on_eval:
                    on_eval(step, scores)
            if self.is_main and (last or _due(step, self.save_every)):
                self.save_checkpoint(out_dir)
        self.wait_for_everyone()  # the others end once the main process has written the last checkpoint
        return self.state

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, out_dir: str | Path) -> None:
        """This step's checkpoint as one unit: the kept files, the recipe's artifact (`save`), the trainer checkpoint
        and last the manifest, written into a new folder beside `out_dir` and switched in at once.

        Non-finite weights are refused (nothing is written; the last checkpoint stays): resuming from them could only
        fail."""
        out_dir = Path(out_dir)
        bad = nonfinite(self.named_weights())
        if bad:
            raise CheckpointError(
                f"step {self.state.step}: the weights hold NaN or infinity in {listed(bad)}; the checkpoint was not "
                f"written ({out_dir} keeps the last one)"
            )
        with atomic_dir(out_dir, overwrite=True) as folder:
            for name in self.kept_files:
                if (out_dir / name).is_file():
                    shutil.copy2(out_dir / name, folder / name)
            self.save(folder)
            self.checkpoint().save(folder)
            write_manifest(folder, self.state.step)

    def checkpoint(self) -> TrainerCheckpoint:
        """The trainer state as it is now."""
        return TrainerCheckpoint(
            state=TrainState(self.state.step, list(self.state.history), self.state.seconds),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            python_rng=self.rng.getstate() if self.rng is not None else None,
            numpy_rng=np.random.get_state(),
            torch_rng=torch.get_rng_state(),
        )

    def resume(self, out_dir: str | Path) -> None:
        """Continue the run saved in `out_dir` (its weights must already be loaded): optimizer, scheduler, random
        states and step, once every file is the one its checkpoint wrote (`verify_checkpoint`)."""
        checkpoint = TrainerCheckpoint.load(out_dir)
        step = verify_checkpoint(out_dir)
        if step is not None and step != checkpoint.state.step:
            raise invalid(
                Path(out_dir) / MANIFEST_NAME, "step", f"{step}, but {STATE_NAME} is of step {checkpoint.state.step}"
            )
        self.restore(checkpoint, out_dir)

    def restore(self, checkpoint: TrainerCheckpoint, out_dir: str | Path) -> None:
        where = Path(out_dir) / STATE_NAME
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer)
            if self.scheduler is not None:
                if checkpoint.scheduler is None:
                    raise KeyError("scheduler")
                self.scheduler.load_state_dict(checkpoint.scheduler)
            if self.rng is not None and checkpoint.python_rng is not None:
                self.rng.setstate(checkpoint.python_rng)
            if checkpoint.numpy_rng is not None:
                np.random.set_state(checkpoint.numpy_rng)
            if checkpoint.torch_rng is not None:
                torch.set_rng_state(checkpoint.torch_rng)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{where}: cannot resume from it ({err})") from None
        self.state = checkpoint.state
        if self.state.step > self.config.steps:
            raise ConfigError(
                f"the run in {out_dir} is at step {self.state.step}, past steps {self.config.steps}; raise steps",
                settings="steps",
            )


def _due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0


def check_output(out_dir: str | Path, *, resume: bool, overwrite: bool, marker: str, what: str) -> None:
    """Before a run touches `out_dir`: `resume` needs a saved run (its `marker` file), a new run an absent folder
    (or `overwrite`). A checkpoint switch that a crash interrupted is finished first (`io.recover_dir`)."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("resume and overwrite contradict each other: choose one", settings=("resume", "overwrite"))
    recover_dir(out_dir)
    if resume and not (out_dir / marker).is_file():
        raise ConfigError(f"resume: {out_dir} holds no {what} to continue", settings="resume")
    if not resume:
        refuse_existing(out_dir, overwrite)


def write_manifest(folder: str | Path, step: int) -> None:
    """`checkpoint.json`, written last into a checkpoint folder: the step and each file's size and sha256."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = {"format_version": FORMAT_VERSION, "modformer_version": __version__, "step": step, "files": files}
    write_json(folder / MANIFEST_NAME, manifest)


def verify_checkpoint(out_dir: str | Path) -> int | None:
    """The step of the checkpoint in `out_dir`, once every file its manifest lists is there with the recorded
    content (CheckpointError naming the first that is not); None for a checkpoint written before manifests."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = read_json(path, "checkpoint manifest")
    validate(CheckpointManifest, manifest, path)
    try:
        step = int(manifest["step"])
        files = {str(name): (int(entry["bytes"]), str(entry["sha256"])) for name, entry in manifest["files"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: checkpoint manifest is malformed ({err!r})") from None
    for name, (size, digest) in sorted(files.items()):
        file = out_dir / name
        if not file.is_file():
            raise CheckpointError(
                f"{file}: missing from the checkpoint of step {step} ({MANIFEST_NAME}); cannot resume"
            )
        if file.stat().st_size != size or sha256_file(file) != digest:
            raise CheckpointError(
                f"{file}: not the file the checkpoint of step {step} wrote ({MANIFEST_NAME} records another size or "
                "sha256): the folder mixes checkpoints or was changed; cannot resume"
            )
    return step


def config_from(cls: type, recorded: dict, where: str | Path):
    """The config dataclass `cls` a run recorded as `recorded` (its `asdict`); keys it no longer has are dropped,
    keys added since take their defaults."""
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in recorded.items() if k in known})
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"{where}: the recorded settings are not valid ({err})") from None


def check_recorded(out_dir: str | Path, recorded: dict, config: object, keys: tuple[str, ...]) -> None:
    """A resumed run must keep the settings that decide its batches and shapes."""
    for key in keys:
        if recorded.get(key) != getattr(config, key):
            raise ConfigError(
                f"resume: {out_dir} was trained with {key} {recorded.get(key)!r}, not {getattr(config, key)!r}",
                settings="resume",
            )


# --- optimisation shared by the AdamW recipes ---------------------------------------------------------------------
def warmup_linear_decay(step: int, warmup_steps: int, steps: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup_steps`, then linear decay to 10 % at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.1, 1.0 - 0.9 * (step - warmup_steps) / max(steps - warmup_steps, 1))


def adamw_with_warmup(
    params, *, lr: float, weight_decay: float, warmup_steps: int, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at peak `lr` with `warmup_linear_decay`."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_decay(step, warmup_steps, steps)
    )
    return optimizer, scheduler


# --- random states as tensors and plain values (so a checkpoint loads with torch.load(weights_only=True)) ---------
def encode_random_state(state: tuple) -> dict:
    """random.Random state as tensors and ints."""
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def decode_random_state(obj: dict) -> tuple:
    return (obj["version"], tuple(int(x) for x in obj["internal"].tolist()), obj["gauss"])


def encode_numpy_state(state: tuple) -> dict:
    """numpy's legacy global state ('MT19937', keys, pos, has_gauss, cached_gaussian) as tensors and numbers."""
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def decode_numpy_state(obj: dict) -> tuple:
    keys = obj["keys"].numpy().astype(np.uint32)
    return (obj["kind"], keys, obj["pos"], obj["has_gauss"], obj["cached_gaussian"])
