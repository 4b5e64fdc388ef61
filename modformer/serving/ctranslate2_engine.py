"""CTranslate2: convert a plain Hugging Face seq2seq checkpoint, and generate with it.

A converted folder serves with `ctranslate2` and `transformers`' tokenizer alone:

    FOLDER/model.bin, config.json, shared_vocabulary.json   the CTranslate2 model (its converter's own files)
    FOLDER/tokenizer/                                       the tokenizer, to encode sources and decode outputs
    FOLDER/modformer.json                                   what it is (written by the export, not here)

Conversion uses CTranslate2's own `TransformersConverter` (the `ct2-transformers-converter` command's code).
Generation is greedy or beam search with the same settings as `modformer.evaluation.generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from modformer.checkpoints import load_tokenizer
from modformer.errors import CheckpointError
from modformer.io import read_json, write_json
from modformer.serving.targets import Target, require_engine

MODEL_BIN = "model.bin"
CT2_CONFIG = "config.json"  # the converter's own; it names the special tokens
TOKENIZER_DIR = "tokenizer"


def is_ctranslate2_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / MODEL_BIN).is_file() and (folder / TOKENIZER_DIR).is_dir()


def _converter(ct2, hf_folder: Path):
    """CTranslate2's `TransformersConverter` with fix-ups through its public `load_model` / `load_tokenizer` hooks,
    and the ids it saw (special tokens, and the token `generate` starts decoding with, for
    `_start_where_generate_does`).

    - Its loader for the BART kin (BART, mBART, Pegasus; Marian's and M2M-100's set their own) reads
      `config.normalize_before` and `config.normalize_embedding`, which transformers 5's configs no longer have: they
      are read off the model as that loader reads the norms themselves (a pre-norm stack ends with `layer_norm`; an
      embedding norm is `layernorm_embedding`).
    - It records the tokenizer's bos/eos/unk tokens, which a tokenizer trained from scratch may leave unnamed where
      the model config gives their ids.
    """
    ids: dict[str, int | None] = {}

    class Converter(ct2.converters.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            encoder = model.get_encoder()
            if hasattr(encoder, "layers"):  # the BART kin's layout, the one CTranslate2's BART loader walks
                if not hasattr(model.config, "normalize_before"):
                    model.config.normalize_before = hasattr(encoder, "layer_norm")
                if not hasattr(model.config, "normalize_embedding"):
                    model.config.normalize_embedding = hasattr(encoder, "layernorm_embedding")
            ids.update({k: getattr(model.config, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")})
            start = getattr(model.generation_config, "decoder_start_token_id", None)
            ids["decoder_start"] = start if start is not None else model.config.decoder_start_token_id
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            for kind in ("bos", "eos", "unk", "pad"):
                token_id = ids[kind]
                if getattr(tokenizer, f"{kind}_token") is None and token_id is not None:
                    setattr(tokenizer, f"{kind}_token", tokenizer.convert_ids_to_tokens(token_id))
            return tokenizer

    return Converter(str(hf_folder), load_as_float16=False), ids


def _start_where_generate_does(out: Path, hf_folder: Path, start_id: int | None) -> None:
    """Give a converted model the decoder start token `generate` uses where CTranslate2 left it to a target prefix:
    its mBART loader does so unless the config names an mBART-50 tokenizer (mBART-25 starts with a language code)."""
    path = out / CT2_CONFIG
    config = read_json(path, "CTranslate2 config")
    if config.get("decoder_start_token") is None and start_id is not None:
        config["decoder_start_token"] = load_tokenizer(hf_folder).convert_ids_to_tokens(start_id)
        write_json(path, config)


def convert(hf_folder: str | Path, out: str | Path, target: Target) -> Path:
    """Convert the checkpoint in `hf_folder` (model + tokenizer) into the folder `out` (replacing what it holds),
    quantized to `target.compute_type` on disk (the engine computes in that type; float32 keeps full weights)."""
    ct2 = require_engine("ctranslate2")
    hf_folder, out = Path(hf_folder), Path(out)
    quantization = None if target.compute_type == "float32" else target.compute_type
    try:
        converter, ids = _converter(ct2, hf_folder)
        converter.convert(str(out), quantization=quantization, force=True)
    except (ValueError, NotImplementedError, RuntimeError) as err:  # an architecture the converter does not know
        raise CheckpointError(f"{hf_folder}: CTranslate2 cannot convert it ({str(err).splitlines()[0]})") from None
    _start_where_generate_does(out, hf_folder, ids.get("decoder_start"))
    load_tokenizer(hf_folder).save_pretrained(out / TOKENIZER_DIR)
    return out


class CTranslate2Generator:
    """A converted model loaded for generation on one device with `threads` intra-op threads."""

    def __init__(self, folder: str | Path, target: Target, threads: int = 1) -> None:
        ct2 = require_engine("ctranslate2")
        self.folder = Path(folder)
        if not is_ctranslate2_folder(self.folder):
            raise CheckpointError(f"{self.folder}: not a CTranslate2 export (no {MODEL_BIN} and {TOKENIZER_DIR}/)")
        self.target = target
        self.tokenizer = load_tokenizer(self.folder / TOKENIZER_DIR)
        self.translator = ct2.Translator(
            str(self.folder),
            device=target.device,
            compute_type=target.compute_type,
            intra_threads=threads,
            inter_threads=1,
        )

    def source_tokens(self, sources: Sequence[str], max_source_len: int = 128) -> list[list[str]]:
        """Sources as the engine reads them: token strings of the tokenizer's ids (special tokens included)."""
        ids = self.tokenizer(list(sources), truncation=True, max_length=max_source_len)["input_ids"]
        return [self.tokenizer.convert_ids_to_tokens(row) for row in ids]

    def generate_ids(
        self, tokens: list[list[str]], *, max_new_tokens: int = 64, num_beams: int = 1, batch_size: int = 32
    ) -> list[list[int]]:
        """Output token ids per source (no start token, no end token)."""
        results = self.translator.translate_batch(
            tokens,
            beam_size=num_beams,
            max_decoding_length=max_new_tokens,
            max_batch_size=batch_size,
            num_hypotheses=1,
        )
        return [self.tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]

    def generate(
        self,
        sources: Sequence[str],
        *,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        batch_size: int = 32,
        max_source_len: int = 128,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Decoded outputs for `sources`, in order, `batch_size` at a time."""
        outputs: list[str] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            ids = self.generate_ids(
                self.source_tokens(chunk, max_source_len),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                batch_size=batch_size,
            )
            outputs += self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            if on_batch:
                on_batch(len(chunk))
        return outputs
