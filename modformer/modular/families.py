"""Per-family knowledge: where a seq2seq model keeps its layers and how to read them.

Everything that differs between T5, BART and their kin lives in one `FamilyAdapter` per family, registered in
`FAMILIES` by `config.model_type` (the PEFT habit of per-model-type tables). The rest of modformer asks the adapter
and never branches on the family itself.

Two layouts cover every family here. T5-like (T5, mT5, UMT5): stacks at `encoder` / `decoder`, layers in `block`,
relative position biases inside layers, RMS norms before each sublayer, unscaled embeddings. BART-like (BART, mBART,
Marian, M2M-100/NLLB, Pegasus, Blenderbot, PLBart): stacks at `model.encoder` / `model.decoder`, layers in `layers`,
a position table in the stack (learned or sinusoidal), and embeddings scaled by sqrt(d_model) where the config's
`scale_embedding` says so. Within a layout the families differ in where the position information lives and where
the layer norms sit; each entry records both, and `tests/test_families.py` checks every entry against the model.
"""

from __future__ import annotations

import contextlib
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


POSITIONS = ("relative", "learned", "sinusoidal")  # how a family tells token positions apart
POSITION_BIAS = ("first layer", "every layer")  # which layers own a relative position table


@dataclass(frozen=True)
class FamilyAdapter:
    """How to find, build and read the layers of one model family, and what sets the family apart.

    Attribute paths are dotted, relative to the `*ForConditionalGeneration` model.
    """

    model_type: str
    stack_paths: dict[str, str]  # stack -> path of the module holding the layer list
    layers_attr: str  # name of the nn.ModuleList inside a stack
    depth_keys: dict[str, str]  # stack -> config key with its layer count (what `with_depths` rewrites)
    self_attn_path: str  # inside one layer
    cross_attn_path: str | None  # inside a decoder layer
    positions: str  # one of POSITIONS: a bias inside layers ("relative") or a table in the stack
    pre_norm: bool  # norm before each sublayer and once after the stack (True), or after each sublayer (False)
    embed_scale_key: str | None  # config key that scales token embeddings by sqrt(d_model); None: never scaled
    position_bias: str | None = None  # relative only, one of POSITION_BIAS: T5's layer 0 hands its table up
    position_bias_param: str | None = None  # the table's parameter name inside a layer that owns one
    numbered_stacks: tuple[str, ...] = STACKS  # stacks whose layer class takes `layer_idx` (its cache slot)
    attn_weights_index: int = -1  # where the attention module's output tuple holds the probabilities

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"{self.model_type}: positions must be one of {POSITIONS}, got {self.positions!r}")
        if (self.positions == "relative") != (self.position_bias in POSITION_BIAS):
            raise ValueError(f"{self.model_type}: relative positions need position_bias, one of {POSITION_BIAS}")
        if (self.position_bias is None) != (self.position_bias_param is None):
            raise ValueError(f"{self.model_type}: position_bias and position_bias_param go together")

    def describe(self) -> dict[str, str]:
        """What sets the family apart, in words: the cells of its row in the README's family table."""
        enc, dec = (self.stack_paths[s] for s in STACKS)
        paths = enc.replace("encoder", "{encoder,decoder}") if enc.replace("encoder", "decoder") == dec else enc
        bias = {"first layer": "relative, in layer 0", "every layer": "relative, in every layer"}
        return {
            "layers": f"`{paths}.{self.layers_attr}`",
            "depth keys": ", ".join(f"`{self.depth_keys[s]}`" for s in STACKS),
            "positions": bias.get(self.position_bias, self.positions),
            "norms": "before" if self.pre_norm else "after",
            "scaled embeddings": f"`{self.embed_scale_key}`" if self.embed_scale_key else "never",
        }

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

    def decoder_input_ids(self, model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
        """The decoder's input ids for teacher forcing, as the model's own forward makes them from `labels` (B, T):
        its `prepare_decoder_input_ids_from_labels` where it has one (mBART's and PLBart's wrap the last token round
        to the front), else the right shift after the decoder start token that M2M-100's and Blenderbot's forward
        does."""
        prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
        if prepare is not None:
            return prepare(labels=labels)
        pad, start = model.config.pad_token_id, model.config.decoder_start_token_id
        shifted = labels.new_full(labels.shape, start)  # (B, T)
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
        return shifted

    # --- building layers ------------------------------------------------------------------------------------------
    def new_layer(self, model: nn.Module, stack: str, *, first: bool) -> nn.Module:
        """A fresh layer of the family's own class for `stack`; `first` gives it the position table layer 0 owns."""
        reference = self.layers(model, stack)[0]
        config = self.stack(model, stack).config
        kwargs = {"layer_idx": 0} if stack in self.numbered_stacks else {}
        if self.position_bias == "first layer":
            kwargs["has_relative_attention_bias"] = first
        return reference.__class__(config, **kwargs)

    def position_bias_names(self, layer: nn.Module) -> list[str]:
        """Parameter names of the position table that `layer` owns for the layers above it (T5's layer 0), frozen
        in modules and counted as a fixed cost. Empty where no layer shares a table: a UMT5 layer's own table is
        one of its weights like any other."""
        if self.position_bias != "first layer":
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


_T5_LIKE = {
    "stack_paths": {"encoder": "encoder", "decoder": "decoder"},
    "layers_attr": "block",
    "depth_keys": {"encoder": "num_layers", "decoder": "num_decoder_layers"},
    "self_attn_path": "layer.0",
    "cross_attn_path": "layer.1",
    "positions": "relative",
    "pre_norm": True,
    "embed_scale_key": None,
    "position_bias_param": "layer.0.SelfAttention.relative_attention_bias.weight",
}
_BART_LIKE = {
    "stack_paths": {"encoder": "model.encoder", "decoder": "model.decoder"},
    "layers_attr": "layers",
    "depth_keys": {"encoder": "encoder_layers", "decoder": "decoder_layers"},
    "self_attn_path": "self_attn",
    "cross_attn_path": "encoder_attn",
    "embed_scale_key": "scale_embedding",
}


def _entries(*adapters: FamilyAdapter) -> dict[str, FamilyAdapter]:
    return {a.model_type: a for a in adapters}


FAMILIES: dict[str, FamilyAdapter] = _entries(
    # T5 and mT5 (which shares the layer classes): layer 0 of each stack owns the relative position bias and hands
    # it to the layers above it, so an assembled stack's first block must own it too.
    FamilyAdapter(model_type="t5", position_bias="first layer", **_T5_LIKE),
    FamilyAdapter(model_type="mt5", position_bias="first layer", **_T5_LIKE),
    # UMT5: every layer's self-attention has its own relative bias table, so every layer is alike (no hand-up).
    FamilyAdapter(model_type="umt5", position_bias="every layer", **_T5_LIKE),
    # The BART kin: a position table in the stack, not in a layer, so all layers are alike. They differ in that
    # table (learned or sinusoidal), in where the norms sit, and in whether the encoder layer class takes
    # `layer_idx` (only decoder layers hold a cache).
    FamilyAdapter(model_type="bart", positions="learned", pre_norm=False, **_BART_LIKE),
    FamilyAdapter(model_type="plbart", positions="learned", pre_norm=False, **_BART_LIKE),
    FamilyAdapter(model_type="blenderbot-small", positions="learned", pre_norm=False, **_BART_LIKE),
    FamilyAdapter(model_type="marian", positions="sinusoidal", pre_norm=False, **_BART_LIKE),
    FamilyAdapter(model_type="mbart", positions="learned", pre_norm=True, numbered_stacks=("decoder",), **_BART_LIKE),
    FamilyAdapter(
        model_type="blenderbot", positions="learned", pre_norm=True, numbered_stacks=("decoder",), **_BART_LIKE
    ),
    FamilyAdapter(
        model_type="m2m_100", positions="sinusoidal", pre_norm=True, numbered_stacks=("decoder",), **_BART_LIKE
    ),
    FamilyAdapter(
        model_type="pegasus", positions="sinusoidal", pre_norm=True, numbered_stacks=("decoder",), **_BART_LIKE
    ),
)

ENTRY_NEEDS = (
    "an entry in FAMILIES (modformer/modular/families.py) needs where the encoder and decoder layer lists live, "
    "the config keys of their depths, the attention submodules of a layer, how positions are encoded, and whether "
    "norms come before or after each sublayer"
)


def adapter_for(config) -> FamilyAdapter:
    """The adapter for a model config; a clear error for a family modformer does not know."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise CheckpointError(
            f"model type {model_type!r} is not supported (supported seq2seq families: {known}); {ENTRY_NEEDS}"
        )
    return FAMILIES[model_type]
