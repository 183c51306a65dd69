"""AdamW with decoupled weight-decay groups and a per-step linear warm-up + cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class AdamW:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio

    def build(self, model: nn.Module, total_steps: int) -> tuple[torch.optim.AdamW, LambdaLR]:
        # Decay matrices and embeddings; biases and norm gains stay free (decaying them only hurts).
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=(self.betas[0], self.betas[1]), eps=self.eps)
        return optimizer, LambdaLR(optimizer, WarmupCosine(self.warmup_steps, self.min_lr_ratio, total_steps))

    def lr_factor(self, step: int, total_steps: int) -> float:
        return WarmupCosine(self.warmup_steps, self.min_lr_ratio, total_steps)(step)


@dataclass
class WarmupCosine:
    """The LR multiplier at a step. `total_steps` may be set after construction (lmpre.budget: a time budget learns
    it by measuring speed); plain fields only, since LambdaLR saves them in checkpoints."""

    warmup_steps: int
    min_lr_ratio: float
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
