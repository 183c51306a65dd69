"""The one backbone in its three shapes: GPT (causal), BERT (bidirectional encoder), T5 (encoder-decoder)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmpre.models import Block, Transformer, TransformerConfig
from lmpre.models.transformer import relative_position_bucket

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


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_gpt_is_causal(position: str) -> None:
    model, idx, t = build("gpt", position=position), tokens(2, T), 7
    changed = per_position_change(model(idx), model(with_token_changed(idx, t + 1)))
    assert not changed[: t + 1].any()
    assert changed[t + 1 :].all()


def test_bert_encoder_is_bidirectional() -> None:
    model, idx, t = build("bert"), tokens(2, T), 7
    changed = per_position_change(model(idx), model(with_token_changed(idx, t + 1)))
    assert changed.all()  # position t sees t + 1, and so does every other position


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_t5_decoder_is_causal_and_sees_the_whole_encoder(position: str) -> None:
    model, idx, decoder_idx, t = build("t5", position=position), tokens(2, T), tokens(2, 8, seed=1), 3
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
    positions = ["learned", "rope", "relative_bias"]
    options = itertools.product(["layernorm", "rmsnorm"], ["gelu", "swiglu"], positions, [True, False])
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


# ------------------------------------------------------------------------------------ T5's relative position bias

# key − query distance → bucket, by hand from T5's rule (32 buckets, max distance 128). Bidirectional: 16 buckets
# per direction, 8 of them exact; beyond, 8 + floor(log(d / 8) / log(128 / 8) * 8), at most 15; keys after the
# query add 16. Unidirectional: 32 buckets for keys before the query, 16 exact; beyond, 16 + floor(log(d / 16) /
# log(128 / 16) * 16), at most 31; keys after the query share bucket 0. (Distances whose logarithm falls exactly
# on a bucket boundary, 16 or 32, are left out: T5's float32 rounding decides those, and ours is the same code.)
BIDIRECTIONAL = {0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -20: 10, -40: 12, -50: 13, -100: 15, -1000: 15,
                 1: 17, 7: 23, 8: 24, 12: 25, 20: 26, 40: 28, 100: 31, 5000: 31}  # fmt: skip
UNIDIRECTIONAL = {0: 0, 1: 0, 100: 0, -1: 1, -15: 15, -20: 17, -30: 20, -40: 23, -100: 30, -127: 31, -1000: 31}


@pytest.mark.parametrize(("bidirectional", "table"), [(True, BIDIRECTIONAL), (False, UNIDIRECTIONAL)])
def test_relative_position_buckets_are_t5s(bidirectional: bool, table: dict[int, int]) -> None:
    distances = torch.tensor(list(table))
    buckets = relative_position_bucket(distances, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    assert dict(zip(table, buckets.tolist(), strict=True)) == table


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_equal_transformers_t5(bidirectional: bool) -> None:
    modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    distances = torch.arange(-600, 600)
    theirs = modeling_t5.T5Attention._relative_position_bucket(distances, bidirectional, 32, 128)
    ours = relative_position_bucket(distances, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    assert torch.equal(ours, theirs)


def test_one_relative_bias_table_per_stack_added_to_self_attention_only() -> None:
    model = build("t5", position="relative_bias")
    tables = {n: p.shape for n, p in model.named_parameters() if "relative_bias" in n}
    assert tables == {"encoder.relative_bias.bias.weight": (32, 2), "decoder.relative_bias.bias.weight": (32, 2)}
    assert model.encoder.relative_bias.bidirectional
    assert not model.decoder.relative_bias.bidirectional
    assert model.encoder.pos is model.encoder.rope is None  # the bias is the only position information
    # The bias decides the output: a model with another table gives other logits.
    idx, decoder_idx = tokens(2, T), tokens(2, 8, seed=1)
    logits = model(idx, decoder_idx)
    with torch.no_grad():
        model.encoder.relative_bias.bias.weight.normal_()
    assert not torch.allclose(model(idx, decoder_idx), logits)


def test_relative_bias_sees_order_in_a_bidirectional_encoder() -> None:
    # Without positions a BERT encoder is permutation-equivariant; with the bias it is not.
    model = build("bert", position="relative_bias")
    with torch.no_grad():
        model.encoder.relative_bias.bias.weight.normal_()
    idx = tokens(1, T)
    flipped = model(idx.flip(1)).flip(1)
    assert not torch.allclose(model(idx), flipped, atol=1e-4)


def test_a_t5_with_relative_bias_learns() -> None:
    # Copy task: the decoder writes the encoder input out again, behind a start token; position is what it
    # must learn (the bias tables are the only position information).
    model = build("t5", position="relative_bias").train()
    data = tokens(64, 12, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        batch = data[(step % 4) * 16 : (step % 4 + 1) * 16]
        decoder_idx = torch.cat((torch.zeros_like(batch[:, :1]), batch[:, :-1]), dim=1)
        loss = torch.nn.functional.cross_entropy(model(batch, decoder_idx).flatten(0, 1), batch.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert model.decoder.relative_bias.bias.weight.grad.abs().sum() > 0
    assert sum(losses[-4:]) / 4 < losses[0] - 0.5, losses


def test_unknown_position_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="position='alibi' must be one of learned, rope, relative_bias"):
        TransformerConfig(position="alibi")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- RoPE and QK-norm


def test_rope_scores_depend_only_on_the_distance_between_query_and_key() -> None:
    from lmpre.models.transformer import RotaryEmbedding

    rope = RotaryEmbedding(TransformerConfig(vocab_size=VOCAB, d_model=32, n_head=2, max_seq_len=64))
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(query_at: int, key_at: int) -> torch.Tensor:
        return (rope(q, query_at) * rope(k, key_at)).sum()

    assert torch.allclose(score(5, 2), score(40, 37), atol=1e-5)  # both 3 apart
    assert torch.allclose(score(9, 9), (q * k).sum(), atol=1e-5)  # no distance: the unrotated product
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)  # another distance, another score
    assert torch.allclose(rope(q, 7).norm(), q.norm(), atol=1e-6)  # a rotation keeps the length


def test_qk_norm_gives_unit_rms_heads_and_attention_that_ignores_query_and_key_scale() -> None:
    model = build("gpt", qk_norm=True, position="rope")
    attn = model.encoder.blocks[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (16,)  # one gain per head channel
    seen = []
    attn.q_norm.register_forward_hook(lambda _, args, out: seen.append(out))
    idx = tokens(2, T)
    before = model(idx)
    assert seen[0].shape == (2, 2, T, 16)  # (batch, heads, positions, head_dim)
    assert torch.allclose(seen[0].pow(2).mean(-1), torch.ones(2, 2, T), atol=1e-2)
    with torch.no_grad():
        for block in model.encoder.blocks:
            block.attn.q.weight.mul_(10.0)  # without QK-norm this sharpens every attention pattern
            block.attn.kv.weight[:32].mul_(3.0)  # the keys: their half of kv
    assert torch.allclose(model(idx), before, atol=1e-4)
    plain = build("gpt", position="rope")
    assert plain.encoder.blocks[0].attn.q_norm is None
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * 2 * 16
