"""Per-family knowledge: where a seq2seq model keeps its layers and how to read them.

Everything that differs between T5, BART and their kin lives in one `FamilyAdapter` per family, registered in
`FAMILIES` by `config.model_type` (the PEFT habit of per-model-type tables). The rest of modformer asks the adapter
and never branches on the family itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from modformer.errors import CheckpointError

STACKS = ("encoder", "decoder")


@dataclass
class BlockRecord:
    """What one block produced in a forward pass. Tensors keep their autograd graph."""

    hidden: torch.Tensor | None = None  # (B, T, C) the block's output, before any final norm
    self_attn: torch.Tensor | None = None  # (B, H, T, T) attention probabilities
    cross_attn: torch.Tensor | None = None  # (B, H, T, S) decoder only


@dataclass(frozen=True)
class FamilyAdapter:
    """How to find, build and read the layers of one model family.

    Attribute paths are dotted, relative to the `*ForConditionalGeneration` model.
    """

    model_type: str
    stack_paths: dict[str, str]  # stack -> path of the module holding the layer list
    layers_attr: str  # name of the nn.ModuleList inside a stack
    depth_keys: dict[str, str]  # stack -> config key with its layer count
    self_attn_path: str  # inside one layer
    cross_attn_path: str | None  # inside a decoder layer
    position_bias_param: str | None = None  # parameter name (inside a layer) only layer 0 owns, or None
    attn_weights_index: int = -1  # where the attention module's output tuple holds the probabilities

    # --- finding layers -------------------------------------------------------------------------------------------
    def stack(self, model: nn.Module, stack: str) -> nn.Module:
        return model.get_submodule(self.stack_paths[stack])

    def layers(self, model: nn.Module, stack: str) -> nn.ModuleList:
        return getattr(self.stack(model, stack), self.layers_attr)

    def depth(self, config, stack: str) -> int:
        value = getattr(config, self.depth_keys[stack])
        return int(value if value is not None else getattr(config, self.depth_keys["encoder"]))

    def with_depths(self, config, encoder_layers: int, decoder_layers: int):
        """A copy of `config` with new layer counts: the config of an assembled model."""
        new = config.__class__.from_dict(config.to_dict())
        setattr(new, self.depth_keys["encoder"], encoder_layers)
        setattr(new, self.depth_keys["decoder"], decoder_layers)
        return new

    # --- building layers ------------------------------------------------------------------------------------------
    def new_layer(self, model: nn.Module, stack: str, *, first: bool) -> nn.Module:
        """A fresh layer of the family's own class for `stack`; `first` gives it the position table layer 0 owns."""
        reference = self.layers(model, stack)[0]
        config = self.stack(model, stack).config
        kwargs = {"layer_idx": 0}
        if self.position_bias_param is not None:
            kwargs["has_relative_attention_bias"] = first
        return reference.__class__(config, **kwargs)

    def position_bias_names(self, layer: nn.Module) -> list[str]:
        """Parameter names of the position table inside `layer` (empty where the family keeps none in layers)."""
        if self.position_bias_param is None:
            return []
        return [name for name, _ in layer.named_parameters() if name == self.position_bias_param]

    # --- reading layers -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def record(self, blocks: dict[int, nn.Module], stack: str) -> Iterator[dict[int, BlockRecord]]:
        """Capture hidden output and attention maps of the given blocks (by position) during a forward pass.

        Attention maps only exist with eager attention (`model.set_attn_implementation("eager")`).
        """
        records = {pos: BlockRecord() for pos in blocks}
        handles = []

        def keep(pos: int, what: str):
            def hook(_module, _inputs, output):
                value = output[0] if what == "hidden" and isinstance(output, tuple) else output
                if what != "hidden":
                    value = output[self.attn_weights_index]
                setattr(records[pos], what, value)

            return hook

        try:
            for pos, block in blocks.items():
                handles.append(block.register_forward_hook(keep(pos, "hidden")))
                handles.append(block.get_submodule(self.self_attn_path).register_forward_hook(keep(pos, "self_attn")))
                if stack == "decoder" and self.cross_attn_path:
                    attn = block.get_submodule(self.cross_attn_path)
                    handles.append(attn.register_forward_hook(keep(pos, "cross_attn")))
            yield records
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def swapped_layers(self, model: nn.Module, blocks: dict[str, Sequence[nn.Module]]) -> Iterator[nn.Module]:
        """Run `model` with other layer lists in its stacks (the one helper that does module replacing).

        The layer objects are used as they are (no copies), so gradients reach them; the original lists come back
        on exit, even after an exception.
        """
        saved, saved_idx = {}, []
        try:
            for stack, new_blocks in blocks.items():
                holder = self.stack(model, stack)
                saved[stack] = getattr(holder, self.layers_attr)
                setattr(holder, self.layers_attr, nn.ModuleList(new_blocks))
                # Key/value caches are indexed by `layer_idx`: renumber the blocks by their place in this stack.
                for j, block in enumerate(new_blocks):
                    for sub in block.modules():
                        if hasattr(sub, "layer_idx"):
                            saved_idx.append((sub, sub.layer_idx))
                            sub.layer_idx = j
            yield model
        finally:
            for sub, idx in reversed(saved_idx):
                sub.layer_idx = idx
            for stack, old in saved.items():
                setattr(self.stack(model, stack), self.layers_attr, old)


FAMILIES: dict[str, FamilyAdapter] = {
    # T5 (and mT5, which shares the layer classes): layer 0 of each stack owns the relative position bias and hands
    # it to the layers above it, so an assembled stack's first block must own it too.
    "t5": FamilyAdapter(
        model_type="t5",
        stack_paths={"encoder": "encoder", "decoder": "decoder"},
        layers_attr="block",
        depth_keys={"encoder": "num_layers", "decoder": "num_decoder_layers"},
        self_attn_path="layer.0",
        cross_attn_path="layer.1",
        position_bias_param="layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    # BART: learned absolute positions live in the stack, not in a layer, so all layers are alike.
    "bart": FamilyAdapter(
        model_type="bart",
        stack_paths={"encoder": "model.encoder", "decoder": "model.decoder"},
        layers_attr="layers",
        depth_keys={"encoder": "encoder_layers", "decoder": "decoder_layers"},
        self_attn_path="self_attn",
        cross_attn_path="encoder_attn",
    ),
}
FAMILIES["mt5"] = dataclasses.replace(FAMILIES["t5"], model_type="mt5")


def adapter_for(config) -> FamilyAdapter:
    """The adapter for a model config; a clear error for a family modformer does not know."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise CheckpointError(f"model type {model_type!r} is not supported (supported seq2seq families: {known})")
    return FAMILIES[model_type]
