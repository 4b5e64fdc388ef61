"""Export an assembly as a plain Hugging Face checkpoint that loads with `transformers` alone."""

from __future__ import annotations

from pathlib import Path

from modformer import __version__
from modformer.checkpoints import load_tokenizer
from modformer.io import atomic_dir, write_json
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel

EXPORT_INFO_NAME = "modformer.json"


def export_assembly(
    model: ModularModel, assembly: Assembly, out_dir: str | Path, *, overwrite: bool = False, extra: dict | None = None
) -> dict:
    """Write config (new layer counts), safetensors weights, tokenizer, generation config and `modformer.json`.

    The folder appears whole or not at all. Returns the `modformer.json` content.
    """
    standalone = model.assemble(assembly)
    standalone.config._attn_implementation = "sdpa"  # serving default; eager was only needed for distillation
    cost = model.cost_model()
    params = sum(p.numel() for p in standalone.parameters())
    info = {
        "modformer_version": __version__,
        "teacher": model.config.teacher,
        "teacher_config_fingerprint": model.config.teacher_config_fingerprint,
        "assembly": assembly.to_json(),
        "assembly_spec": assembly.format(),
        "parameters": params,
        "teacher_parameters": cost.params(Assembly.teacher(cost.encoder_layers, cost.decoder_layers)),
        "size_ratio": cost.size_ratio(assembly),
        "estimated_speed_ratio": cost.speed_ratio(assembly),
        **(extra or {}),
    }
    tokenizer = load_tokenizer(model.config.teacher)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        standalone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / EXPORT_INFO_NAME, info)
    return info
