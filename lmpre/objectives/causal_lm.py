"""Causal language modelling (GPT): predict every next token."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lmpre.callbacks import logging_step
from lmpre.errors import ConfigError
from lmpre.models import TransformerConfig
from lmpre.objectives.base import Prediction, PretrainingObjective


class CausalLM(PretrainingObjective):
    def __init__(
        self,
        backbone: TransformerConfig | Mapping[str, Any],
        *,
        sample_prompt: str = "The history of",
        sample_tokens: int = 48,
        **kwargs: Any,  # optim, special_tokens, seed: see PretrainingObjective
    ) -> None:
        super().__init__(backbone, **kwargs)
        if not self.config.causal or self.config.n_decoder_layer:
            raise ConfigError(
                "CausalLM needs a decoder-only backbone: backbone.causal=true, backbone.n_decoder_layer=0"
            )
        self.sample_prompt, self.sample_tokens = sample_prompt, sample_tokens

    def window_length(self, seq_len: int) -> int:
        return seq_len + 1  # inputs are tokens [0, T), targets the same window shifted by one

    def forward(self, window: Tensor, generator: torch.Generator | None = None) -> Prediction:
        return Prediction(self.model(window[:, :-1]), window[:, 1:])

    def validation_metrics(self, loss: Tensor) -> dict[str, Tensor]:
        metrics = super().validation_metrics(loss)
        # Bits per byte of raw text: comparable across tokenizers, unlike perplexity.
        bytes_per_token = getattr(self.datamodule, "bytes_per_token", None)
        if bytes_per_token:
            metrics["val/bpb"] = loss / math.log(2) / bytes_per_token
        return metrics

    @property
    def datamodule(self) -> Any:
        """The trainer's datamodule (set by Lightning at fit time), for its tokenizer and byte counts."""
        return getattr(self.trainer, "datamodule", None)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.log_sample()

    def log_sample(self) -> None:
        """Greedy continuation of a fixed prompt, so samples are comparable from one validation to the next.

        Every rank generates (a sharded model's forward is a collective); only rank zero's logger writes."""
        tokenizer = getattr(self.datamodule, "tokenizer", None)
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if tokenizer is None or not loggers:
            return
        prompt = torch.tensor([tokenizer.encode(self.sample_prompt).ids], device=self.device)
        tokens = self.model.generate(prompt, self.sample_tokens, temperature=0.0)[0].tolist()
        text = tokenizer.decode(tokens)
        for logger in loggers:
            # Markdown code fence: TensorBoard would otherwise swallow newlines and markup.
            # At the step Lightning logs this validation's scalars, so the text sits beside them.
            logger.experiment.add_text("val/sample", f"```\n{text}\n```", logging_step(self.trainer))
