"""The training recipe: multi-grained module replacing with distillation (setup / step / evaluate / save / resume).

One step:
1. sample `hybrids_per_step` hybrid assemblies (teacher layers + modules of several granularities; see
   `curriculum`), independently;
2. run the frozen teacher once (eval mode, no grad) and record, for each module in any of the hybrids, the
   teacher's hidden state and attention maps at the *last* layer of the module's span;
3. run each hybrid (the teacher's own stacks with layer lists swapped) on the same batch;
4. a hybrid's loss = w_ce * CE(labels) + w_hidden * HiddenStateLoss + w_attn * AttentionLoss (self-attention, and
   in the decoder cross-attention too) + w_logit * LogitLoss; the step's loss is the mean over its hybrids (each
   hybrid's backward pass runs before the next forward, so memory is that of one hybrid). Only module parameters
   get gradients; one optimizer step follows.
With one hybrid per step a module of a 12-layer stack is in about one step in four to eight; several hybrids share
the teacher's pass and give every module more updates per step. The defaults (`TrainConfig`) are the recipe
`benchmarks/decoder_gap.py` found best: six hybrids per step, each row of the batch through two of them
(`split_batch`, `hybrids_per_row`), half of them on the teacher's whole encoder, no curriculum, logit
distillation and cross-entropy only, lr 1e-3, and the modules without dropout (`dropout`: the teacher's dropout is
for training from scratch over many epochs; a module sees about two epochs' rows, and without it the coarse shapes
gained 0.7-1.4 BLEU on val). The README's "The default recipe" has the figures.

Several processes (data parallel, launched with `torchrun` or `accelerate launch`; `accelerate.PartialState` reads
the launcher's environment and sets up the process group: gloo on CPUs, NCCL on GPUs): every process draws the same
global batch and the same hybrid (same seeds), takes its share of the batch's rows (`rank::world`), and the module
gradients are averaged across processes (one all-reduce of one flat buffer) before the step. So N processes with a
global batch B train like one process with batch B, except with `split_batch`: each process splits its own rows
among the hybrids, so the hybrids see the same rows in expectation, not the same rows (a short batch can leave a
process fewer hybrids than another; a parameter with a gradient in any process then gets the mean). Only the main
process evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from accelerate import PartialState
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers.modeling_outputs import BaseModelOutput

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import DataSpec, TokenizedData, data_report, load_split, same_data_warning
from modformer.errors import CheckpointError, ConfigError
from modformer.evaluation import teacher_forced_loss
from modformer.io import read_tensors, write_tensors
from modformer.modular.assembly import Assembly
from modformer.modular.curriculum import Curriculum, sample_hybrid
from modformer.modular.families import STACKS, BlockRecord
from modformer.modular.losses import AttentionLoss, HiddenStateLoss, LogitLoss
from modformer.modular.model import CONFIG_NAME, ModularModel
from modformer.recipe import (
    Recipe,
    StepResult,
    TrainState,
    adamw_with_warmup,
    check_output,
)

TRAINING_WEIGHTS_NAME = "modules_training.safetensors"  # with --ema: the weights being trained (the modules file holds
# their moving average); a resume continues from them


@dataclass
class TrainConfig:
    """Settings of one modular training run. The defaults are the recipe `benchmarks/decoder_gap.py` measured best
    (docs/decoder-gap.md, section 2c): module quality is bound by the rows each module learns from, so six hybrids
    share each step's teacher pass and every row runs through two of them.

    With `split_batch`, each row runs through min(hybrids_per_row, hybrids_per_step) hybrids, and a batch with fewer
    rows than hybrids (an epoch's short last batch, or a small --batch-size) trains one hybrid per row. Without it,
    every row runs through every hybrid and hybrids_per_row does not apply."""

    steps: int = 2000  # optimizer steps
    batch_size: int = 32  # sentence pairs per step
    lr: float = 1e-3  # AdamW peak learning rate (modules start from teacher layers: a fine-tuning rate)
    warmup_steps: int = 100  # linear warm-up, then linear decay to 10 % of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm
    w_ce: float = 1.0  # task cross-entropy of the hybrid
    w_hidden: float = 0.0  # hidden-state distillation (off by default: see the docstring)
    w_attn: float = 0.0  # attention distillation (off by default: see the docstring)
    w_logit: float = 1.0  # logit distillation (0 = off)
    temperature: float = 2.0  # logit distillation temperature
    replace_start: float = 0.5  # curriculum: replacement rate at step 0
    replace_end: float = 1.0  # ... at the last step
    curriculum: bool = False  # coarse-to-fine schedule; False = constant granularity weights at replace_end's rate
    coarse_bias: float = 0.0  # without the curriculum, granularity k is drawn with weight k ** coarse_bias
    hybrids_per_step: int = 6  # hybrids sampled per step; they share one teacher pass and one optimizer step
    deployed_share: float = 0.0  # share of hybrid stacks drawn from those the strategies deploy (see curriculum)
    teacher_encoder_share: float = 0.5  # share of hybrids whose encoder is the teacher's own (see curriculum)
    top_init: bool = False  # a module whose span ends at the top of its stack starts as the stack's top layer
    dropout: bool = False  # True: modules train with the teacher's dropout; False: without it (module docstring)
    ema: float = 0.0  # > 0: decay of an exponential moving average of the module weights, saved and evaluated
    split_batch: bool = True  # each hybrid runs on its own share of the batch's rows (see hybrids_per_row)
    hybrids_per_row: int = 2  # with split_batch, each row runs through R of the H hybrids: about R hybrids' cost
    eval_every: int = 200  # held-out loss every N steps (0 = only at the end)
    save_every: int = 200  # checkpoint every N steps (0 = only at the end)
    eval_pairs: int = 256  # held-out pairs for the periodic loss
    max_source_len: int = 128
    max_target_len: int = 128
    seed: int = 0

    def __post_init__(self):
        positive = (
            "steps",
            "batch_size",
            "lr",
            "max_source_len",
            "max_target_len",
            "temperature",
            "hybrids_per_step",
            "hybrids_per_row",
        )
        for name in positive:
            if not getattr(self, name) > 0:  # also catches NaN
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("w_ce", "w_hidden", "w_attn", "w_logit", "warmup_steps", "eval_every", "save_every"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.w_ce + self.w_hidden + self.w_attn + self.w_logit == 0:
            raise ConfigError("all loss weights are 0: nothing would be trained")
        if not 0.0 <= self.ema < 1.0:  # also catches NaN
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        for name in ("deployed_share", "teacher_encoder_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # also catches NaN
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        Curriculum(self.replace_start, self.replace_end, self.curriculum, self.coarse_bias)  # validates them

    @property
    def schedule(self) -> Curriculum:
        return Curriculum(self.replace_start, self.replace_end, self.curriculum, self.coarse_bias)


@dataclass
class HybridStepResult(StepResult):
    hybrid: str  # the sampled assemblies, " | " between them when a step has several


def probe_assemblies(model: ModularModel) -> dict[str, Assembly]:
    """Fixed assemblies whose held-out loss is tracked during training: each granularity alone, where it tiles."""
    probes = {}
    for k in model.config.granularities:
        if model.config.encoder_layers % k == 0 and model.config.decoder_layers % k == 0:
            probes[f"k{k}"] = Assembly(
                encoder=(k,) * (model.config.encoder_layers // k), decoder=(k,) * (model.config.decoder_layers // k)
            )
    return probes


class ReplacingTrainer(Recipe):
    """Trains the modules of a `ModularModel` by random multi-grained replacement with distillation.

    The loop, evaluation schedule and trainer checkpoint are the shared recipe's (`modformer.recipe.Recipe`); this
    class adds the hybrid step, the probe evaluation, the process group and what it saves (modules + config).
    """

    data_report: dict | None = None  # what reading and tokenizing the pairs did (`data.data_report`), saved too

    def __init__(self, model: ModularModel, config: TrainConfig, train: TokenizedData, heldout: TokenizedData):
        self.model, self.config, self.train, self.heldout = model, config, train, heldout
        # One process, or the group torchrun / accelerate launch started (gloo on CPUs, NCCL on GPUs).
        self.processes = PartialState(cpu=not torch.cuda.is_available())
        if config.batch_size < self.processes.num_processes:
            raise ConfigError(
                f"batch_size {config.batch_size} is smaller than the {self.processes.num_processes} processes "
                "that share it",
                settings="batch_size",
            )
        self.device = self.processes.device
        model.to(self.device)
        model.teacher.set_attn_implementation("eager")  # attention maps for distillation
        self.params = model.trainable_parameters()
        self.optimizer, self.scheduler = adamw_with_warmup(
            self.params,
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps,
            steps=config.steps,
        )
        self.hidden_loss, self.attn_loss = HiddenStateLoss(), AttentionLoss()
        self.logit_loss = LogitLoss(config.temperature)
        # --ema: a moving average of the module weights (torch's AveragedModel), which is what evaluate() scores and
        # save() writes as the modules; the weights being trained go into the checkpoint beside them, for a resume
        self.averaged = (
            AveragedModel(model.blocks, multi_avg_fn=get_ema_multi_avg_fn(config.ema)) if config.ema > 0 else None
        )
        self.rng = random.Random(config.seed)
        self.state = TrainState()
        torch.manual_seed(config.seed)

    @classmethod
    def start_or_resume(
        cls,
        teacher,
        teacher_path: str | Path,
        out_dir: str | Path,
        config: TrainConfig,
        train: TokenizedData,
        heldout: TokenizedData,
        *,
        resume: bool,
        granularities: list[int] | None = None,
    ) -> ReplacingTrainer:
        """A trainer for fresh modules of `teacher`, or (`resume`) for the run saved in `out_dir`, at its step."""
        if resume:
            model = ModularModel.from_pretrained(out_dir, teacher)
            model.config.teacher = str(Path(teacher_path).resolve())  # the teacher checked above, where it is now
            if granularities is not None and granularities != model.config.granularities:
                raise ConfigError(
                    f"resume: {out_dir} was trained with granularities {model.config.granularities}, "
                    f"not {granularities}",
                    settings="resume",
                )
        else:
            model = ModularModel.from_teacher(teacher, teacher_path, granularities, top_init=config.top_init)
        trainer = cls(model, config, train, heldout)
        if resume:
            trainer.resume(out_dir)
        return trainer

    # --- one step -------------------------------------------------------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor]) -> HybridStepResult:
        started = time.perf_counter()
        cfg, model = self.config, self.model
        progress = self.state.step / cfg.steps
        c = model.config
        hybrids = [
            sample_hybrid(
                c.encoder_layers,
                c.decoder_layers,
                c.granularities,
                cfg.schedule,
                progress,
                self.rng,
                deployed_share=cfg.deployed_share,
                teacher_encoder_share=cfg.teacher_encoder_share,
            )
            for _ in range(cfg.hybrids_per_step)
        ]
        batch = self._share(batch)
        if cfg.split_batch:  # a short batch (an epoch's last) may hold fewer rows than hybrids: one row each at least
            hybrids = hybrids[: len(batch["input_ids"])]
        targets = self.teacher_targets(batch, hybrids)
        weights = {"ce": cfg.w_ce, "hidden": cfg.w_hidden, "attn": cfg.w_attn, "logit": cfg.w_logit}
        self.optimizer.zero_grad(set_to_none=True)
        summed = None
        for i, hybrid in enumerate(hybrids):
            if cfg.split_batch:  # hybrid i sees rows i, i+H, ... (and the R-1 rows after each): equal shares
                rows = split_rows(len(batch["input_ids"]), i, len(hybrids), cfg.hybrids_per_row)
                parts = self.hybrid_losses(_rows(batch, rows), hybrid, _rows(targets, rows))
            else:
                parts = self.hybrid_losses(batch, hybrid, targets)
            loss = sum(weights[k] * v for k, v in parts.items())
            figures = torch.stack([loss.detach(), *(v.detach() for v in parts.values())])
            summed = figures if summed is None else summed + figures
            if torch.isfinite(figures).all():  # a non-finite loss stops the run below, before any update
                (loss / len(hybrids)).backward()
        shown = self._mean_across_processes(summed / len(hybrids))
        if not torch.isfinite(shown).all():  # every process sees the same figures, so all stop together
            named = dict(zip(["total", *parts], shown.tolist(), strict=True))
            bad = next((k for k in parts if not np.isfinite(named[k])), "total")
            raise ConfigError(
                f"step {self.state.step + 1}: the {bad} loss is {named[bad]}; training stopped "
                "(the last checkpoint is kept; try a lower lr)",
                settings="lr",
            )
        self._average_gradients()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model.blocks)
        self.state.step += 1
        return HybridStepResult(
            step=self.state.step,
            loss=float(shown[0]),
            parts={k: float(v) for k, v in zip(parts, shown[1:], strict=True)},
            hybrid=" | ".join(h.format() for h in hybrids),
            seconds=time.perf_counter() - started,
        )

    # --- several processes ----------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.processes.is_main_process

    def wait_for_everyone(self) -> None:
        self.processes.wait_for_everyone()

    def _share(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's rows of the global batch, on this process's device."""
        n, rank = self.processes.num_processes, self.processes.process_index
        return {k: (v[rank::n] if n > 1 else v).to(self.device) for k, v in batch.items()}

    def _sum_across_processes(self, values: torch.Tensor) -> torch.Tensor:
        if self.processes.num_processes == 1:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values

    def _mean_across_processes(self, values: torch.Tensor) -> torch.Tensor:
        if self.processes.num_processes == 1:
            return values
        return self._sum_across_processes(values) / self.processes.num_processes

    def _average_gradients(self) -> None:
        """Mean of the module gradients over processes, as one flat buffer. All processes drew the same hybrids, but
        with --split-batch a short batch can leave one process fewer of them: a parameter with a gradient in any
        process gets the mean (zero where a process had none); one with a gradient in none keeps none (the optimizer
        skips it)."""
        if self.processes.num_processes == 1:
            return
        used = torch.tensor([float(p.grad is not None) for p in self.params], device=self.device)
        anywhere = self._sum_across_processes(used) > 0
        params = [p for p, used in zip(self.params, anywhere.tolist(), strict=True) if used]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = self._mean_across_processes(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def losses(self, batch: dict[str, torch.Tensor], hybrid: Assembly) -> dict[str, torch.Tensor]:
        """Each loss part of running `hybrid` on `batch`, against the frozen teacher."""
        return self.hybrid_losses(batch, hybrid, self.teacher_targets(batch, [hybrid]))

    def _needs_teacher(self) -> bool:
        cfg = self.config
        return cfg.w_hidden > 0 or cfg.w_attn > 0 or cfg.w_logit > 0

    @staticmethod
    def _module_ends(hybrid: Assembly) -> dict[str, dict[int, int]]:
        """stack -> {position of a module in the hybrid: teacher layer at the end of its span}."""
        return {s: {j: st + k - 1 for j, (st, k) in enumerate(hybrid.spans(s)) if k > 1} for s in STACKS}

    def teacher_targets(self, batch: dict[str, torch.Tensor], hybrids: list[Assembly]) -> dict:
        """One pass of the frozen teacher: its logits, and what its layers at the ends of the hybrids' module spans
        produced (hidden state, attention maps). Empty when no distillation loss is on."""
        if not self._needs_teacher():
            return {}
        model, adapter = self.model, self.model.adapter
        teacher = model.teacher
        ends = {s: sorted({e for h in hybrids for e in self._module_ends(h)[s].values()}) for s in STACKS}
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        with torch.no_grad():
            t_layers = {s: {e: adapter.layers(teacher, s)[e] for e in ends[s]} for s in STACKS}
            with (
                adapter.record(t_layers["encoder"], "encoder") as t_enc,
                adapter.record(t_layers["decoder"], "decoder") as t_dec,
            ):
                out = teacher(**inputs, use_cache=False)
        # the encoder's output too: a hybrid that keeps the teacher's encoder whole reads it instead of running it
        return {
            "logits": out.logits,
            "encoder": t_enc,
            "decoder": t_dec,
            "encoder_out": out.encoder_last_hidden_state,
        }

    def hybrid_losses(self, batch: dict[str, torch.Tensor], hybrid: Assembly, targets: dict) -> dict[str, torch.Tensor]:
        """Each loss part of running `hybrid` on `batch`, against the teacher's `targets` (`teacher_targets`)."""
        model, adapter, cfg = self.model, self.model.adapter, self.config
        teacher = model.teacher
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        masks = {"encoder": batch["attention_mask"], "decoder": (batch["labels"] != -100).long()}
        spans = self._module_ends(hybrid)

        blocks = {s: model.stack_blocks(hybrid, s) for s in STACKS}
        for s in STACKS:
            for j, block in enumerate(blocks[s]):
                # modules train (with dropout unless cfg.dropout is off); teacher layers stay in eval mode
                block.train(cfg.dropout and j in spans[s])
        if "encoder_out" in targets and max(hybrid.encoder) == 1:
            # the teacher's own encoder (frozen, in eval mode): its output is the teacher pass's, to the last bit but
            # for the batch size's rounding, so the hybrid reuses it and runs only its decoder
            inputs = {
                "encoder_outputs": BaseModelOutput(last_hidden_state=targets["encoder_out"]),
                "attention_mask": inputs["attention_mask"],
                "labels": inputs["labels"],
            }
        with adapter.swapped_layers(teacher, blocks):
            s_mods = {s: {j: blocks[s][j] for j in spans[s]} for s in STACKS}
            with (
                adapter.record(s_mods["encoder"], "encoder") as s_enc,
                adapter.record(s_mods["decoder"], "decoder") as s_dec,
            ):
                out = teacher(**inputs, use_cache=False)
        for s in STACKS:
            for block in blocks[s]:
                block.eval()
        s_rec = {"encoder": s_enc, "decoder": s_dec}

        zero = out.loss.new_zeros(())
        parts = {"ce": out.loss, "hidden": zero, "attn": zero, "logit": zero}
        if targets:
            n_mods = sum(len(spans[s]) for s in STACKS)
            hidden, attn = zero, zero
            for s in STACKS:
                for j, end in spans[s].items():
                    st, tt = s_rec[s][j], targets[s][end]
                    if cfg.w_hidden > 0:
                        hidden = hidden + self.hidden_loss(st.hidden, tt.hidden, masks[s])
                    if cfg.w_attn > 0:
                        a = self.attn_loss(st.self_attn, tt.self_attn, masks[s])
                        if s == "decoder" and tt.cross_attn is not None:
                            a = 0.5 * (a + self.attn_loss(st.cross_attn, tt.cross_attn, masks[s]))
                        attn = attn + a
            parts["hidden"], parts["attn"] = hidden / n_mods, attn / n_mods
            if cfg.w_logit > 0:
                parts["logit"] = self.logit_loss(out.logits, targets["logits"], masks["decoder"])
        return parts

    # --- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(self, batch_size: int = 64) -> dict[str, float]:
        """Held-out teacher-forced loss of each probe assembly (and their mean)."""
        model, adapter = self.model, self.model.adapter
        batches = [
            {k: v.to(self.device) for k, v in b.items()} for b in self.heldout.batches(batch_size, shuffle=False)
        ]
        result = {}
        with self.averaged_weights():
            for name, assembly in probe_assemblies(model).items():
                with adapter.swapped_layers(model.teacher, {s: model.stack_blocks(assembly, s) for s in STACKS}):
                    result[name] = teacher_forced_loss(model.teacher, batches)
        if result:
            result["mean"] = float(np.mean(list(result.values())))
        return result

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Modules + config into the checkpoint being written (`Recipe.save_checkpoint` adds the trainer checkpoint
        and the manifest, and switches the folder in whole)."""
        self.model.config.training = {
            **asdict(self.config),
            "completed_steps": self.state.step,
            "wall_s": round(self.state.seconds, 1),
            "threads": torch.get_num_threads(),  # the wall time depends on it (see `--threads`)
            "data_report": self.data_report,
        }
        if self.averaged is not None:  # the weights being trained, for --resume; the modules file gets the average
            write_tensors(folder / TRAINING_WEIGHTS_NAME, self.model.module_tensors())
        with self.averaged_weights():
            self.model.save_pretrained(folder)

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """With --ema, the modules hold the averaged weights inside the block (and the trained ones again after it);
        without, nothing changes."""
        if self.averaged is None:
            yield
            return
        trained = [p.detach().clone() for p in self.model.blocks.parameters()]
        with torch.no_grad():
            for p, a in zip(self.model.blocks.parameters(), self.averaged.module.parameters(), strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.model.blocks.parameters(), trained, strict=True):
                    p.copy_(t)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.model.blocks.named_parameters()

    def resume(self, out_dir: str | Path) -> None:
        """The shared resume, and one check for checkpoints from before manifests, which wrote the modules and the
        trainer state as separate files: both must be of the same step."""
        recorded_ema = float(self.model.config.training.get("ema", 0.0))
        if recorded_ema != self.config.ema:
            raise ConfigError(
                f"resume: {out_dir} was trained with ema {recorded_ema}, not {self.config.ema}; resume with the same "
                "--ema",
                settings="ema",
            )
        super().resume(out_dir)
        if self.averaged is not None:  # the modules file holds the average: it seeds the average, and the trained
            # weights come from their own file
            self.averaged.module.load_state_dict(self.model.blocks.state_dict())
            self.averaged.n_averaged.fill_(max(self.state.step, 1))
            self.model.load_module_tensors(
                read_tensors(Path(out_dir) / TRAINING_WEIGHTS_NAME, "trained module weights (--ema)"), out_dir
            )
        recorded = self.model.config.training.get("completed_steps")
        if recorded is not None and recorded != self.state.step:
            raise CheckpointError(
                f"{Path(out_dir) / CONFIG_NAME}: the modules are of step {recorded} but the trainer state is of step "
                f"{self.state.step} (a checkpoint interrupted while it was written); cannot resume"
            )


def split_rows(n: int, i: int, hybrids: int, per_row: int = 1) -> torch.Tensor:
    """The rows of an n-row batch that hybrid i of `hybrids` trains on when each row runs through `per_row` of them:
    row r goes to hybrids r, r-1, ..., r-per_row+1 (mod `hybrids`). per_row 1 = rows i, i+H, ...; per_row H = all."""
    return torch.tensor([r for r in range(n) if (r - i) % hybrids < per_row], dtype=torch.long)


def _rows(value, rows: torch.Tensor):
    """`value` (a batch, or the teacher's targets: dicts of tensors and `BlockRecord`s) cut to some rows."""
    if isinstance(value, torch.Tensor):
        return value[rows].contiguous()
    if isinstance(value, dict):
        return {k: _rows(v, rows) for k, v in value.items()}
    if isinstance(value, BlockRecord):
        return BlockRecord(**{f: None if t is None else _rows(t, rows) for f, t in vars(value).items()})
    raise TypeError(f"cannot cut {type(value).__name__} to rows")


def is_main_process() -> bool:
    """Whether this process reports and writes (the first of those `torchrun` / `accelerate launch` started)."""
    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def run_modular(
    config: TrainConfig,
    teacher: str | Path,
    data: DataSpec,
    out_dir: str | Path,
    *,
    train_split: str = "train",
    val_split: str = "val",
    granularities: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_start: Callable[[ReplacingTrainer], None] | None = None,
    on_step: Callable[[HybridStepResult], None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainState:
    """What `modformer train` does: check `out_dir`, read the splits and the teacher, train (or continue) the
    modules and save them.

    `on_start` sees the trainer once it is set up (`state.step`: where a resumed run continues; `is_main`: whether
    this process reports).
    """
    check_output(out_dir, resume=resume, overwrite=overwrite, marker=CONFIG_NAME, what="modular checkpoint")
    train = load_split(data, train_split)
    heldout = load_split(data, val_split, limit=config.eval_pairs)
    same = same_data_warning(train, heldout, val_split=val_split)
    teacher_model = load_seq2seq(teacher, eager=True)
    tokenizer = load_tokenizer(teacher)
    lengths = (config.max_source_len, config.max_target_len)
    train_ids, heldout_ids = train.tokenize(tokenizer, *lengths), heldout.tokenize(tokenizer, *lengths)
    trainer = ReplacingTrainer.start_or_resume(
        teacher_model,
        teacher,
        out_dir,
        config,
        train_ids,
        heldout_ids,
        resume=resume,
        granularities=granularities,
    )
    trainer.origin = train.origin
    trainer.data_report = data_report({"train": (train, train_ids), "heldout": (heldout, heldout_ids)}, [same])
    if on_start:
        on_start(trainer)
    return trainer.fit(out_dir, on_step=on_step, on_eval=on_eval)
