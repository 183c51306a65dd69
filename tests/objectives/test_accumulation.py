"""k accumulated micro-batches make the update of one k-times larger batch, for every objective; the gradient norm
is logged before clipping."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lmpre.objectives import IGNORE_INDEX, CausalLM, MaskedLM, Prediction, PretrainingObjective, SpanCorruption

VOCAB, SEQ_LEN, MICRO, K = 64, 32, 2, 3
SPECIAL = {"pad": 0, "mask": 1, "eot": 2, "sentinels": list(range(3, 13))}
TINY = {"vocab_size": VOCAB, "d_model": 32, "n_layer": 1, "n_head": 2, "max_seq_len": 64, "dropout": 0.0}
BACKBONES = {
    CausalLM: {"causal": True},
    MaskedLM: {"causal": False},
    SpanCorruption: {"causal": False, "n_decoder_layer": 1},
}


def fair(objective: type[PretrainingObjective]) -> type[PretrainingObjective]:
    """The objective, stepped by plain SGD (lr 1: the update is the gradient itself, where Adam's first step would
    hide its scale), corrupting a k-times larger batch as the k micro-batches it is made of, each with the generator
    its micro-batch gets: the same masks either way, so only the loss normalisation can differ."""

    class Fair(objective):  # type: ignore[misc,valid-type]
        def forward(self, window: Tensor, generator: torch.Generator | None = None) -> Prediction:
            if window.size(0) == MICRO:
                return super().forward(window, generator)
            chunks = [
                super(Fair, self).forward(w, self.batch_generator("train", i, w.device))
                for i, w in enumerate(window.split(MICRO))
            ]
            # One row of every scored position (the masked LM's training prediction is already one such row).
            logits = torch.cat([c.logits.flatten(0, 1) for c in chunks])
            return Prediction(logits[None], torch.cat([c.targets.flatten() for c in chunks])[None])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1.0)

    return Fair


def one_step(
    objective: type[PretrainingObjective], windows: Tensor, batch_size: int, accumulate: int, **trainer: Any
) -> tuple[PretrainingObjective, L.Trainer]:
    torch.manual_seed(0)  # the same initial weights in every run
    model = fair(objective)({**TINY, **BACKBONES[objective]}, special_tokens=SPECIAL, seed=1)
    fit = one_step_trainer(accumulate, log_every_n_steps=1, **trainer)
    fit.fit(model, DataLoader(windows, batch_size=batch_size))
    return model, fit


def one_step_trainer(accumulate: int, **trainer: Any) -> L.Trainer:
    """A Trainer for one optimizer step of `accumulate` micro-batches, with nothing written."""
    return L.Trainer(
        max_steps=1,
        accumulate_grad_batches=accumulate,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    )


def windows_for(objective: type[PretrainingObjective]) -> Tensor:
    length = objective({**TINY, **BACKBONES[objective]}, special_tokens=SPECIAL).window_length(SEQ_LEN)
    return torch.randint(len(SPECIAL) + 10, VOCAB, (MICRO * K, length), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("objective", [CausalLM, MaskedLM, SpanCorruption], ids=lambda c: c.__name__)
def test_accumulated_micro_batches_make_the_update_of_one_large_batch(objective: type[PretrainingObjective]) -> None:
    windows = windows_for(objective)
    accumulated, _ = one_step(objective, windows, batch_size=MICRO, accumulate=K)
    large, _ = one_step(objective, windows, batch_size=MICRO * K, accumulate=1)
    torch.manual_seed(0)
    initial = fair(objective)({**TINY, **BACKBONES[objective]}, special_tokens=SPECIAL, seed=1)

    moved = 0.0
    for (name, a), b, before in zip(
        accumulated.named_parameters(), large.parameters(), initial.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        moved = max(moved, (a - before).abs().max().item())
    assert moved > 1e-3  # a real step was taken

    if objective is MaskedLM:  # what makes a mean of per-micro-batch means wrong: their scored counts differ
        scored = [
            int((accumulated(w, accumulated.batch_generator("train", i, w.device)).targets != IGNORE_INDEX).sum())
            for i, w in enumerate(windows.split(MICRO))
        ]
        assert len(set(scored)) > 1, scored


def test_gradient_norm_is_logged_before_clipping() -> None:
    windows = windows_for(CausalLM)
    clipped, trainer = one_step(CausalLM, windows, MICRO, 1, gradient_clip_val=1e-3)
    torch.manual_seed(0)
    initial = fair(CausalLM)({**TINY, **BACKBONES[CausalLM]}, special_tokens=SPECIAL, seed=1)
    step = torch.cat([(a - b).flatten() for a, b in zip(initial.parameters(), clipped.parameters(), strict=True)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-3)  # SGD at lr 1 moved by the clipped gradient
    free, _ = one_step(CausalLM, windows, MICRO, 1)
    unclipped = torch.cat(
        [(a - b).flatten() for a, b in zip(initial.parameters(), free.parameters(), strict=True)]
    ).norm()
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(unclipped.item(), rel=1e-4)
    assert unclipped.item() > 1e-2


class SGDCausalLM(CausalLM):
    """A causal LM stepped by plain SGD at lr 1 (importable by spawned processes)."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_two_processes_accumulating_make_the_update_of_one_large_batch() -> None:
    """2 DDP processes × 2 micro-batches of 2 windows each step as one process with all 8 windows: the gradient is
    normalised over every process too (DDP averages gradients; the loss is a mean over all scored positions)."""
    windows = torch.randint(20, VOCAB, (8, SEQ_LEN + 1), generator=torch.Generator().manual_seed(3))

    def step(batch_size: int, accumulate: int, **trainer: Any) -> CausalLM:
        torch.manual_seed(0)
        model = SGDCausalLM({**TINY, "causal": True}, special_tokens=SPECIAL)
        one_step_trainer(accumulate, **trainer).fit(model, DataLoader(windows, batch_size=batch_size))
        return model

    distributed = step(2, 2, devices=2, strategy="ddp_spawn")
    single = step(8, 1, devices=1)
    for (name, a), b in zip(distributed.named_parameters(), single.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
