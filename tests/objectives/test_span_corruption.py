"""SpanCorruption (T5): exact lengths, invertibility, span statistics, errors, and a short fit on WikiText."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmpre.objectives import IGNORE_INDEX, SpanCorruption
from lmpre.objectives.span_corruption import noise_span_counts, random_spans_noise_mask

TINY = {"d_model": 64, "n_layer": 2, "n_decoder_layer": 2, "n_head": 2, "max_seq_len": 512, "causal": False}


def span_corruption(wikitext, backbone=None, special_tokens=None, **kwargs) -> SpanCorruption:
    backbone = {"vocab_size": wikitext.vocab_size, **TINY, **(backbone or {})}
    return SpanCorruption(backbone, special_tokens=special_tokens or wikitext.special_tokens, **kwargs)


def corrupt(model: SpanCorruption, windows: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return model.corrupt(windows, torch.Generator().manual_seed(seed))


def uncorrupt(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """The raw window back: in the targets, each sentinel is followed by the span it replaced in the inputs."""
    spans: dict[int, list[int]] = {}
    for token in targets:
        if token in sentinels:
            current = spans[token] = []
        else:
            current.append(token)
    return [t for token in inputs for t in (spans[token] if token in sentinels else [token])]


# T5 gets (568 raw, 114 target) tokens for 512 inputs with its appended EOS; without it, one more raw
# token fits the encoder and the target is one shorter.
@pytest.mark.parametrize(("seq_len", "raw", "target"), [(64, 71, 15), (128, 142, 28), (512, 569, 113)])
def test_encoder_and_decoder_lengths_are_exact(wikitext, seq_len, raw, target) -> None:
    model = span_corruption(wikitext)
    assert (model.window_length(seq_len), model.target_length(seq_len)) == (raw, target)
    inputs, decoder_inputs, targets = corrupt(model, wikitext.windows(raw)[:8])
    assert inputs.shape == (8, seq_len)
    assert decoder_inputs.shape == targets.shape == (8, target)


def test_corruption_is_invertible_with_sentinels_in_order(wikitext) -> None:
    model = span_corruption(wikitext)
    windows = wikitext.windows(model.window_length(128))[:32]
    sentinels = wikitext.special_tokens["sentinels"]
    _, num_spans = model.count_spans(windows.size(1))
    inputs, _, targets = corrupt(model, windows)
    for window, row_inputs, row_targets in zip(windows.tolist(), inputs.tolist(), targets.tolist(), strict=True):
        assert uncorrupt(row_inputs, row_targets, sentinels) == window
        assert [t for t in row_inputs if t in sentinels] == sentinels[:num_spans]
        assert [t for t in row_targets if t in sentinels] == sentinels[:num_spans]
        # Spans interleave starting with clean text, so the window ends in noise.
        assert row_targets[0] == sentinels[0]
        assert row_inputs[-1] == sentinels[num_spans - 1]


@pytest.mark.parametrize("length", [71, 142, 569])
def test_noise_density_and_mean_span_length(length: int) -> None:
    num_noise, num_spans = noise_span_counts(length, noise_density=0.15, mean_noise_span_length=3.0)
    mask = random_spans_noise_mask(256, length, num_noise, num_spans, torch.Generator().manual_seed(0))
    starts = mask & ~F.pad(mask[:, :-1], (1, 0))
    assert (mask.sum(dim=1) == num_noise).all()
    assert (starts.sum(dim=1) == num_spans).all()
    assert mask.float().mean() == pytest.approx(0.15, abs=0.01)
    assert mask.sum() / starts.sum() == pytest.approx(3.0, rel=0.1)
    assert not mask[:, 0].any()
    assert mask[:, -1].all()
    assert len({tuple(row) for row in mask.tolist()}) == 256  # every row has its own spans


def test_decoder_input_is_the_targets_shifted_right_behind_pad(wikitext) -> None:
    model = span_corruption(wikitext)
    _, decoder_inputs, targets = corrupt(model, wikitext.windows(model.window_length(64))[:8])
    assert (decoder_inputs[:, 0] == wikitext.special_tokens["pad"]).all()
    assert torch.equal(decoder_inputs[:, 1:], targets[:, :-1])


def test_corruption_is_fresh_per_generator_and_repeats_per_seed(wikitext) -> None:
    model = span_corruption(wikitext)
    windows = wikitext.windows(model.window_length(64))[:8]
    first, again, other = corrupt(model, windows, 0), corrupt(model, windows, 0), corrupt(model, windows, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_forward_scores_every_target_position(wikitext) -> None:
    model = span_corruption(wikitext)
    windows = wikitext.windows(model.window_length(64))[:4]
    pred = model(windows, torch.Generator().manual_seed(5))
    assert torch.equal(pred.targets, corrupt(model, windows, seed=5)[2])
    assert (pred.targets != IGNORE_INDEX).all()
    assert pred.logits.shape == (4, model.target_length(64), wikitext.vocab_size)


def test_too_few_sentinels_is_a_clear_error(wikitext) -> None:
    few = {**wikitext.special_tokens, "sentinels": wikitext.special_tokens["sentinels"][:10]}
    model = span_corruption(wikitext, special_tokens=few)
    assert model.window_length(128) == 142  # 7 spans
    with pytest.raises(ValueError, match=r"28 noise spans.*special_tokens\['sentinels'\] holds only 10"):
        model.window_length(512)
    with pytest.raises(ValueError, match="sentinels"):
        corrupt(model, wikitext.windows(569)[:2])
    with pytest.raises(ValueError, match="'sentinels'"):
        span_corruption(wikitext, special_tokens={"eot": 0, "pad": 1, "mask": 2})


@pytest.mark.parametrize(
    ("backbone", "kwargs", "match"),
    [
        ({"causal": True}, {}, "backbone.causal=false"),
        ({"n_decoder_layer": 0}, {}, "backbone.n_decoder_layer>0"),
        ({}, {"noise_density": 0.0}, "noise_density"),
        ({}, {"mean_noise_span_length": 0.5}, "mean_noise_span_length"),
    ],
)
def test_rejects_wrong_backbones_and_rates(wikitext, backbone, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        span_corruption(wikitext, backbone, **kwargs)


def test_max_seq_len_must_fit_the_encoder_input(wikitext) -> None:
    model = span_corruption(wikitext, {"max_seq_len": 128})
    assert model.window_length(128) == 142
    with pytest.raises(ValueError, match=r"backbone.max_seq_len=128 .* reads 129 tokens"):
        model.window_length(129)


def test_a_few_steps_on_wikitext_lower_the_loss(wikitext, train_briefly) -> None:
    torch.manual_seed(0)
    model = span_corruption(wikitext, optim={"lr": 3e-3, "warmup_steps": 5})
    before, after = train_briefly(model, wikitext.windows(model.window_length(64))[:1000], 40)
    assert after < before - 1.0, (before, after)
