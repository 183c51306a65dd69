"""Sampling: greedy, temperature, top-k, top-p, and seeded generators only."""

from __future__ import annotations

import pytest
import torch

from lmpre.inference import Sampler, filter_logits

LOGITS = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))


def kept(logits: torch.Tensor) -> list[int]:
    return logits[0].isfinite().nonzero().squeeze(-1).tolist()


def test_top_k_keeps_the_k_likeliest() -> None:
    assert kept(filter_logits(LOGITS, top_k=2)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_k=10)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_fewest_tokens_reaching_p() -> None:
    assert kept(filter_logits(LOGITS, top_p=0.45)) == [0]
    assert kept(filter_logits(LOGITS, top_p=0.6)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_p=0.84)) == [0, 1, 2]
    assert kept(filter_logits(LOGITS, top_p=0.01)) == [0]  # the likeliest always stays
    shuffled = LOGITS[:, [3, 0, 4, 2, 1]]  # order in the vocabulary does not matter
    assert kept(filter_logits(shuffled, top_p=0.6)) == [1, 4]


def test_greedy_is_argmax_and_sampling_follows_the_distribution() -> None:
    logits = LOGITS.expand(20000, -1)
    assert (Sampler(temperature=0.0)(logits) == 0).all()
    draws = Sampler(temperature=1.0)(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(freq, LOGITS[0].exp(), atol=0.01, rtol=0)
    hot = Sampler(temperature=100.0)(logits, torch.Generator().manual_seed(0))
    assert torch.bincount(hot, minlength=5).min() > 3500  # nearly uniform
    top2 = Sampler(temperature=1.0, top_k=2)(logits, torch.Generator().manual_seed(0))
    assert set(top2.tolist()) == {0, 1}


def test_the_seed_decides_the_draws_not_the_global_rng() -> None:
    logits, sampler = LOGITS.expand(64, -1), Sampler(temperature=1.0)
    torch.manual_seed(1)
    first = sampler(logits, torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(first, sampler(logits, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, sampler(logits, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Sampler(**kwargs)  # type: ignore[arg-type]
