"""KV-cache decoding is full recomputation, token for token: causal LMs (learned, RoPE, relative-bias positions)
and the T5 decoder (its cross-attention keys cached once)."""

from __future__ import annotations

import pytest
import torch

from lmpre.inference import KVCache, Sampler, generate
from lmpre.models import Transformer, TransformerConfig

VOCAB = 97
SHAPES = {
    "gpt": {"causal": True, "n_decoder_layer": 0},
    "t5": {"causal": False, "n_decoder_layer": 2},
}
POSITIONS = ["learned", "rope", "relative_bias"]


def build(arch: str, position: str, **overrides: object) -> Transformer:
    torch.manual_seed(0)
    fields = {"vocab_size": VOCAB, "d_model": 32, "n_layer": 2, "n_head": 4, "max_seq_len": 48, "position": position}
    model = Transformer(TransformerConfig(**{**fields, **SHAPES[arch], **overrides})).eval()  # type: ignore[arg-type]
    with torch.no_grad():  # sharper than the initialisation, so greedy and sampled tokens are not near-ties
        for p in model.parameters():
            p.mul_(2)
    return model


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def full(model: Transformer, seq: torch.Tensor, encoder_input: torch.Tensor | None) -> torch.Tensor:
    return model(seq) if encoder_input is None else model(encoder_input, seq)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("arch", SHAPES)
def test_cached_logits_equal_full_recomputation_at_every_step(arch: str, position: str) -> None:
    """Prompt in two chunks (the second continues the cache: more queries than one, fewer than the keys), then
    one token at a time: every step's logits are those of the whole sequence recomputed."""
    model = build(arch, position)
    encoder_input = tokens(2, 20, seed=1) if arch == "t5" else None
    memory = None if encoder_input is None else model.encode(encoder_input)
    seq = tokens(2, 40)
    reference = full(model, seq, encoder_input)
    cache = KVCache.for_model(model, batch_size=2)
    chunks = [(0, 7), (7, 12), *((t, t + 1) for t in range(12, 40))]
    with torch.no_grad():
        for start, end in chunks:
            step = seq[:, start:end]
            logits = model(step, cache=cache) if memory is None else model.decode(step, memory, cache)
            assert cache.length == end
            torch.testing.assert_close(logits, reference[:, start:end], atol=1e-5, rtol=0)
    if memory is not None:  # the encoder's keys/values were computed at the first step and reused after
        assert all(block.cross is not None for block in cache.blocks)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("arch", SHAPES)
@pytest.mark.parametrize("sampler", [Sampler(temperature=0.0), Sampler(temperature=1.0, top_k=20, top_p=0.95)])
def test_generate_with_the_cache_gives_the_tokens_of_recomputation(arch: str, position: str, sampler: Sampler) -> None:
    model = build(arch, position)
    encoder_input = tokens(3, 20, seed=1) if arch == "t5" else None
    prompt = tokens(3, 5, seed=2) if arch == "gpt" else torch.zeros(3, 1, dtype=torch.long)

    def run(use_cache: bool) -> torch.Tensor:
        steps = generate(
            model,
            prompt,
            max_new_tokens=30,
            sampler=sampler,
            generator=torch.Generator().manual_seed(7),
            encoder_input=encoder_input,
            use_cache=use_cache,
        )
        return torch.stack(list(steps), dim=1)

    cached, recomputed = run(True), run(False)
    assert cached.shape == (3, 30)
    assert torch.equal(cached, recomputed)
    # And each token is the one the whole sequence recomputed by the model itself gives (greedy).
    if sampler.greedy:
        seq = torch.cat((prompt, cached), dim=1)
        expected = full(model, seq[:, :-1], encoder_input)[:, prompt.size(1) - 1 :].argmax(-1)
        assert torch.equal(cached, expected)


def test_a_query_shorter_than_the_keys_needs_the_offset_causal_mask() -> None:
    """The trap: SDPA's is_causal aligns its mask top-left, so the last of 3 new queries over 10 keys would see
    only the first 3 keys. The cache path must not use it."""
    model = build("gpt", "rope")
    seq = tokens(1, 10)
    cache = KVCache.for_model(model, batch_size=1)
    with torch.no_grad():
        model(seq[:, :7], cache=cache)
        continued = model(seq[:, 7:], cache=cache)
    torch.testing.assert_close(continued, model(seq)[:, 7:], atol=1e-5, rtol=0)
    # A mask-free (wrongly aligned) attention over the cache would differ: the check above has teeth.
    assert model.encoder.attention_mask(3, 7, seq.device) is not None


def test_generate_stops_at_stop_tokens_and_at_max_seq_len() -> None:
    model = build("gpt", "learned")
    prompt = tokens(2, 5)
    greedy = torch.stack(list(generate(model, prompt, max_new_tokens=10)), dim=1)
    stop = int(greedy[0, 3])
    stopped = torch.stack(list(generate(model, prompt, max_new_tokens=10, stop_tokens={stop})), dim=1)
    first = int((greedy[0] == stop).nonzero()[0])
    assert torch.equal(stopped[0, : first + 1], greedy[0, : first + 1])
    if stopped.size(1) > first + 1:  # the other row went on: this row repeats its stop token
        assert (stopped[0, first + 1 :] == stop).all()
    # 48 positions: a 45-token prompt leaves room for 4 new tokens (the last one needs no position).
    assert len(list(generate(model, tokens(1, 45), max_new_tokens=10))) == 4
    with pytest.raises(ValueError, match="more than max_seq_len=48"):
        next(generate(model, tokens(1, 49), max_new_tokens=1))


def test_kv_cache_refuses_a_bidirectional_encoder() -> None:
    model = Transformer(TransformerConfig(vocab_size=VOCAB, d_model=32, n_layer=1, n_head=2, causal=False))
    with pytest.raises(ValueError, match="bidirectional"):
        KVCache.for_model(model, batch_size=1)
    with pytest.raises(ValueError, match="bidirectional encoder"):
        next(generate(model, tokens(1, 4), max_new_tokens=1))
