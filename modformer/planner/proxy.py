"""The planner's quality proxy: teacher-forced loss of an assembly on a fixed held-out sample, made cheap.

Scoring thousands of assemblies one full forward pass each would take hours on a CPU. Three things make it fast:

* **Shared bottoms.** Assemblies whose stacks begin with the same blocks share those blocks' outputs. Stacks are
  walked in sorted order, so each block output along the current path is computed once and reused by every stack
  that starts the same way.
* **Encoder outputs are cached** per encoder stack, across all decoder choices.
* **Batches** are fixed: the first `samples` pairs of the split, in order, cut into `batch_size` batches.

Reusing a bottom needs no family-specific code: a `_Replay` block stands in for the shared prefix and returns the
exact output tuple the prefix's last block returned (for T5 that tuple carries the position biases the stack
passes upward), and the model's own stack forward runs the blocks above it. The leaves run the model's own forward
with `labels`, so the loss (LM head, T5's output scaling, BART's logits bias) is the family's own.

A score is the mean token cross-entropy in nats (lower is better), weighted by target tokens like
`evaluation.teacher_forced_loss`, rounded to 1e-6 so that scoring in other processes or groupings cannot change
the order of two assemblies by float noise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from modformer.modular.assembly import Assembly
from modformer.modular.families import adapter_for
from modformer.modular.model import ModularModel

Stack = tuple[int, ...]  # block sizes bottom-up, e.g. (1, 1, 2, 4, 4)
ROUND = 6


class _Replay(nn.Module):
    """A stand-in for an already computed prefix of blocks: returns what the prefix's last block returned."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


@dataclass
class ProxyStats:
    scored: int = 0  # assemblies scored
    block_runs: int = 0  # block forward passes actually computed
    block_runs_unshared: int = 0  # what scoring each assembly on its own would have cost
    seconds: float = 0.0

    def to_json(self) -> dict:
        saved = 1 - self.block_runs / self.block_runs_unshared if self.block_runs_unshared else 0.0
        return {
            "scored": self.scored,
            "block_runs": self.block_runs,
            "block_runs_unshared": self.block_runs_unshared,
            "shared_fraction": round(saved, 4),
            "seconds": round(self.seconds, 2),
        }


class ProxyScorer:
    """Teacher-forced loss of assemblies of `modular` on fixed `batches` (from `TokenizedData.batches`)."""

    def __init__(self, modular: ModularModel, batches: Sequence[dict[str, torch.Tensor]]):
        if not batches:
            raise ValueError("the proxy needs at least one batch")
        self.modular = modular
        self.adapter = modular.adapter
        self.batches = [{k: v for k, v in b.items() if k != "index"} for b in batches]
        self.tokens = [int((b["labels"] != -100).sum()) for b in self.batches]
        self.stats = ProxyStats()
        self._encoded: dict[Stack, list[torch.Tensor]] = {}

    # --- public ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, assemblies: Sequence[Assembly], on_scored: Callable[[int], None] | None = None) -> list[float]:
        """Proxy loss of each assembly, in the order given. Shares work between them (see the module docstring)."""
        start = time.perf_counter()
        by_encoder: dict[Stack, list[int]] = {}
        for i, a in enumerate(assemblies):
            by_encoder.setdefault(tuple(a.encoder), []).append(i)
        losses: list[float] = [float("nan")] * len(assemblies)
        for enc in sorted(by_encoder):
            encoded = self._encode(enc)
            members = sorted(by_encoder[enc], key=lambda i: tuple(assemblies[i].decoder))
            for i, loss in zip(
                members, self._decode(encoded, [tuple(assemblies[i].decoder) for i in members]), strict=True
            ):
                losses[i] = round(loss, ROUND)
                self.stats.block_runs_unshared += len(assemblies[i].encoder) + len(assemblies[i].decoder)
                if on_scored:
                    on_scored(1)
        self.stats.scored += len(assemblies)
        self.stats.seconds += time.perf_counter() - start
        return losses

    def forget_encoders(self) -> None:
        """Drop cached encoder outputs (they are kept across `score` calls until then)."""
        self._encoded.clear()

    # --- encoder --------------------------------------------------------------------------------------------------
    def _encode(self, enc: Stack) -> list[torch.Tensor]:
        if enc in self._encoded:
            return self._encoded[enc]
        stack = self.adapter.stack(self.modular.teacher, "encoder")
        blocks = [self.modular.block("encoder", s, k) for s, k in _spans(enc)]
        outputs = []
        for b in self.batches:
            previous = None  # raw output of the block below
            for j, block in enumerate(blocks):
                layers = [block] if j == 0 else [_Replay(previous), block]
                with self.adapter.swapped_layers(self.modular.teacher, {"encoder": layers}), _capture(block) as out:
                    result = stack(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                previous = out[0]
            outputs.append(result.last_hidden_state)
        self.stats.block_runs += len(blocks)
        # Encoder prefixes are not shared across encoder stacks: 292 encoder stacks cost little next to the decoders,
        # and keeping their prefixes would hold many more tensors. Decoder prefixes are shared (below).
        self._encoded[enc] = outputs
        return outputs

    # --- decoder --------------------------------------------------------------------------------------------------
    def _decode(self, encoded: list[torch.Tensor], decoders: list[Stack]) -> list[float]:
        """Loss of each decoder stack (sorted) on top of one encoder's outputs, sharing decoder bottoms."""
        model, stack = self.modular.teacher, self.adapter.stack(self.modular.teacher, "decoder")
        losses = []
        path: list[tuple[tuple[int, int], list]] = []  # (span, per-batch output of that block) along the current stack
        for dec in decoders:
            spans = _spans(dec)
            keep = 0
            while keep < len(path) and keep < len(spans) - 1 and path[keep][0] == spans[keep]:
                keep += 1
            del path[keep:]
            # Extend the shared path up to the stack's last block.
            for span in spans[keep:-1]:
                block = self.modular.block("decoder", *span)
                outs = []
                for bi, b in enumerate(self.batches):
                    layers = [block] if not path else [_Replay(path[-1][1][bi]), block]
                    with self.adapter.swapped_layers(model, {"decoder": layers}), _capture(block) as out:
                        stack(
                            input_ids=_decoder_inputs(model, b["labels"]),
                            encoder_hidden_states=encoded[bi],
                            encoder_attention_mask=b["attention_mask"],
                            use_cache=False,
                        )
                    outs.append(out[0])
                self.stats.block_runs += 1
                path.append((span, outs))
            # The last block runs inside the model's own forward, which computes the loss.
            block = self.modular.block("decoder", *spans[-1])
            total = 0.0
            for bi, b in enumerate(self.batches):
                layers = [block] if not path else [_Replay(path[-1][1][bi]), block]
                with self.adapter.swapped_layers(model, {"decoder": layers}):
                    result = model(
                        encoder_outputs=BaseModelOutput(last_hidden_state=encoded[bi]),
                        attention_mask=b["attention_mask"],
                        labels=b["labels"],
                        use_cache=False,
                    )
                total += float(result.loss) * self.tokens[bi]
            self.stats.block_runs += 1
            losses.append(total / max(sum(self.tokens), 1))
        return losses


def _spans(blocks: Stack) -> list[tuple[int, int]]:
    out, start = [], 0
    for size in blocks:
        out.append((start, size))
        start += size
    return out


def _decoder_inputs(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The decoder's input ids for teacher forcing, made as the model's own forward makes them (per family:
    `FamilyAdapter.decoder_input_ids`)."""
    return adapter_for(model.config).decoder_input_ids(model, labels)


@contextlib.contextmanager
def _capture(block: nn.Module) -> Iterator[list]:
    """A list that holds the raw output of `block`'s forward pass once it has run inside the `with`."""
    box: list = []
    handle = block.register_forward_hook(lambda _m, _i, output: box.append(output))
    try:
        yield box
    finally:
        handle.remove()
