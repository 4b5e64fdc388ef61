"""Limits on sizes and seeds, checked before any work: a value past them would fill memory, run for days or fail
deep inside numpy or torch. Each error names the limit.

A model with learned positions (BART) reads at most `max_position_embeddings` tokens; T5's relative positions have
no such limit, so `MAX_TOKENS` stands in for one: attention over 65,536 tokens already takes 16 GiB per head.
"""

from __future__ import annotations

from collections.abc import Iterable

from modformer.errors import ConfigError

MAX_TOKENS = 65536  # longest source, target or generation, in tokens, where the model sets no lower limit
MAX_BATCH = 65536  # pairs in one batch
MAX_SEED = 2**32 - 1  # numpy's (and so optuna's) seeds are 32-bit; torch's and Python's accept these too
MAX_ASSEMBLY_CHARS = 65536  # an assembly of 1,000 layers fits in a few kilobytes
MEMORY_FRACTION = 0.8  # of this machine's memory, the most one measurement may need (a rough estimate)


def check_seed(seed: int, setting: str = "seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"{setting} must be from 0 to {MAX_SEED:,} (32-bit, as numpy's), got {seed}", settings=setting
        )


def check_batch(value: int | Iterable[int] | None, setting: str) -> None:
    for v in _values(value):
        if v > MAX_BATCH:
            raise ConfigError(f"{setting} {v:,} is past the limit of {MAX_BATCH:,} pairs", settings=setting)


def check_tokens(value: int | Iterable[int] | None, setting: str, limit: int | None = None, model: str = "") -> None:
    """Lengths in tokens: at most the model's position limit (`limit`, if it has one), else `MAX_TOKENS`."""
    for v in _values(value):
        if limit is not None and v > limit:
            raise ConfigError(
                f"{setting} {v:,} is past the {limit:,}-token position limit of {model or 'the model'}",
                settings=setting,
            )
        if v > MAX_TOKENS:
            raise ConfigError(
                f"{setting} {v:,} is past the limit of {MAX_TOKENS:,} tokens (modformer's cap for models with "
                "relative positions, which set none)",
                settings=setting,
            )


GROWING_POSITIONS = {"m2m_100"}  # sinusoidal tables that transformers extends to any length


def position_limit(config) -> int | None:
    """The longest sequence an encoder-decoder's Hugging Face config can read (a position table, learned or
    sinusoidal), or None: relative positions (T5), a table that grows, or not an encoder-decoder (refused later)."""
    if not getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", "") in GROWING_POSITIONS:
        return None
    if getattr(config, "relative_attention_num_buckets", None):  # T5 and its kin
        return None
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def attention_bytes(batch: int, length: int, d_model: int, heads: int, layers: int = 1) -> int:
    """A rough lower bound of the activations of one forward pass in float32: hidden states and attention scores."""
    return 4 * batch * length * (8 * d_model * layers + heads * length)


def check_memory(batch: int, src_len: int, gen_len: int, d_model: int, heads: int, total: int) -> None:
    """Refuse a shape whose activations alone (estimated) need more than `MEMORY_FRACTION` of `total` bytes."""
    need = attention_bytes(batch, src_len + gen_len, d_model, heads)
    if need > MEMORY_FRACTION * total:
        raise ConfigError(
            f"batch {batch:,} with src_len {src_len:,} and gen_len {gen_len:,} would need about "
            f"{need / 2**30:,.1f} GiB of activations (a rough estimate), more than {MEMORY_FRACTION:.0%} of this "
            f"machine's {total / 2**30:,.1f} GiB; measure smaller shapes",
            settings=("batch", "src_len", "gen_len"),
        )


def _values(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
