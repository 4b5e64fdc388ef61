"""Tiny teachers built in memory (a few layers, d_model 32, a small vocabulary): the suite runs on two CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from modformer.data import default_data_spec, load_split
from modformer.teacher import train_tokenizer

VOCAB = 400


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on two shared cores the threads' barriers cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_pairs():
    spec = default_data_spec()
    return load_split(spec, "train", limit=400), load_split(spec, "val", limit=64)


@pytest.fixture(scope="session")
def tokenizer(sample_pairs):
    train, _ = sample_pairs
    return train_tokenizer(train.sources + train.targets, VOCAB)


def tiny_t5(vocab: int = VOCAB, layers: int = 4, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab,
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_heads=4,
        num_layers=layers,
        num_decoder_layers=layers,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    return model


def tiny_bart(vocab: int = VOCAB, layers: int = 4, seed: int = 0) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=160,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=1, eos_token_id=1, pad_token_id=0)
    return model


# Each family's real checkpoints at toy sizes: the activation, feed-forward kind, embedding scale, tying and start
# token of Helsinki-NLP/opus-mt-en-de, facebook/mbart-large-50, facebook/nllb-200-distilled-600M (m2m_100),
# google/pegasus-large, google/mt5-small, google/umt5-small, facebook/blenderbot-400M-distill,
# facebook/blenderbot_small-90M and uclanlp/plbart-base. Token ids are the tokenizer's; "start" is the decoder start
# token. Weights are drawn wider than the real initialisation (`init_std` 0.3 instead of 0.02; T5's factor 5) so that
# a random model's greedy output depends on its input and comparing two engines' outputs means something.
BART_LIKE_SIZES = {
    "d_model": 32,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 160,
    "init_std": 0.3,
}
T5_LIKE_SIZES = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "initializer_factor": 5.0}
FAMILY_SETTINGS = {
    "marian": {"activation_function": "swish", "scale_embedding": True, "start": "pad"},
    "mbart": {"activation_function": "gelu", "scale_embedding": True, "start": "eos"},
    "m2m_100": {"activation_function": "relu", "scale_embedding": True, "start": "eos"},
    "pegasus": {"activation_function": "relu", "scale_embedding": True, "start": "pad"},
    "blenderbot": {"activation_function": "gelu", "scale_embedding": True, "start": "eos"},
    "blenderbot-small": {"activation_function": "gelu", "scale_embedding": True, "start": "eos"},
    "plbart": {"activation_function": "gelu", "scale_embedding": True, "start": "eos"},
    "umt5": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "start": "pad"},
    "mt5": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "start": "pad"},
}
NEW_FAMILIES = ("marian", "mbart", "m2m_100", "pegasus", "umt5", "blenderbot", "blenderbot-small", "plbart")
T5_LIKE = ("umt5", "mt5")


def tiny_family(model_type: str, tokenizer=None, layers: int = 4, seed: int = 0):
    """A random model of `model_type` with the structure of its real checkpoints (`FAMILY_SETTINGS`), tiny, with the
    vocabulary and special-token ids of `tokenizer` (without one: VOCAB tokens, pad 0, eos 1)."""
    vocab = len(tokenizer) if tokenizer is not None else VOCAB
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    eos = tokenizer.eos_token_id if tokenizer is not None else 1
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else eos
    settings = dict(FAMILY_SETTINGS[model_type])
    start = pad if settings.pop("start") == "pad" else eos
    if model_type in T5_LIKE:
        sizes = {**T5_LIKE_SIZES, "num_layers": layers, "num_decoder_layers": layers}
    else:
        sizes = {**BART_LIKE_SIZES, "encoder_layers": layers, "decoder_layers": layers, "bos_token_id": bos}
    if model_type == "marian":
        sizes["decoder_vocab_size"] = vocab
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=start,
        forced_eos_token_id=None,
        **sizes,
        **settings,
    )
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    generation = {"decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": pad}
    if model_type == "marian":
        generation["bad_words_ids"] = [[pad]]  # as opus-mt's generation config: the pad row never wins
    model.generation_config = GenerationConfig(**generation)
    return model


# Special tokens in the order of each family's real vocabulary where the model depends on it: M2M-100's sinusoidal
# positions count from pad id + 1 (NLLB: pad 1), and Marian's converters expect the pad token last (added after
# training). Other families use the shared test tokenizer's order (pad 0, eos 1, unk 2).
SPECIAL_LAYOUTS = {
    "marian": {"specials": ["</s>", "<unk>"], "pad_last": True},
    "m2m_100": {"specials": ["<s>", "<pad>", "</s>", "<unk>"], "pad_last": False},
}


def family_tokenizer(model_type: str, texts: list[str], vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """A BPE tokenizer (appends </s>) with `model_type`'s special-token layout (`SPECIAL_LAYOUTS`) and `vocab_size`
    tokens in all."""
    layout = SPECIAL_LAYOUTS.get(model_type, {"specials": ["<pad>", "</s>", "<unk>"], "pad_last": False})
    specials = layout["specials"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trained = vocab_size - 1 if layout["pad_last"] else vocab_size
    tok.train_from_iterator(
        texts, trainer=trainers.BpeTrainer(vocab_size=trained, special_tokens=specials, show_progress=False)
    )
    eos = specials.index("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    named = {"eos_token": "</s>", "unk_token": "<unk>", **({"bos_token": "<s>"} if "<s>" in specials else {})}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **named)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # already in the vocabulary unless `pad_last`
    return tokenizer


def save_teacher(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def t5_teacher_dir(tmp_path_factory, tokenizer) -> Path:
    return save_teacher(tiny_t5(), tokenizer, tmp_path_factory.mktemp("t5") / "teacher")


@pytest.fixture(scope="session")
def bart_teacher_dir(tmp_path_factory, tokenizer) -> Path:
    return save_teacher(tiny_bart(), tokenizer, tmp_path_factory.mktemp("bart") / "teacher")


@pytest.fixture(scope="session", params=["t5", "bart"])
def teacher_dir(request, t5_teacher_dir, bart_teacher_dir) -> Path:
    return t5_teacher_dir if request.param == "t5" else bart_teacher_dir


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, sample_pairs) -> Path:
    """A line-aligned folder (train/val) the CLI can read with --src-ext en --tgt-ext de."""
    train, val = sample_pairs
    root = tmp_path_factory.mktemp("data")
    for split, pairs in (("train", train), ("val", val)):
        (root / f"{split}.en").write_text("\n".join(pairs.sources) + "\n", encoding="utf-8")
        (root / f"{split}.de").write_text("\n".join(pairs.targets) + "\n", encoding="utf-8")
    return root
