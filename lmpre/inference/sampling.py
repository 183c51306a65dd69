"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p (nucleus).

Randomness comes only from the `torch.Generator` passed in, never from torch's global RNG: the same seed
gives the same tokens, whatever else the process draws."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Sampler:
    """temperature 0: greedy (argmax). Otherwise logits / temperature, keeping only the `top_k` most likely
    tokens and the smallest set whose probability reaches `top_p`, then a draw from what is left."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be 0 (greedy) or more")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1 (or null: no limit)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (or null: no limit)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probabilities(self, logits: Tensor) -> Tensor:
        """(B, V) the distribution a draw is made from (for temperature > 0)."""
        return F.softmax(filter_logits(logits / self.temperature, self.top_k, self.top_p), dim=-1)

    def __call__(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) the next token of each row of `logits` (B, V)."""
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = self.probabilities(logits.float())
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """`logits` (B, V) with -inf outside the `top_k` largest and outside the nucleus of probability `top_p`
    (the most likely token always stays)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # A token is dropped when the more likely ones before it already reach top_p.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
