"""An exported assembly: a plain Hugging Face checkpoint that loads with `transformers` alone, plus `modformer.json`;
or, for a CTranslate2 target, a folder that serves with `ctranslate2` (and the tokenizer) alone.

`Export` is the artifact (model, tokenizer, the record of what it was cut from); `export_assembly` builds one from
trained modules and saves it for a serving target (`torch:fp32` by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modformer import __version__
from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.errors import AssemblyError, CheckpointError, ConfigError
from modformer.io import atomic_dir, listed, nonfinite, read_json, scratch_dir, write_json
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel
from modformer.schemas import FORMAT_VERSION, ExportRecord, invalid, validate
from modformer.serving.ctranslate2_engine import convert, is_ctranslate2_folder
from modformer.serving.targets import Target

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
        """Write config, safetensors weights, tokenizer, generation config and `modformer.json`, whole or not at all.
        Weights that hold NaN or infinity are refused, naming them: such a model cannot serve."""
        bad = nonfinite(self.model.state_dict().items())
        if bad:
            raise CheckpointError(f"not exported: the weights hold NaN or infinity in {listed(bad)}")
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / EXPORT_INFO_NAME, self.info)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> Export:
        folder = Path(folder)
        if is_ctranslate2_folder(folder):
            raise CheckpointError(f"{folder}: a CTranslate2 export; read its record with read_export_info")
        info = read_export_info(folder)
        return cls(model=load_seq2seq(folder), tokenizer=load_tokenizer(folder), info=info)


def read_export_info(folder: str | Path) -> dict:
    """The `modformer.json` record of an export of any target, checked against its schema (`schemas.ExportRecord`)
    and for agreement: the assembly's two forms are one assembly, the target is one."""
    path = Path(folder) / EXPORT_INFO_NAME
    info = read_json(path, "export record")
    validate(ExportRecord, info, path)
    try:
        spec = Assembly.parse(info["assembly_spec"]) if info.get("assembly_spec") is not None else None
    except AssemblyError as err:
        raise invalid(path, "assembly_spec", str(err).splitlines()[0]) from None
    if spec is not None and info.get("assembly") is not None and info["assembly"] != spec.to_json():
        raise invalid(path, "assembly", f"is not the assembly of assembly_spec {info['assembly_spec']!r}")
    if info.get("target") is not None:
        try:
            Target.parse(info["target"])
        except ConfigError as err:
            raise invalid(path, "target", str(err).splitlines()[0]) from None
    return info


def export_target(folder: str | Path) -> Target:
    """The serving target an export folder was written for (a plain checkpoint without a record: `torch:fp32`)."""
    folder = Path(folder)
    path = folder / EXPORT_INFO_NAME
    recorded = read_export_info(folder).get("target") if path.is_file() else None
    if recorded:
        return Target.parse(recorded)
    return Target.parse("ctranslate2:float32" if is_ctranslate2_folder(folder) else "torch:fp32")


def export_assembly(
    model: ModularModel,
    assembly: Assembly,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    extra: dict | None = None,
    target: Target | None = None,
) -> dict:
    """Assemble `assembly` from `model` and save it for `target` in `out_dir`, whole or not at all. Returns the
    `modformer.json` record.

    `torch:*`: a Hugging Face checkpoint (weights in that precision). `ctranslate2:*`: the checkpoint converted by
    CTranslate2's converter (weights quantized to the compute type), with the tokenizer in `tokenizer/`.
    """
    target = target or Target.parse("torch:fp32")
    standalone = model.assemble(assembly)
    standalone.set_attn_implementation("sdpa")  # serving default; eager was only needed for distillation
    cost = model.cost_model()
    info = {
        "format_version": FORMAT_VERSION,
        "modformer_version": __version__,
        "teacher": model.config.teacher,
        "teacher_config_fingerprint": model.config.teacher_config_fingerprint,
        "assembly": assembly.to_json(),
        "assembly_spec": assembly.format(),
        "parameters": sum(p.numel() for p in standalone.parameters()),
        "teacher_parameters": cost.params(Assembly.teacher(cost.encoder_layers, cost.decoder_layers)),
        "size_ratio": cost.size_ratio(assembly),
        "estimated_speed_ratio": cost.speed_ratio(assembly),
        "target": str(target),
        **(extra or {}),
    }
    tokenizer = load_tokenizer(model.config.teacher)
    if target.is_torch:
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        Export(standalone.to(dtypes[target.compute_type]), tokenizer, info).save(out_dir, overwrite=overwrite)
        return info
    out_dir = Path(out_dir)
    with scratch_dir(out_dir) as hf:  # a killed run's is deleted by the next write beside out_dir
        Export(standalone, tokenizer, info).save(Path(hf) / "checkpoint")
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            convert(Path(hf) / "checkpoint", tmp, target)
            write_json(tmp / EXPORT_INFO_NAME, info)
    return info
