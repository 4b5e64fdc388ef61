"""An exported assembly: a plain Hugging Face checkpoint that loads with `transformers` alone, plus `modformer.json`.

`Export` is the artifact (model, tokenizer, the record of what it was cut from); `export_assembly` builds one from
trained modules and saves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from modformer import __version__
from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.io import atomic_dir, read_json, write_json
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel

EXPORT_INFO_NAME = "modformer.json"


@dataclass
class Export:
    """A standalone model with its tokenizer and `info` (assembly, teacher, sizes, and what chose it)."""

    model: nn.Module
    tokenizer: object
    info: dict

    @property
    def assembly(self) -> Assembly:
        return Assembly.parse(self.info["assembly_spec"])

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write config, safetensors weights, tokenizer, generation config and `modformer.json`, whole or not at all."""
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / EXPORT_INFO_NAME, self.info)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> Export:
        folder = Path(folder)
        info = read_json(folder / EXPORT_INFO_NAME, "export record")
        return cls(model=load_seq2seq(folder), tokenizer=load_tokenizer(folder), info=info)


def export_assembly(
    model: ModularModel, assembly: Assembly, out_dir: str | Path, *, overwrite: bool = False, extra: dict | None = None
) -> dict:
    """Assemble `assembly` from `model` and save it as an `Export` in `out_dir`. Returns the `modformer.json` content."""
    standalone = model.assemble(assembly)
    standalone.set_attn_implementation("sdpa")  # serving default; eager was only needed for distillation
    cost = model.cost_model()
    info = {
        "modformer_version": __version__,
        "teacher": model.config.teacher,
        "teacher_config_fingerprint": model.config.teacher_config_fingerprint,
        "assembly": assembly.to_json(),
        "assembly_spec": assembly.format(),
        "parameters": sum(p.numel() for p in standalone.parameters()),
        "teacher_parameters": cost.params(Assembly.teacher(cost.encoder_layers, cost.decoder_layers)),
        "size_ratio": cost.size_ratio(assembly),
        "estimated_speed_ratio": cost.speed_ratio(assembly),
        **(extra or {}),
    }
    Export(standalone, load_tokenizer(model.config.teacher), info).save(out_dir, overwrite=overwrite)
    return info
