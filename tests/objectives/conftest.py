"""Real text for the objective tests: the prepared WikiText-2 train split (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from litdata import StreamingDataset, TokensLoader
from torch import Tensor
from torch.utils.data import DataLoader

from lmpre.data import TokenDataModule
from lmpre.objectives import IGNORE_INDEX, PretrainingObjective


@dataclass
class TokenizedText:
    tokens: Tensor  # (N,) documents separated by the eot token
    special_tokens: dict[str, Any]
    vocab_size: int

    def windows(self, length: int) -> Tensor:
        """(N // length, length): consecutive windows, as the datamodule packs them."""
        n = len(self.tokens) // length
        return self.tokens[: n * length].view(n, length)


@pytest.fixture(scope="session")
def wikitext(wiki_data: TokenDataModule) -> TokenizedText:
    """~1.1M tokens of WikiText-2 train articles, in order, from a 512-token byte-level BPE with lmpre's special
    tokens."""
    stream = StreamingDataset(
        str(wiki_data.prepared_dir / "corpus" / "train"), item_loader=TokensLoader(block_size=1024)
    )
    tokens = torch.from_numpy(np.concatenate([stream[i] for i in range(len(stream))]).astype(np.int64))
    return TokenizedText(tokens, dict(wiki_data.special_tokens), wiki_data.vocab_size)


def held_out_loss(model: PretrainingObjective, windows: Tensor) -> float:
    """Loss over the scored positions, with the same corruption at every call."""
    model.eval()
    with torch.no_grad():
        pred = model(windows, torch.Generator().manual_seed(0))
    model.train()
    return F.cross_entropy(pred.logits.flatten(0, 1), pred.targets.flatten(), ignore_index=IGNORE_INDEX).item()


@pytest.fixture
def train_briefly() -> Callable[[PretrainingObjective, Tensor, int], tuple[float, float]]:
    """Fit a model for a few steps with a real Trainer; returns its loss on held-out windows before and after."""

    def fit(model: PretrainingObjective, windows: Tensor, steps: int) -> tuple[float, float]:
        held_out, train = windows[:16], windows[16:]
        before = held_out_loss(model, held_out)
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, DataLoader(train, batch_size=16, shuffle=True))
        return before, held_out_loss(model, held_out)

    return fit
