"""The shared transformer backbone: plain PyTorch, no Lightning, no data."""

from lmpre.models.transformer import Block, Transformer, TransformerConfig

__all__ = ["Block", "Transformer", "TransformerConfig"]
