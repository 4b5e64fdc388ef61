"""modformer: compress a seq2seq Transformer once into modular layers, assemble many model sizes from it."""

from __future__ import annotations

__version__ = "0.1.0"
