"""Real text for the objective tests: the prepared WikiText-2 validation split (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lmpre.data import DataConfig, TokenDataModule
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
def wikitext(wikitext_config: DataConfig, prepared_wikitext: Path) -> TokenizedText:
    """~600k tokens of wiki.valid.raw from a 512-token byte-level BPE with lmpre's special tokens."""
    data = TokenDataModule(**asdict(wikitext_config), output_dir=str(prepared_wikitext), batch_size=64)
    data.window = 1024
    data.setup()
    tokens = torch.cat(list(data.val_dataloader())).flatten()
    return TokenizedText(tokens, data.special_tokens, data.vocab_size)


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
