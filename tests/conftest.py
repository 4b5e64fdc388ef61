"""Tiny teachers built in memory (a few layers, d_model 32, a small vocabulary): the suite runs on two CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
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
