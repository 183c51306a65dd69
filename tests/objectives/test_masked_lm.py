"""MaskedLM (BERT): dynamic masking statistics, special tokens, determinism, and a short fit on WikiText."""

from __future__ import annotations

import pytest
import torch

from lmpre.objectives import IGNORE_INDEX, MaskedLM, mask_tokens

TINY = {"d_model": 64, "n_layer": 2, "n_head": 2, "max_seq_len": 128, "causal": False}


def masked_lm(wikitext, backbone=None, **kwargs) -> MaskedLM:
    backbone = {"vocab_size": wikitext.vocab_size, **TINY, **(backbone or {})}
    return MaskedLM(backbone, special_tokens=wikitext.special_tokens, **kwargs)


def mask(model: MaskedLM, tokens: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return model.mask(tokens, torch.Generator().manual_seed(seed))


def test_mask_tokens_alone_on_a_toy_vocabulary() -> None:
    tokens = torch.tensor([[0, 5, 6, 7, 1, 8, 9, 2]])
    toy = {"mask_id": 2, "special_ids": torch.tensor([0, 1, 2]), "vocab_size": 10, "mask_prob": 1.0}
    inputs, targets = mask_tokens(tokens, **toy, replace_mask=1.0, replace_random=0.0)
    assert inputs.tolist() == [[0, 2, 2, 2, 1, 2, 2, 2]]
    assert targets.tolist() == [[IGNORE_INDEX, 5, 6, 7, IGNORE_INDEX, 8, 9, IGNORE_INDEX]]
    noise, _ = mask_tokens(tokens.expand(500, -1), **toy, replace_mask=0.0, replace_random=1.0)
    assert set(noise[:, [1, 2, 3, 5, 6]].unique().tolist()) == set(range(3, 10))  # any ordinary token, no special


@pytest.mark.parametrize(("mask_prob", "replace_mask", "replace_random"), [(0.15, 0.8, 0.1), (0.4, 0.5, 0.25)])
def test_selection_rate_and_replacement_split(wikitext, mask_prob, replace_mask, replace_random) -> None:
    model = masked_lm(wikitext, mask_prob=mask_prob, replace_mask=replace_mask, replace_random=replace_random)
    tokens = wikitext.windows(500)[:400]  # 200k tokens
    inputs, targets = mask(model, tokens)

    selected = targets != IGNORE_INDEX
    eligible = ~torch.isin(tokens, model.special_ids)
    assert eligible.sum() > 100_000
    assert torch.equal(targets[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert selected.sum() / eligible.sum() == pytest.approx(mask_prob, abs=0.005)

    chosen, original = inputs[selected], tokens[selected]
    to_mask = chosen == model.mask_id
    unchanged = chosen == original
    to_random = ~to_mask & ~unchanged
    assert to_mask.float().mean() == pytest.approx(replace_mask, abs=0.015)
    assert to_random.float().mean() == pytest.approx(replace_random, abs=0.01)
    assert unchanged.float().mean() == pytest.approx(1 - replace_mask - replace_random, abs=0.01)
    assert not torch.isin(chosen[to_random], model.special_ids).any()


def test_special_tokens_are_never_selected(wikitext) -> None:
    model = masked_lm(wikitext, mask_prob=1.0)  # every ordinary token is selected
    special = wikitext.special_tokens
    assert model.special_ids.tolist() == [special["eot"], special["pad"], special["mask"], *special["sentinels"]]
    tokens = wikitext.windows(200)[:100].clone()
    tokens[:, ::7] = model.special_ids[torch.randint(len(model.special_ids), (100, 29))]
    is_special = torch.isin(tokens, model.special_ids)
    assert (tokens == special["eot"]).any()
    assert (tokens == special["sentinels"][-1]).any()

    inputs, targets = mask(model, tokens)
    assert (targets[is_special] == IGNORE_INDEX).all()
    assert (targets[~is_special] != IGNORE_INDEX).all()
    assert torch.equal(inputs[is_special], tokens[is_special])


def test_masks_are_fresh_per_generator_and_repeat_per_seed(wikitext) -> None:
    model, tokens = masked_lm(wikitext), wikitext.windows(256)[:8]
    first, again, other = mask(model, tokens, seed=0), mask(model, tokens, seed=0), mask(model, tokens, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
    assert not torch.equal(first[1][0], first[1][1])  # rows are masked independently


def test_forward_feeds_masked_inputs_and_scores_only_selected_positions(wikitext) -> None:
    model, window = masked_lm(wikitext).eval(), wikitext.windows(128)[:4]  # evaluation: a row per window
    assert model.window_length(128) == 128
    fed = []
    model.model.register_forward_pre_hook(lambda _, args: fed.append(args[0]))
    pred = model(window, torch.Generator().manual_seed(3))

    inputs, targets = mask(model, window, seed=3)
    assert torch.equal(fed[0], inputs)
    assert torch.equal(pred.targets, targets)
    assert pred.logits.shape == (4, 128, wikitext.vocab_size)


def test_training_computes_the_head_only_at_masked_positions_with_the_same_loss_and_gradients(wikitext) -> None:
    torch.manual_seed(0)
    model, window = masked_lm(wikitext), wikitext.windows(128)[:4]
    heads = []
    model.model.head.register_forward_hook(lambda _, args, out: heads.append(out.shape))
    losses, grads = [], []
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        pred = model(window, torch.Generator().manual_seed(3))
        loss = torch.nn.functional.cross_entropy(
            pred.logits.flatten(0, 1), pred.targets.flatten(), ignore_index=IGNORE_INDEX
        )
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    _, targets = mask(model, window, seed=3)
    masked = int((targets != IGNORE_INDEX).sum())
    assert 0 < masked < 0.25 * targets.numel()
    assert heads == [(masked, wikitext.vocab_size), (4, 128, wikitext.vocab_size)]  # training: masked rows only
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize(
    ("backbone", "kwargs", "match"),
    [
        ({"causal": True}, {}, "backbone.causal=false"),
        ({"n_decoder_layer": 2}, {}, "backbone.n_decoder_layer=0"),
        ({}, {"mask_prob": 0.0}, "mask_prob"),
        ({}, {"replace_mask": 0.8, "replace_random": 0.3}, "replace_random"),
    ],
)
def test_rejects_wrong_backbones_and_rates(wikitext, backbone, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        masked_lm(wikitext, backbone, **kwargs)


def test_needs_the_mask_token() -> None:
    with pytest.raises(ValueError, match="'mask'"):
        MaskedLM({"vocab_size": 512, **TINY}, special_tokens={"eot": 0})


def test_a_few_steps_on_wikitext_lower_the_loss(wikitext, train_briefly) -> None:
    torch.manual_seed(0)
    model = masked_lm(wikitext, optim={"lr": 3e-3, "warmup_steps": 5})
    before, after = train_briefly(model, wikitext.windows(64)[:1000], 40)
    assert after < before - 1.0, (before, after)
