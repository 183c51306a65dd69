"""The one backbone in its three shapes: GPT (causal), BERT (bidirectional encoder), T5 (encoder-decoder)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmpre.models import Block, Transformer, TransformerConfig

ARCHITECTURES = {
    "gpt": {"causal": True, "n_decoder_layer": 0},
    "bert": {"causal": False, "n_decoder_layer": 0},
    "t5": {"causal": False, "n_decoder_layer": 2},
}
VOCAB, T = 64, 16


def build(arch: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    fields = {"vocab_size": VOCAB, "d_model": 32, "n_layer": 2, "n_head": 2, "max_seq_len": 32}
    return Transformer(TransformerConfig(**{**fields, **ARCHITECTURES[arch], **overrides})).eval()


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def with_token_changed(idx: torch.Tensor, t: int) -> torch.Tensor:
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    return changed


def per_position_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(T,) bool: whether the logits at each position differ between two forward passes."""
    return ~torch.isclose(a, b, atol=1e-6).all(dim=-1).all(dim=0)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_gpt_is_causal(position: str) -> None:
    model, idx, t = build("gpt", position=position), tokens(2, T), 7
    changed = per_position_change(model(idx), model(with_token_changed(idx, t + 1)))
    assert not changed[: t + 1].any()
    assert changed[t + 1 :].all()


def test_bert_encoder_is_bidirectional() -> None:
    model, idx, t = build("bert"), tokens(2, T), 7
    changed = per_position_change(model(idx), model(with_token_changed(idx, t + 1)))
    assert changed.all()  # position t sees t + 1, and so does every other position


def test_t5_decoder_is_causal_and_sees_the_whole_encoder() -> None:
    model, idx, decoder_idx, t = build("t5"), tokens(2, T), tokens(2, 8, seed=1), 3
    logits = model(idx, decoder_idx)
    assert logits.shape == (2, 8, VOCAB)
    changed = per_position_change(logits, model(idx, with_token_changed(decoder_idx, t + 1)))
    assert not changed[: t + 1].any()
    assert changed[t + 1 :].all()
    # The last encoder token reaches even the first decoder position.
    assert per_position_change(logits, model(with_token_changed(idx, T - 1), decoder_idx)).all()


def test_every_architecture_is_built_from_the_same_block() -> None:
    stacks = {arch: build(arch) for arch in ARCHITECTURES}
    blocks = [(arch, b) for arch, m in stacks.items() for b in m.modules() if isinstance(b, Block)]
    assert {type(b) for _, b in blocks} == {Block}
    kinds = {(arch, b.causal, b.cross is not None) for arch, b in blocks}
    assert kinds == {("gpt", True, False), ("bert", False, False), ("t5", False, False), ("t5", True, True)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_is_tied_to_the_embedding_unless_disabled(arch: str) -> None:
    model = build(arch)
    assert model.head.weight is model.embed.weight
    untied = build(arch, tie_embeddings=False)
    assert untied.head.weight is not untied.embed.weight
    n_params = model.num_parameters(exclude_embeddings=False)
    assert untied.num_parameters(exclude_embeddings=False) == n_params + VOCAB * model.config.d_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_option_combination_builds_and_runs(arch: str) -> None:
    options = itertools.product(["layernorm", "rmsnorm"], ["gelu", "swiglu"], ["learned", "rope"], [True, False])
    idx, decoder_idx = tokens(2, T), tokens(2, 8) if arch == "t5" else None
    for norm, mlp, position, bias in options:
        model = build(arch, norm=norm, mlp=mlp, position=position, bias=bias)
        logits = model(idx, decoder_idx)
        assert logits.shape == (2, 8 if arch == "t5" else T, VOCAB)
        assert logits.isfinite().all()
        has_bias = any(name.endswith("bias") for name, _ in model.named_parameters())
        assert has_bias == bias, (norm, mlp, position, bias)


@pytest.mark.parametrize(("arch", "depth"), [("gpt", 4), ("t5", 4 + 2)])
def test_residual_projections_get_a_depth_scaled_init(arch: str, depth: int) -> None:
    model = build(arch, d_model=128, n_layer=4)
    proj = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("proj.weight")])
    other = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith(("q.weight", "up.weight"))])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * depth), rel=0.03)
    assert other.std().item() == pytest.approx(0.02, rel=0.03)


def test_generate_appends_tokens_past_the_context_and_greedy_is_deterministic() -> None:
    model, prompt = build("gpt"), tokens(3, 30)
    out = model.generate(prompt, max_new_tokens=10, temperature=0.0)  # 40 > max_seq_len: the context is cropped
    assert out.shape == (3, 40)
    assert torch.equal(out[:, :30], prompt)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=10, temperature=0.0))
    assert torch.equal(out[:, 30], model(prompt)[:, -1].argmax(-1))
    # Sampling from only the most likely token is greedy decoding.
    assert torch.equal(out, model.generate(prompt, max_new_tokens=10, top_k=1))


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_generate_refuses_models_that_are_not_causal_decoders(arch: str) -> None:
    with pytest.raises(ValueError, match="causal decoder-only"):
        build(arch).generate(tokens(1, 4), max_new_tokens=1)
