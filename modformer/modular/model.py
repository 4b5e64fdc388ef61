"""Modules and the frozen teacher they replace; assembling both into standalone models.

A *module* of granularity k for stack s at start i is ONE layer of the family's own class, trained to do the work
of teacher layers i … i+k-1. It is initialised from the *bottom* layer of its span (teacher layer i): that layer
already reads the same input distribution the module will read, and for spans starting at 0 it carries the T5
relative position table that every stack's first block must own. The position table inside a module is a frozen
copy of the teacher's, so teacher layers above a module see exactly the bias they were trained with.

Artifact (a directory): `modular_config.json` (`ModularConfig`) and `modules.safetensors` (the modules only; the
teacher is referenced by path and fingerprint, never copied).
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from modformer import __version__
from modformer.checkpoints import config_fingerprint, load_seq2seq, locate_teacher, weights_fingerprint
from modformer.errors import CheckpointError
from modformer.io import read_json, read_tensors, write_json, write_tensors
from modformer.modular.assembly import Assembly, default_granularities
from modformer.modular.families import STACKS, FamilyAdapter, adapter_for
from modformer.modular.strategies import CostModel
from modformer.schemas import FORMAT_VERSION, ModularConfigRecord, validate

CONFIG_NAME = "modular_config.json"
WEIGHTS_NAME = "modules.safetensors"


@dataclass
class ModularConfig:
    """What a modular checkpoint holds and what it was made from."""

    teacher: str  # absolute path of the teacher checkpoint (older modules: as given)
    model_type: str  # family, e.g. "t5" or "bart"
    encoder_layers: int  # teacher depths
    decoder_layers: int
    granularities: list[int]  # trained module sizes (> 1)
    teacher_config_fingerprint: str  # hash of the teacher's architecture config
    teacher_weights_fingerprint: str  # hash of the teacher's embedding matrix
    init: str = "bottom"  # which teacher layer of its span a module starts from
    training: dict = field(default_factory=dict)  # the TrainConfig used, and progress
    modformer_version: str = __version__
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self):
        bad = [k for k in self.granularities if not isinstance(k, int) or k < 2]
        if bad or not self.granularities:
            raise CheckpointError(f"granularities must be integers >= 2, got {self.granularities}")
        for stack, depth in (("encoder", self.encoder_layers), ("decoder", self.decoder_layers)):
            too_big = [k for k in self.granularities if k > depth]
            if too_big:
                raise CheckpointError(f"granularity {too_big[0]} is larger than the {depth}-layer {stack}")

    def spans(self) -> list[tuple[str, int, int]]:
        """(stack, start, size) of every module, bottom-up, finest first."""
        out = []
        for stack in STACKS:
            depth = self.encoder_layers if stack == "encoder" else self.decoder_layers
            for k in sorted(self.granularities):
                out.extend((stack, start, k) for start in range(0, depth - k + 1, k))
        return out

    def to_json(self) -> dict:
        obj = asdict(self)
        obj["spans"] = [{"stack": s, "start": i, "size": k} for s, i, k in self.spans()]
        obj["format_version"] = FORMAT_VERSION
        return obj

    @classmethod
    def from_json(cls, obj: dict, where: str) -> ModularConfig:
        """The config a `modular_config.json` in folder `where` holds, checked against its schema
        (`schemas.ModularConfigRecord`): one-line errors naming the file and the field. Keys it does not know (a
        newer modformer's) are ignored."""
        path = Path(where) if Path(where).name == CONFIG_NAME else Path(where) / CONFIG_NAME
        validate(ModularConfigRecord, obj, path)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


def module_key(stack: str, start: int, size: int) -> str:
    return f"{stack}_k{size}_s{start}"


class ModularModel(nn.Module):
    """A frozen teacher plus its trained modules. `assemble` turns any valid assembly into a standalone model."""

    def __init__(self, teacher: nn.Module, config: ModularConfig, modules: nn.ModuleDict):
        super().__init__()
        self.teacher = teacher
        self.config = config
        self.adapter: FamilyAdapter = adapter_for(teacher.config)
        self.blocks = modules  # module_key -> layer
        self.blocks.eval()  # the trainer switches modules to train mode only while they are in a hybrid
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        teacher_path: str | Path,
        granularities: list[int] | None = None,
        *,
        top_init: bool = False,
    ) -> ModularModel:
        """Fresh modules for `teacher`: each a copy of the bottom teacher layer of its span, or (`top_init`) where the
        span ends at the top of its stack, of the stack's top layer (the one whose output the final norm and the head
        read; a student of a fixed shape keeps it too)."""
        adapter = adapter_for(teacher.config)
        enc, dec = (adapter.depth(teacher.config, s) for s in STACKS)
        if granularities is None:
            granularities = sorted(set(default_granularities(enc)) & set(default_granularities(dec)))
            if not granularities:
                raise CheckpointError(
                    f"a {enc}+{dec}-layer teacher has no default granularity; pass `granularities`",
                    settings="granularities",
                )
        config = ModularConfig(
            teacher=str(Path(teacher_path).resolve()),  # absolute: the modules work from any folder
            model_type=teacher.config.model_type,
            encoder_layers=enc,
            decoder_layers=dec,
            granularities=sorted(granularities),
            teacher_config_fingerprint=config_fingerprint(teacher.config),
            teacher_weights_fingerprint=weights_fingerprint(teacher),
        )
        return cls._with_modules(teacher, config, top_init=top_init)

    @classmethod
    def _with_modules(cls, teacher: nn.Module, config: ModularConfig, *, top_init: bool = False) -> ModularModel:
        """Build the modules `config` lists, each a copy of the bottom teacher layer of its span (`top_init`: the
        top layer for a span that ends at the top of its stack)."""
        adapter = adapter_for(teacher.config)
        modules = nn.ModuleDict()
        for stack, start, size in config.spans():
            layers = adapter.layers(teacher, stack)
            at_top = top_init and start + size == len(layers) and start > 0  # a first layer keeps its position table
            layer = adapter.new_layer(teacher, stack, first=start == 0)
            layer.load_state_dict(layers[start + size - 1 if at_top else start].state_dict())
            modules[module_key(stack, start, size)] = layer
        model = cls(teacher, config, modules)
        model.freeze_position_tables()
        return model

    def freeze_position_tables(self) -> None:
        for layer in self.blocks.values():
            for name in self.adapter.position_bias_names(layer):
                layer.get_parameter(name).requires_grad_(False)

    # --- save / load ----------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """The artifact convention's name (every artifact has `save(dir)` / `load(dir)`): `save_pretrained`."""
        self.save_pretrained(directory)

    @classmethod
    def load(cls, directory: str | Path, teacher: nn.Module | str | Path | None = None) -> ModularModel:
        """The artifact convention's name: `from_pretrained`."""
        return cls.from_pretrained(directory, teacher)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_tensors(
            directory / WEIGHTS_NAME, self.module_tensors(), metadata={"format": "pt", "modformer": __version__}
        )
        write_json(directory / CONFIG_NAME, self.config.to_json())

    def module_tensors(self) -> dict[str, torch.Tensor]:
        """Every module's tensors, named as the modules file names them (`load_module_tensors` reads them back)."""
        return {f"{key}.{name}": t for key, layer in self.blocks.items() for name, t in layer.state_dict().items()}

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, teacher: nn.Module | str | Path | None = None, *, eager: bool = False
    ) -> ModularModel:
        """Load modules saved by `save_pretrained`; the teacher is loaded from the recorded path unless given."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: modular checkpoint folder not found")
        config = ModularConfig.from_json(read_json(directory / CONFIG_NAME, "modular config"), str(directory))
        path = None
        if teacher is None or isinstance(teacher, (str, Path)):
            # a teacher given (moved since training) or the recorded one; checked by fingerprint either way
            path = Path(teacher).resolve() if teacher is not None else locate_teacher(config.teacher, directory)
            teacher = load_seq2seq(path, eager=eager)
        check_teacher(config, teacher, directory)
        if path is not None:
            config.teacher = str(path)  # where it is now: tokenizers and exports read it from here
        model = cls._with_modules(teacher, config)
        model.load_module_tensors(read_tensors(directory / WEIGHTS_NAME, "modules file"), directory)
        return model

    def load_module_tensors(self, tensors: dict[str, torch.Tensor], where: str | Path) -> None:
        expected = {f"{key}.{name}" for key, layer in self.blocks.items() for name in layer.state_dict()}
        missing, extra = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
        if missing or extra:
            what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            raise CheckpointError(f"{where}/{WEIGHTS_NAME} does not match the modular config ({what})")
        for key, layer in self.blocks.items():
            prefix = f"{key}."
            state = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
            try:
                layer.load_state_dict(state)
            except RuntimeError as err:
                raise CheckpointError(f"{where}/{WEIGHTS_NAME}: {key} has the wrong shape ({err})") from None

    # --- blocks and assemblies ------------------------------------------------------------------------------------
    def depth(self, stack: str) -> int:
        return self.config.encoder_layers if stack == "encoder" else self.config.decoder_layers

    def block(self, stack: str, start: int, size: int) -> nn.Module:
        """Teacher layer `start` when size is 1, else the module for that span."""
        if size == 1:
            return self.adapter.layers(self.teacher, stack)[start]
        return self.blocks[module_key(stack, start, size)]

    def stack_blocks(self, assembly: Assembly, stack: str) -> list[nn.Module]:
        return [self.block(stack, start, size) for start, size in assembly.spans(stack)]

    def validate(self, assembly: Assembly) -> Assembly:
        return assembly.validate(self.config.encoder_layers, self.config.decoder_layers, self.config.granularities)

    def assemble(self, assembly: Assembly) -> nn.Module:
        """A standalone `*ForConditionalGeneration` holding only the blocks of `assembly` (weights copied)."""
        self.validate(assembly)
        return standalone(self.teacher, {s: self.stack_blocks(assembly, s) for s in STACKS})

    def cost_model(self) -> CostModel:
        """Parameter counts per block and fixed, for the strategies. Exact: a block's params are a layer's params."""
        layer_params = {}
        in_layers = 0
        for stack in STACKS:
            layers = self.adapter.layers(self.teacher, stack)
            sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
            bias = sum(layers[0].get_parameter(n).numel() for n in self.adapter.position_bias_names(layers[0]))
            layer_params[stack] = sizes[-1] if len(sizes) > 1 else sizes[0] - bias
            in_layers += sum(sizes) - bias  # the position table stays with every assembly: count it as fixed
        total = sum(p.numel() for p in self.teacher.parameters())
        return CostModel(
            encoder_layer_params=layer_params["encoder"],
            decoder_layer_params=layer_params["decoder"],
            fixed_params=total - in_layers,
            encoder_layers=self.config.encoder_layers,
            decoder_layers=self.config.decoder_layers,
            granularities=tuple(self.config.granularities),
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.blocks.parameters() if p.requires_grad]


def standalone(teacher: nn.Module, layers: dict[str, list[nn.Module]]) -> nn.Module:
    """A new model of the teacher's class: the teacher's embeddings, norms and head, with `layers` as its stacks
    (weights copied). The first layer of each stack must be able to own T5's position table."""
    adapter = adapter_for(teacher.config)
    config = adapter.with_depths(teacher.config, len(layers["encoder"]), len(layers["decoder"]))
    config._attn_implementation = teacher.config._attn_implementation
    layer_prefixes = {s: f"{adapter.stack_paths[s]}.{adapter.layers_attr}." for s in STACKS}
    state = {name: t for name, t in teacher.state_dict().items() if not name.startswith(tuple(layer_prefixes.values()))}
    for stack in STACKS:
        for j, layer in enumerate(layers[stack]):
            state.update({f"{layer_prefixes[stack]}{j}.{n}": t for n, t in layer.state_dict().items()})
    model = teacher.__class__(config)
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(teacher.generation_config)
    return model.eval()


def check_teacher(config: ModularConfig, teacher: nn.Module, where: str | Path) -> None:
    """Refuse modules trained on another teacher: same architecture and same weights."""
    if config_fingerprint(teacher.config) != config.teacher_config_fingerprint:
        raise CheckpointError(
            f"{where}: these modules were trained on a different teacher architecture than the one given "
            f"(config fingerprint {config_fingerprint(teacher.config)} != {config.teacher_config_fingerprint})"
        )
    if weights_fingerprint(teacher) != config.teacher_weights_fingerprint:
        raise CheckpointError(f"{where}: these modules were trained on a different teacher (its weights differ)")
