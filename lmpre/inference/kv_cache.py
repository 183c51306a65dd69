"""Keys and values of past positions, kept while decoding so each new token costs one position's work.

A `KVCache` serves one causal stack (GPT's, or T5's decoder): per block, self-attention keys/values in
tensors allocated once for `max_len` positions, and the cross-attention keys/values of the encoder output,
computed at the first step. The backbone (lmpre.models.transformer) writes into it: it only sees the
`StackCache` protocol, so lmpre.models does not depend on this package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmpre.models import Transformer


@dataclass
class BlockCache:
    """One block's keys/values: `k`, `v` (B, H, max_len, D) filled up to the stack's length."""

    k: Tensor
    v: Tensor
    cross: tuple[Tensor, Tensor] | None = None

    def append(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        end = start + k.size(-2)
        if end > self.k.size(-2):
            raise ValueError(f"the KV cache holds {self.k.size(-2)} positions, {end} needed")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """The block caches of the stack that decodes (the only stack of a GPT, the decoder of a T5)."""

    def __init__(self, blocks: list[BlockCache]) -> None:
        self._blocks = blocks
        self.length = 0  # positions held: the next token's position

    @property
    def blocks(self) -> list[BlockCache]:
        return self._blocks

    @property
    def max_len(self) -> int:
        return self._blocks[0].k.size(-2) if self._blocks else 0

    @classmethod
    def for_model(
        cls, model: Transformer, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for `batch_size` sequences of up to `max_len` (default and at most: max_seq_len)
        positions, on the model's device, in `dtype` (default: the model's; under autocast, the autocast dtype)."""
        config = model.config
        stack = model.decoder if model.decoder is not None else model.encoder
        if not stack.causal:
            raise ValueError("a KV cache serves causal decoding: this model is a bidirectional encoder")
        max_len = config.max_seq_len if max_len is None else min(max_len, config.max_seq_len)
        weight = model.embed.weight
        shape = (batch_size, config.n_head, max_len, config.head_dim)

        def empty() -> Tensor:
            return torch.zeros(shape, dtype=dtype or weight.dtype, device=weight.device)

        return cls([BlockCache(empty(), empty()) for _ in stack.blocks])
