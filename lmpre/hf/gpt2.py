"""GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, tanh-approximated GELU (`gelu_new`), biases.

transformers' GPT-2 keeps its linear layers as `Conv1D`, whose weight is the transpose of `nn.Linear`'s, and fuses
the query, key and value projections into one `c_attn`. It always has biases: a backbone without them exports zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lmpre.hf.adapter import Adapter, StateDict, Task, bias_or_zeros, drop_biases
from lmpre.models import TransformerConfig


class GPT2(Adapter):
    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    task: ClassVar[Task] = "causal"
    requires: ClassVar[Mapping[str, Any]] = {
        "position": "learned",
        "norm": "layernorm",
        "mlp": "gelu",
        "qk_norm": False,
    }

    def hf_config(self, config: TransformerConfig, special_tokens: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.d_ff,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "tie_word_embeddings": config.tie_embeddings,
            "bos_token_id": special_tokens.get("eot"),
            "eos_token_id": special_tokens.get("eot"),
            "pad_token_id": special_tokens.get("pad"),
        }

    def to_hf(self, state: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        out = {"transformer.wte.weight": state["embed.weight"], "transformer.wpe.weight": state["encoder.pos.weight"]}
        for i in range(config.n_layer):
            ours, theirs = f"encoder.blocks.{i}.", f"transformer.h.{i}."

            def bias(key: str, like: Tensor, ours: str = ours) -> Tensor:
                return bias_or_zeros(state, ours + key, like)

            q, kv = state[ours + "attn.q.weight"], state[ours + "attn.kv.weight"]
            qkv = torch.cat((q, kv))
            out |= {
                theirs + "ln_1.weight": state[ours + "attn_norm.weight"],
                theirs + "ln_1.bias": bias("attn_norm.bias", q),
                theirs + "attn.c_attn.weight": qkv.T,
                theirs + "attn.c_attn.bias": torch.cat((bias("attn.q.bias", q), bias("attn.kv.bias", kv))),
                theirs + "attn.c_proj.weight": state[ours + "attn.proj.weight"].T,
                theirs + "attn.c_proj.bias": bias("attn.proj.bias", q),
                theirs + "ln_2.weight": state[ours + "mlp_norm.weight"],
                theirs + "ln_2.bias": bias("mlp_norm.bias", q),
                theirs + "mlp.c_fc.weight": state[ours + "mlp.up.weight"].T,
                theirs + "mlp.c_fc.bias": bias("mlp.up.bias", state[ours + "mlp.up.weight"]),
                theirs + "mlp.c_proj.weight": state[ours + "mlp.proj.weight"].T,
                theirs + "mlp.c_proj.bias": bias("mlp.proj.bias", q),
            }
        out["transformer.ln_f.weight"] = state["encoder.norm.weight"]
        out["transformer.ln_f.bias"] = bias_or_zeros(state, "encoder.norm.bias", state["encoder.norm.weight"])
        if not config.tie_embeddings:
            out["lm_head.weight"] = state["head.weight"]
        return out

    def from_hf(self, weights: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        d = config.d_model
        state = {
            "embed.weight": weights["transformer.wte.weight"],
            "encoder.pos.weight": weights["transformer.wpe.weight"],
        }
        for i in range(config.n_layer):
            ours, theirs = f"encoder.blocks.{i}.", f"transformer.h.{i}."
            qkv, qkv_bias = weights[theirs + "attn.c_attn.weight"].T, weights[theirs + "attn.c_attn.bias"]
            state |= {
                ours + "attn_norm.weight": weights[theirs + "ln_1.weight"],
                ours + "attn_norm.bias": weights[theirs + "ln_1.bias"],
                ours + "attn.q.weight": qkv[:d],
                ours + "attn.q.bias": qkv_bias[:d],
                ours + "attn.kv.weight": qkv[d:],
                ours + "attn.kv.bias": qkv_bias[d:],
                ours + "attn.proj.weight": weights[theirs + "attn.c_proj.weight"].T,
                ours + "attn.proj.bias": weights[theirs + "attn.c_proj.bias"],
                ours + "mlp_norm.weight": weights[theirs + "ln_2.weight"],
                ours + "mlp_norm.bias": weights[theirs + "ln_2.bias"],
                ours + "mlp.up.weight": weights[theirs + "mlp.c_fc.weight"].T,
                ours + "mlp.up.bias": weights[theirs + "mlp.c_fc.bias"],
                ours + "mlp.proj.weight": weights[theirs + "mlp.c_proj.weight"].T,
                ours + "mlp.proj.bias": weights[theirs + "mlp.c_proj.bias"],
            }
        state["encoder.norm.weight"] = weights["transformer.ln_f.weight"]
        state["encoder.norm.bias"] = weights["transformer.ln_f.bias"]
        state["head.weight"] = weights.get("lm_head.weight", state["embed.weight"])
        return drop_biases(state, config)
