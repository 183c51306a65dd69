"""Masked language modelling (BERT): recover tokens hidden at random from a bidirectional encoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lmpre.errors import ConfigError
from lmpre.models import TransformerConfig
from lmpre.objectives.base import IGNORE_INDEX, Prediction, PretrainingObjective


def mask_tokens(
    tokens: Tensor,
    *,
    mask_id: int,
    special_ids: Tensor,
    vocab_size: int,
    mask_prob: float = 0.15,
    replace_mask: float = 0.8,
    replace_random: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's dynamic masking: select each non-special token with probability `mask_prob`; of those,
    `replace_mask` become `mask_id`, `replace_random` a random non-special token, the rest stay.

    Keeping some selected tokens (and swapping some for noise) stops the encoder from learning that only
    `[MASK]` positions matter, since no `[MASK]` appears when it is fine-tuned.
    Returns (inputs, targets): targets hold the original token where selected, IGNORE_INDEX elsewhere.
    """
    rand = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    selected = (rand < mask_prob) & ~torch.isin(tokens, special_ids)
    targets = tokens.masked_fill(~selected, IGNORE_INDEX)

    replace = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=tokens.device)
    allowed[special_ids] = False
    candidates = allowed.nonzero().squeeze(1)
    random_tokens = candidates[torch.randint(len(candidates), tokens.shape, generator=generator, device=tokens.device)]
    inputs = torch.where(selected & (replace < replace_mask), mask_id, tokens)
    to_random = selected & (replace >= replace_mask) & (replace < replace_mask + replace_random)
    return torch.where(to_random, random_tokens, inputs), targets


class MaskedLM(PretrainingObjective):
    special_ids: Tensor  # every special token id: never selected, never a random replacement

    def __init__(
        self,
        backbone: TransformerConfig | Mapping[str, Any],
        *,
        mask_prob: float = 0.15,
        replace_mask: float = 0.8,
        replace_random: float = 0.1,
        **kwargs: Any,  # optim, special_tokens, seed: see PretrainingObjective
    ) -> None:
        super().__init__(backbone, **kwargs)
        if self.config.causal or self.config.n_decoder_layer:
            raise ConfigError(
                "MaskedLM needs a bidirectional encoder-only backbone: "
                "backbone.causal=false, backbone.n_decoder_layer=0"
            )
        if not 0 < mask_prob <= 1:
            raise ConfigError(f"mask_prob={mask_prob} must be in (0, 1]")
        if replace_mask < 0 or replace_random < 0 or replace_mask + replace_random > 1:
            raise ConfigError(
                f"replace_mask={replace_mask} and replace_random={replace_random} must be >= 0 and sum to at most 1"
            )
        self.mask_prob, self.replace_mask, self.replace_random = mask_prob, replace_mask, replace_random
        self.mask_id = self.special_token("mask")
        ids = [i for v in self.special_tokens.values() for i in ([v] if isinstance(v, int) else v)]
        # Not a checkpointed weight: follows the module across devices and is rebuilt from hparams.
        self.register_buffer("special_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    def mask(self, window: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of a batch of windows, masked with this objective's rates."""
        return mask_tokens(
            window,
            mask_id=self.mask_id,
            special_ids=self.special_ids,
            vocab_size=self.config.vocab_size,
            mask_prob=self.mask_prob,
            replace_mask=self.replace_mask,
            replace_random=self.replace_random,
            generator=generator,
        )

    def forward(self, window: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """Training computes the output head only at the masked positions (~`mask_prob` of them): the same loss
        for a fraction of the head's cost, as one row of N scored positions. Evaluation keeps a row per window."""
        inputs, targets = self.mask(window, generator)
        if not self.training:
            return Prediction(self.model(inputs), targets)
        scored = targets != IGNORE_INDEX
        return Prediction(self.model(inputs, scored=scored)[None], targets[scored][None])
