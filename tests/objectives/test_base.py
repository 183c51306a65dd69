"""What every objective inherits from PretrainingObjective."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lmpre.objectives import CausalLM


def test_counted_flops_match_six_n_per_token() -> None:
    """The FLOP count ThroughputMonitor reads is the usual 6 * matmul parameters * tokens."""
    model = CausalLM({"vocab_size": 512, "d_model": 64, "n_layer": 2, "n_head": 2})
    windows = torch.randint(0, 512, (8, 65))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, barebones=True)
    trainer.fit(model, DataLoader(windows, batch_size=8))
    block_weights = sum(p.numel() for name, p in model.model.named_parameters() if "blocks" in name and p.dim() == 2)
    six_n = 6 * (block_weights + 512 * 64) * 8 * 64  # the tied head is a matmul too
    assert model.flops_per_batch == pytest.approx(six_n, rel=0.25)
