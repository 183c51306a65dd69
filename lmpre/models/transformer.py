"""The one transformer backbone behind every objective.

Read top to bottom it is the architecture: config → norm → rotary positions → attention → MLP →
block → stack → model. A decoder-only GPT, a bidirectional BERT encoder and a T5 encoder-decoder
are the same `Block`: causal or not, with or without cross-attention. Differences between models
are config fields, never subclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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
    position: Literal["learned", "rope"] = "learned"
    rope_base: float = 10_000.0
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
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

    def forward(self, x: Tensor) -> Tensor:  # x: (B, H, T, D)
        t = x.size(-2)
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, cross-attention otherwise."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.q = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(
        self, x: Tensor, *, causal: bool, context: Tensor | None = None, rope: RotaryEmbedding | None = None
    ) -> Tensor:
        b, t, d = x.shape
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        q, k, v = (z.view(b, -1, self.n_head, d // self.n_head).transpose(1, 2) for z in (self.q(x), k, v))
        if rope is not None:
            q, k = rope(q), rope(k)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


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

    def forward(self, x: Tensor, context: Tensor | None = None, rope: RotaryEmbedding | None = None) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), causal=self.causal, rope=rope))
        if self.cross is not None and self.cross_norm is not None:
            if context is None:
                raise ValueError("a block with cross-attention needs the encoder output as `context`")
            x = x + self.dropout(self.cross(self.cross_norm(x), causal=False, context=context))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Stack(nn.Module):
    """Positions + blocks + final norm over token embeddings: an encoder, or a decoder when causal."""

    def __init__(self, config: TransformerConfig, n_layer: int, *, causal: bool, cross_attention: bool) -> None:
        super().__init__()
        self.pos = nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        self.rope = RotaryEmbedding(config) if config.position == "rope" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, causal=causal, cross_attention=cross_attention) for _ in range(n_layer)
        )
        self.norm = make_norm(config)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.pos is not None:
            x = x + self.pos(torch.arange(x.size(1), device=x.device))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, context, self.rope)
        return self.norm(x)


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

    def forward(self, idx: Tensor, decoder_idx: Tensor | None = None) -> Tensor:
        """Logits for `idx` (GPT, BERT), or for `decoder_idx` given `idx` as encoder input (T5)."""
        for name, ids in (("input", idx), ("decoder input", decoder_idx)):
            if ids is not None and ids.size(1) > self.config.max_seq_len:
                raise ValueError(f"{name} has {ids.size(1)} tokens, more than max_seq_len={self.config.max_seq_len}")
        hidden = self.encoder(self.embed(idx))
        if self.decoder is not None:
            if decoder_idx is None:
                raise ValueError("an encoder-decoder model needs `decoder_idx`")
            hidden = self.decoder(self.embed(decoder_idx), context=hidden)
        return self.head(hidden)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
        """Continue `idx` (B, T) token by token; greedy when `temperature` is 0. Causal decoder-only models."""
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
