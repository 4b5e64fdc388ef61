"""Loading users' Hugging Face checkpoints (teachers and exported models) with one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from modformer.errors import CheckpointError

# Config keys that do not change what the network computes; left out of the fingerprint so that re-saving a teacher
# with another transformers version or dtype label does not orphan its modules.
_VOLATILE_KEYS = {
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "_name_or_path",
    "name_or_path",
    "output_attentions",
    "output_hidden_states",
    "use_cache",
    "return_dict",
    "dropout_rate",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "classifier_dropout",
}


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else err.__class__.__name__


def load_seq2seq(path: str | Path, *, eager: bool = False) -> torch.nn.Module:
    """Load a seq2seq checkpoint in eval mode. `eager=True` selects eager attention, which returns attention maps."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:
        raise CheckpointError(f"{path}/config.json cannot be read ({_first_line(err)})") from None
    if not getattr(config, "is_encoder_decoder", False):
        raise CheckpointError(f"{path}: model type {config.model_type!r} is not an encoder-decoder (seq2seq) model")
    kwargs = {"attn_implementation": "eager"} if eager else {}
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load the model weights ({_first_line(err)})") from None
    return model.eval()


def locate_teacher(recorded: str, modules: str | Path) -> Path:
    """The teacher checkpoint that modules in `modules` recorded, as an absolute path.

    Modules record it absolute; older ones recorded it as given on the command line, relative to a working folder
    that may not be this one: it is looked for there and beside the modules folder (the first holding a checkpoint
    wins; the fingerprint check that follows catches a wrong one)."""
    path = Path(recorded).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(dict.fromkeys([Path.cwd() / path, Path(os.path.abspath(modules)).parent / path]))
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return Path(os.path.abspath(candidate))
    looked = " nor ".join(str(Path(os.path.abspath(c))) for c in candidates)
    raise CheckpointError(
        f"{modules}: the checkpoint these modules were trained from is not at {looked}; if it moved, give its new "
        "folder as `teacher`",
        settings="teacher",
    )


def load_tokenizer(path: str | Path):
    try:
        return AutoTokenizer.from_pretrained(Path(path))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load the tokenizer ({_first_line(err)})") from None


def config_fingerprint(config) -> str:
    """A short hash of the architecture-defining part of a config."""
    items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_KEYS and not k.startswith("_")}
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the input embedding matrix: tells two teachers of the same shape apart, cheaply."""
    weight = model.get_input_embeddings().weight.detach().to(torch.float32).cpu().contiguous()
    return hashlib.sha256(weight.numpy().tobytes()).hexdigest()[:16]
