"""Model surgery on backbone state dicts: which source layer lands where, what is kept, and that the result is the
model it claims to be (the source's blocks run in the new order)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lmpre.models import Transformer, TransformerConfig
from lmpre.models.surgery import (
    check_subset,
    depth_upscale,
    depth_upscale_layers,
    downscale,
    num_layers,
    select_layers,
)

VOCAB = 64


def build(n_layer: int, n_decoder_layer: int = 0, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    fields = {"vocab_size": VOCAB, "d_model": 32, "n_head": 2, "max_seq_len": 32}
    causal = {"causal": n_decoder_layer == 0, "n_decoder_layer": n_decoder_layer}
    return Transformer(TransformerConfig(**fields, **causal, n_layer=n_layer)).eval()


def reordered(source: Transformer, encoder: list[int], decoder: list[int] | None = None) -> Transformer:
    """The source model with its blocks run in the given orders: what the surgery's result must compute."""
    model = copy.deepcopy(source)
    model.encoder.blocks = nn.ModuleList(model.encoder.blocks[i] for i in encoder)
    if decoder is not None:
        assert model.decoder is not None
        model.decoder.blocks = nn.ModuleList(model.decoder.blocks[i] for i in decoder)
    return model


def load(state: dict[str, torch.Tensor], n_layer: int, n_decoder_layer: int = 0) -> Transformer:
    model = build(n_layer, n_decoder_layer, seed=1)
    model.load_state_dict(state)  # strict: exactly the new model's keys and shapes
    return model


def test_depth_upscale_layers_follow_solar() -> None:
    assert depth_upscale_layers(4, 1) == [0, 1, 2, 1, 2, 3]
    assert depth_upscale_layers(3, 0) == [0, 1, 2, 0, 1, 2]
    solar = depth_upscale_layers(32, 8)  # SOLAR 10.7B: 32 layers, m = 8 -> 48 layers
    assert len(solar) == 48
    assert solar == list(range(24)) + list(range(8, 32))


def test_depth_upscaled_gpt_runs_the_source_blocks_in_the_new_order() -> None:
    source = build(4)
    state = source.state_dict()
    made = depth_upscale(state, drop=1)
    assert num_layers(made) == 6
    assert num_layers(made, "decoder") == 0
    for new, old in enumerate([0, 1, 2, 1, 2, 3]):
        assert made[f"encoder.blocks.{new}.attn.q.weight"] is state[f"encoder.blocks.{old}.attn.q.weight"]
    outside = {k for k in state if ".blocks." not in k}
    assert {"embed.weight", "encoder.pos.weight", "encoder.norm.weight", "head.weight"} <= outside
    assert all(made[k] is state[k] for k in outside)  # kept as they are
    assert {k: v.shape for k, v in made.items()} == {k: v.shape for k, v in load(made, 6).state_dict().items()}

    idx = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = reordered(source, [0, 1, 2, 1, 2, 3])(idx)
    torch.testing.assert_close(load(made, 6)(idx), expected, rtol=0, atol=0)


def test_encoder_decoder_stacks_are_operated_on_separately() -> None:
    source = build(3, n_decoder_layer=2)
    state = source.state_dict()
    made = depth_upscale(depth_upscale(state, drop=1, stack="encoder"), drop=0, stack="decoder")
    assert (num_layers(made, "encoder"), num_layers(made, "decoder")) == (4, 4)
    assert made["decoder.blocks.2.cross.kv.weight"] is state["decoder.blocks.0.cross.kv.weight"]

    idx = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    decoder_idx = torch.randint(VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    expected = reordered(source, [0, 1, 1, 2], [0, 1, 0, 1])(idx, decoder_idx)
    torch.testing.assert_close(load(made, 4, 4)(idx, decoder_idx), expected, rtol=0, atol=0)

    kept = downscale(downscale(state, [0, 2], "encoder"), [1], "decoder")
    assert (num_layers(kept, "encoder"), num_layers(kept, "decoder")) == (2, 1)
    expected = reordered(source, [0, 2], [1])(idx, decoder_idx)
    torch.testing.assert_close(load(kept, 2, 1)(idx, decoder_idx), expected, rtol=0, atol=0)


def test_downscale_keeps_the_chosen_layers_in_order() -> None:
    source = build(4)
    state = source.state_dict()
    kept = downscale(state, [0, 2, 3])
    assert num_layers(kept) == 3
    for new, old in enumerate([0, 2, 3]):
        assert kept[f"encoder.blocks.{new}.mlp.up.weight"] is state[f"encoder.blocks.{old}.mlp.up.weight"]
    assert not any(k.startswith("encoder.blocks.3.") for k in kept)
    idx = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(load(kept, 3)(idx), reordered(source, [0, 2, 3])(idx), rtol=0, atol=0)
    # Every layer, in order: the very same model.
    torch.testing.assert_close(load(downscale(state, [0, 1, 2, 3]), 4)(idx), source(idx), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], "is empty"),
        (3, "must be a list of layer indices"),
        ([0.0, 1], "must be a list of layer indices"),
        ([0, 4], "the source has layers 0…3"),
        ([-1, 2], "the source has layers 0…3"),
        ([2, 0], "increasing order"),
        ([1, 1], "increasing order"),
    ],
)
def test_downscale_refuses_what_is_not_a_subset(layers: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_subset(layers, 4)  # type: ignore[arg-type]


def test_bad_requests_are_refused() -> None:
    state = build(4).state_dict()
    for drop in (-1, 4, 5):
        with pytest.raises(ValueError, match=f"drop={drop} must be"):
            depth_upscale(state, drop)
    with pytest.raises(ValueError, match="do not exist"):
        select_layers(state, [0, 7])
    with pytest.raises(ValueError, match="keep at least one"):
        select_layers(state, [])
    with pytest.raises(ValueError, match="stack='head'"):
        select_layers(state, [0], stack="head")
    with pytest.raises(ValueError, match="not numbered"):
        num_layers({k: v for k, v in state.items() if not k.startswith("encoder.blocks.1.")})
