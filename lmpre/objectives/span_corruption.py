"""Span corruption (T5): the encoder reads a window with random spans replaced by sentinels, the
decoder writes out each sentinel followed by the span it hides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lmpre.errors import ConfigError
from lmpre.models import TransformerConfig
from lmpre.objectives.base import Prediction, PretrainingObjective


def noise_span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) in `length` raw tokens, rounded as T5 does: at least one noise span,
    and at least one token left clean."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    return num_noise, max(round(num_noise / mean_noise_span_length), 1)


def corrupted_lengths(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(encoder input, target) lengths of `length` raw tokens: the input keeps the clean tokens and one
    sentinel per noise span, the target holds each sentinel followed by its noise tokens."""
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans, num_noise + num_spans


def raw_length(input_length: int, noise_density: float, mean_noise_span_length: float) -> int:
    """The most raw tokens whose encoder input fits `input_length` (T5's `compute_input_and_target_lengths`).

    One more raw token adds 0 or 1 encoder tokens, so the input is exactly `input_length` long."""
    length = input_length
    while corrupted_lengths(length + 1, noise_density, mean_noise_span_length)[0] <= input_length:
        length += 1
    return length


def random_segmentation(
    num_items: int, num_segments: int, batch: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """(batch, num_segments) lengths of a uniformly random split of `num_items` into non-empty segments:
    cut at `num_segments - 1` distinct positions drawn among the `num_items - 1` gaps, per row."""
    gaps = torch.rand(batch, num_items - 1, generator=generator, device=device).argsort(dim=1)
    cuts = (gaps[:, : num_segments - 1] + 1).sort(dim=1).values
    first, last = torch.zeros(batch, 1, dtype=torch.long, device=device), torch.full_like(cuts[:, :1], num_items)
    return torch.cat((first, cuts, last), dim=1).diff(dim=1)


def random_spans_noise_mask(
    batch: int,
    length: int,
    num_noise: int,
    num_spans: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """(batch, length) bool, True on noise: T5's `random_spans_noise_mask` with its own spans in every row.

    Clean and noise tokens are each split into `num_spans` random non-empty spans, interleaved starting
    with a clean span, so every row ends in noise and holds exactly `num_noise` noise tokens."""
    device = torch.device("cpu") if device is None else device
    noise = random_segmentation(num_noise, num_spans, batch, generator, device)
    clean = random_segmentation(length - num_noise, num_spans, batch, generator, device)
    span_ends = torch.stack((clean, noise), dim=2).flatten(1).cumsum(dim=1)
    positions = torch.arange(length, device=device).expand(batch, length).contiguous()
    return torch.searchsorted(span_ends, positions, right=True) % 2 == 1


def replace_spans(tokens: Tensor, mask: Tensor, sentinels: Tensor) -> Tensor:
    """Each run of masked tokens becomes the next sentinel of its row (`sentinels[0]`, `sentinels[1]`, …).

    Every row must keep as many tokens as the others, true of masks from `random_spans_noise_mask`."""
    starts = mask & ~F.pad(mask[:, :-1], (1, 0), value=False)
    span = (starts.cumsum(dim=1) - 1).clamp(min=0)
    values = torch.where(starts, sentinels[span], tokens)
    return values[~mask | starts].view(tokens.size(0), -1)


class SpanCorruption(PretrainingObjective):
    sentinels: Tensor  # <extra_id_0>, <extra_id_1>, …: the i-th noise span of a window becomes sentinels[i]

    def __init__(
        self,
        backbone: TransformerConfig | Mapping[str, Any],
        *,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        **kwargs: Any,  # optim, special_tokens, seed: see PretrainingObjective
    ) -> None:
        super().__init__(backbone, **kwargs)
        if self.config.causal or not self.config.n_decoder_layer:
            raise ConfigError(
                "SpanCorruption needs an encoder-decoder backbone: backbone.causal=false, backbone.n_decoder_layer>0"
            )
        if not 0 < noise_density < 1:
            raise ConfigError(f"noise_density={noise_density} must be in (0, 1)")
        if mean_noise_span_length < 1:
            raise ConfigError(f"mean_noise_span_length={mean_noise_span_length} must be at least 1")
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.start_id = self.special_token("pad")  # T5 starts decoding from its pad token
        # Not a checkpointed weight: follows the module across devices and is rebuilt from hparams.
        sentinels = torch.tensor(self.special_token("sentinels"), dtype=torch.long)
        self.register_buffer("sentinels", sentinels, persistent=False)

    def lengths(self, seq_len: int) -> tuple[int, int]:
        """(raw window, target) lengths for an encoder input of exactly `seq_len` tokens.

        T5 appends an EOS to both inputs and targets; we do not, since the token stream already separates
        documents with `eot`. So the encoder reads exactly `seq_len` = clean tokens + one sentinel per
        noise span, and the decoder exactly noise tokens + one sentinel per noise span."""
        length = raw_length(seq_len, self.noise_density, self.mean_noise_span_length)
        num_noise, num_spans = self.count_spans(length)
        target = num_noise + num_spans
        if max(seq_len, target) > self.config.max_seq_len:
            raise ConfigError(
                f"backbone.max_seq_len={self.config.max_seq_len} is too short for span corruption: the encoder "
                f"reads {seq_len} tokens (data.seq_len) and the decoder {target}"
            )
        return length, target

    def window_length(self, seq_len: int) -> int:
        return self.lengths(seq_len)[0]

    def target_length(self, seq_len: int) -> int:
        return self.lengths(seq_len)[1]

    def count_spans(self, length: int) -> tuple[int, int]:
        """(noise tokens, noise spans) in a window of `length` raw tokens, with a sentinel for every span."""
        num_noise, num_spans = noise_span_counts(length, self.noise_density, self.mean_noise_span_length)
        if num_spans > len(self.sentinels):
            raise ConfigError(
                f"a window of {length} tokens has {num_spans} noise spans, but special_tokens['sentinels'] holds "
                f"only {len(self.sentinels)} sentinels; use a tokenizer with more <extra_id_*> tokens, "
                "a shorter data.seq_len or a longer mean_noise_span_length"
            )
        return num_noise, num_spans

    def corrupt(self, window: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(encoder input, decoder input, targets) of a batch of raw windows; the decoder input is the
        targets shifted right behind the start token."""
        batch, length = window.shape
        noise = random_spans_noise_mask(batch, length, *self.count_spans(length), generator, window.device)
        targets = replace_spans(window, ~noise, self.sentinels)
        decoder_inputs = F.pad(targets[:, :-1], (1, 0), value=self.start_id)
        return replace_spans(window, noise, self.sentinels), decoder_inputs, targets

    def forward(self, window: Tensor, generator: torch.Generator | None = None) -> Prediction:
        inputs, decoder_inputs, targets = self.corrupt(window, generator)
        return Prediction(self.model(inputs, decoder_inputs), targets)
