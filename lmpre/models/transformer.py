"""The one transformer backbone behind every objective.

Read top to bottom it is the architecture: config → norm → positions (rotary, relative bias) →
attention → MLP → block → stack → model. A decoder-only GPT, a bidirectional BERT encoder and a T5
encoder-decoder are the same `Block`: causal or not, with or without cross-attention. Differences
between models are config fields, never subclasses.

Decoding one token at a time can pass a `StackCache` (lmpre.inference.kv_cache.KVCache): each attention
layer then appends its new keys/values to the past ones instead of recomputing them, and positions
start where the cache ends. Training never passes one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TransformerConfig:
    vocab_size: int = 8192
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_ff: int | None = None  # None: 4 * d_model (gelu) or the usual 8/3 * d_model (swiglu)
    max_seq_len: int = 1024
    causal: bool = True  # the first stack attends only to the past (GPT) or both ways (BERT, T5)
    n_decoder_layer: int = 0  # > 0 adds a causal decoder with cross-attention (T5)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    position: Literal["learned", "rope", "relative_bias"] = "learned"
    rope_base: float = 10_000.0
    # RMS-normalise each head's queries and keys (learned gain per channel) before the dot product: attention
    # logits cannot grow without bound, so higher learning rates stay stable (OLMo 2, Gemma 3, modded-nanogpt)
    qk_norm: bool = False
    # position=relative_bias (T5): key−query distances fall into this many buckets (half exact, half
    # logarithmic up to the max distance); each bucket has a learned bias per head
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.position not in ("learned", "rope", "relative_bias"):
            raise ValueError(f"position={self.position!r} must be one of learned, rope, relative_bias")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else _round_up(8 * self.d_model // 3, 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def make_norm(config: TransformerConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class RotaryEmbedding(nn.Module):
    """Rotary positions (RoPE): relative position enters attention through rotated queries/keys."""

    cos: Tensor
    sin: Tensor

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        half = config.head_dim // 2
        inv_freq = config.rope_base ** (-torch.arange(half, dtype=torch.float32) / half)
        angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv_freq)
        # Not saved in checkpoints: a function of the config, rebuilt on load.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:  # x: (B, H, T, D) at positions start, start + 1, …
        t = x.size(-2)
        cos, sin = self.cos[start : start + t].to(x.dtype), self.sin[start : start + t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """T5's bucket of each key − query distance (its `_relative_position_bucket`, to the same integers).

    Bidirectional (encoder): half the buckets for keys after the query. Unidirectional (decoder): keys after
    the query share bucket 0 with the query itself (the causal mask hides them anyway). Of the buckets for one
    direction, half are exact distances 0, 1, …; the rest grow logarithmically up to `max_distance`, beyond
    which every distance shares the last bucket."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """T5's relative positions: a learned bias per head and distance bucket, added to attention scores.

    One per stack, computed once per forward and shared by every block's self-attention (as in T5)."""

    def __init__(self, config: TransformerConfig, *, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.bias = nn.Embedding(self.num_buckets, config.n_head)

    def forward(self, n_query: int, n_key: int, start: int = 0) -> Tensor:
        """(1, H, n_query, n_key) biases for queries at positions start, … attending to keys at 0, …"""
        device = self.bias.weight.device
        query = torch.arange(start, start + n_query, device=device)[:, None]
        key = torch.arange(n_key, device=device)[None, :]
        buckets = relative_position_bucket(
            key - query, bidirectional=self.bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        return self.bias(buckets).permute(2, 0, 1).unsqueeze(0)


class BlockCache(Protocol):
    """Where one block keeps its attention keys/values while decoding (lmpre.inference.kv_cache.BlockCache)."""

    cross: tuple[Tensor, Tensor] | None  # cross-attention: the encoder's keys/values, computed at the first step

    def append(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Self-attention: store `k`, `v` (B, H, T, D) at positions start, …; return every key/value so far."""
        ...


class StackCache(Protocol):
    """One stack's block caches, and how many positions they hold (lmpre.inference.kv_cache.KVCache)."""

    length: int

    @property
    def blocks(self) -> Sequence[BlockCache]: ...


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, cross-attention otherwise.

    `mask` (boolean: may attend, or float: added to the scores) replaces the plain causal mask where that
    is not enough: a relative position bias, or queries that continue a cache (SDPA's `is_causal` aligns its
    mask top-left, wrong for fewer queries than keys)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.q = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool,
        context: Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        mask: Tensor | None = None,
        start: int = 0,
        cache: BlockCache | None = None,
    ) -> Tensor:
        b, t, d = x.shape
        q = self._heads(self.q(x))
        if self.q_norm is not None:
            q = self.q_norm(q)
        if rope is not None:
            q = rope(q, start)
        if context is not None and cache is not None and cache.cross is not None:
            k, v = cache.cross  # the encoder output does not change while decoding
        else:
            k, v = (self._heads(z) for z in self.kv(x if context is None else context).chunk(2, dim=-1))
            if self.k_norm is not None:
                k = self.k_norm(k)
            if rope is not None:
                k = rope(k, start)
            if cache is not None and context is not None:
                cache.cross = (k, v)
            elif cache is not None:
                k, v = cache.append(k, v, start)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def _heads(self, z: Tensor) -> Tensor:  # (B, T, d_model) -> (B, H, T, head_dim)
        return z.view(z.size(0), z.size(1), self.n_head, -1).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        assert config.d_ff is not None
        self.gated = config.mlp == "swiglu"
        self.up = nn.Linear(config.d_model, (2 if self.gated else 1) * config.d_ff, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block. `cross_attention` adds the T5 decoder's attention over the encoder."""

    def __init__(self, config: TransformerConfig, *, causal: bool, cross_attention: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.attn_norm, self.attn = make_norm(config), Attention(config)
        self.cross_norm = make_norm(config) if cross_attention else None
        self.cross = Attention(config) if cross_attention else None
        self.mlp_norm, self.mlp = make_norm(config), MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        *,
        mask: Tensor | None = None,
        start: int = 0,
        cache: BlockCache | None = None,
    ) -> Tensor:
        attn = self.attn(self.attn_norm(x), causal=self.causal, rope=rope, mask=mask, start=start, cache=cache)
        x = x + self.dropout(attn)
        if self.cross is not None and self.cross_norm is not None:
            if context is None:
                raise ValueError("a block with cross-attention needs the encoder output as `context`")
            x = x + self.dropout(self.cross(self.cross_norm(x), causal=False, context=context, cache=cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Stack(nn.Module):
    """Positions + blocks + final norm over token embeddings: an encoder, or a decoder when causal."""

    def __init__(self, config: TransformerConfig, n_layer: int, *, causal: bool, cross_attention: bool) -> None:
        super().__init__()
        self.causal, self.max_seq_len = causal, config.max_seq_len
        self.pos = nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        self.rope = RotaryEmbedding(config) if config.position == "rope" else None
        self.relative_bias = (
            RelativePositionBias(config, bidirectional=not causal) if config.position == "relative_bias" else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, causal=causal, cross_attention=cross_attention) for _ in range(n_layer)
        )
        self.norm = make_norm(config)

    def forward(self, x: Tensor, context: Tensor | None = None, cache: StackCache | None = None) -> Tensor:
        """`x` (B, T, d_model) at positions start, …, start + T − 1: start is 0, or what `cache` holds."""
        t = x.size(1)
        start = 0
        if cache is not None:
            if not self.causal:
                raise ValueError("a KV cache serves causal decoding: this stack attends both ways")
            start = cache.length
        if start + t > self.max_seq_len:
            raise ValueError(f"positions up to {start + t} exceed max_seq_len={self.max_seq_len}")
        if self.pos is not None:
            x = x + self.pos(torch.arange(start, start + t, device=x.device))
        x = self.dropout(x)
        mask = self.attention_mask(t, start, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, context, self.rope, mask=mask, start=start, cache=None if cache is None else cache.blocks[i])
        if cache is not None:
            cache.length = start + t
        return self.norm(x)

    def attention_mask(self, n_query: int, start: int, device: torch.device) -> Tensor | None:
        """What every block's self-attention adds to (float) or allows in (bool) its scores; None when SDPA's
        plain `is_causal` (or no mask) is right: no relative bias, and queries and keys at the same positions."""
        n_key = start + n_query
        bias = None if self.relative_bias is None else self.relative_bias(n_query, n_key, start)
        if not self.causal or (bias is None and start == 0):
            return bias
        future = torch.ones(n_query, n_key, dtype=torch.bool, device=device).triu(start + 1)
        return ~future if bias is None else bias.masked_fill(future, float("-inf"))


class Transformer(nn.Module):
    """Token embedding → encoder stack [→ decoder stack] → output head tied to the embedding."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, config.n_layer, causal=config.causal, cross_attention=False)
        self.decoder = (
            Stack(config, config.n_decoder_layer, causal=True, cross_attention=True) if config.n_decoder_layer else None
        )
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections are scaled by 1/sqrt(2 * depth) so the residual stream's
        # variance does not grow with the number of blocks.
        depth = config.n_layer + config.n_decoder_layer
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        idx: Tensor,
        decoder_idx: Tensor | None = None,
        cache: StackCache | None = None,
        *,
        scored: Tensor | None = None,
    ) -> Tensor:
        """Logits for `idx` (GPT, BERT), or for `decoder_idx` given `idx` as encoder input (T5).

        With a `cache`, `idx` (GPT) or `decoder_idx` (T5) continues the tokens the cache already holds. With
        `scored` (boolean, the shape of the input), an encoder-only or decoder-only model computes the output head
        only at those positions: (N, vocab) logits, in order, for the N true ones (a masked LM scores ~15%)."""
        if self.decoder is None:
            self._check_length("input", idx)
            hidden = self.encoder(self.embed(idx), cache=cache)
            return self.head(hidden if scored is None else hidden[scored])
        if decoder_idx is None:
            raise ValueError("an encoder-decoder model needs `decoder_idx`")
        return self.decode(decoder_idx, self.encode(idx), cache)

    def encode(self, idx: Tensor) -> Tensor:
        """The encoder's output for `idx`: what the decoder attends to (T5)."""
        self._check_length("input", idx)
        return self.encoder(self.embed(idx))

    def decode(self, decoder_idx: Tensor, memory: Tensor, cache: StackCache | None = None) -> Tensor:
        """The decoder's logits for `decoder_idx`, attending to the encoder output `memory` (T5). With a `cache`,
        the encoder's keys/values are computed at the first call and reused after."""
        if self.decoder is None:
            raise ValueError("decode() needs an encoder-decoder model (backbone.n_decoder_layer > 0)")
        self._check_length("decoder input", decoder_idx)
        return self.head(self.decoder(self.embed(decoder_idx), context=memory, cache=cache))

    def _check_length(self, name: str, ids: Tensor) -> None:
        if ids.size(1) > self.config.max_seq_len:
            raise ValueError(f"{name} has {ids.size(1)} tokens, more than max_seq_len={self.config.max_seq_len}")

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """Continue `idx` (B, T) token by token; greedy when `temperature` is 0. Causal decoder-only models.

        Recomputes the whole (cropped) context at every step: short samples during training. lmpre.inference
        decodes with a KV cache, top-p and seeded generators."""
        if not self.config.causal or self.decoder is not None:
            raise ValueError("generate() samples from a causal decoder-only model")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.max_seq_len :])[:, -1, :]
            if temperature == 0:
                idx = torch.cat((idx, logits.argmax(dim=-1, keepdim=True)), dim=1)
                continue
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), 1)), dim=1)
        return idx
