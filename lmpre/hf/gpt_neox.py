"""GPT-NeoX (`GPTNeoXForCausalLM`): RoPE with LayerNorm and a GELU (`gelu_new`) MLP, sequential residuals.

transformers' GPT-NeoX fuses query, key and value per head ([q, k, v] of head 0, then of head 1, …) and always has
LayerNorm and MLP biases (zeros for a backbone without them); `attention_bias` follows the backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lmpre.hf.adapter import Adapter, StateDict, Task, bias_or_zeros, drop_biases
from lmpre.models import TransformerConfig


class GPTNeoX(Adapter):
    model_type = "gpt_neox"
    architecture = "GPTNeoXForCausalLM"
    task: ClassVar[Task] = "causal"
    requires: ClassVar[Mapping[str, Any]] = {"position": "rope", "norm": "layernorm", "mlp": "gelu", "qk_norm": False}

    def hf_config(self, config: TransformerConfig, special_tokens: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "intermediate_size": config.d_ff,
            "hidden_act": "gelu_new",
            "max_position_embeddings": config.max_seq_len,
            "layer_norm_eps": config.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base, "partial_rotary_factor": 1.0},
            "use_parallel_residual": False,
            "attention_bias": config.bias,
            "attention_dropout": config.dropout,
            "hidden_dropout": config.dropout,
            "tie_word_embeddings": config.tie_embeddings,
            "bos_token_id": special_tokens.get("eot"),
            "eos_token_id": special_tokens.get("eot"),
            "pad_token_id": special_tokens.get("pad"),
        }

    def _fuse(self, q: Tensor, kv: Tensor, config: TransformerConfig) -> Tensor:
        """[q; k; v] (3 d_model, …) to GPT-NeoX's per-head order: (n_head, 3, head_dim, …) flattened."""
        k, v = kv.chunk(2)
        qkv = torch.stack([z.reshape(config.n_head, config.head_dim, *z.shape[1:]) for z in (q, k, v)], dim=1)
        return qkv.reshape(3 * config.d_model, *q.shape[1:])

    def _split(self, qkv: Tensor, config: TransformerConfig) -> tuple[Tensor, Tensor]:
        """The inverse of `_fuse`: (q, kv)."""
        per_head = qkv.reshape(config.n_head, 3, config.head_dim, *qkv.shape[1:])
        q, k, v = (per_head[:, i].reshape(config.d_model, *qkv.shape[1:]) for i in range(3))
        return q, torch.cat((k, v))

    def to_hf(self, state: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        out = {"gpt_neox.embed_in.weight": state["embed.weight"]}
        for i in range(config.n_layer):
            ours, theirs = f"encoder.blocks.{i}.", f"gpt_neox.layers.{i}."
            q, kv, up = state[ours + "attn.q.weight"], state[ours + "attn.kv.weight"], state[ours + "mlp.up.weight"]

            def bias(key: str, like: Tensor, ours: str = ours) -> Tensor:
                return bias_or_zeros(state, ours + key, like)

            out |= {
                theirs + "input_layernorm.weight": state[ours + "attn_norm.weight"],
                theirs + "input_layernorm.bias": bias("attn_norm.bias", q),
                theirs + "attention.query_key_value.weight": self._fuse(q, kv, config),
                theirs + "attention.dense.weight": state[ours + "attn.proj.weight"],
                theirs + "post_attention_layernorm.weight": state[ours + "mlp_norm.weight"],
                theirs + "post_attention_layernorm.bias": bias("mlp_norm.bias", q),
                theirs + "mlp.dense_h_to_4h.weight": up,
                theirs + "mlp.dense_h_to_4h.bias": bias("mlp.up.bias", up),
                theirs + "mlp.dense_4h_to_h.weight": state[ours + "mlp.proj.weight"],
                theirs + "mlp.dense_4h_to_h.bias": bias("mlp.proj.bias", q),
            }
            if config.bias:
                out[theirs + "attention.query_key_value.bias"] = self._fuse(
                    state[ours + "attn.q.bias"], state[ours + "attn.kv.bias"], config
                )
                out[theirs + "attention.dense.bias"] = state[ours + "attn.proj.bias"]
        out["gpt_neox.final_layer_norm.weight"] = state["encoder.norm.weight"]
        out["gpt_neox.final_layer_norm.bias"] = bias_or_zeros(state, "encoder.norm.bias", state["encoder.norm.weight"])
        if not config.tie_embeddings:
            out["lm_head.weight"] = state["head.weight"]
        return out

    def from_hf(self, weights: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        state = {"embed.weight": weights["gpt_neox.embed_in.weight"]}
        for i in range(config.n_layer):
            ours, theirs = f"encoder.blocks.{i}.", f"gpt_neox.layers.{i}."
            q, kv = self._split(weights[theirs + "attention.query_key_value.weight"], config)
            state |= {
                ours + "attn_norm.weight": weights[theirs + "input_layernorm.weight"],
                ours + "attn_norm.bias": weights[theirs + "input_layernorm.bias"],
                ours + "attn.q.weight": q,
                ours + "attn.kv.weight": kv,
                ours + "attn.proj.weight": weights[theirs + "attention.dense.weight"],
                ours + "mlp_norm.weight": weights[theirs + "post_attention_layernorm.weight"],
                ours + "mlp_norm.bias": weights[theirs + "post_attention_layernorm.bias"],
                ours + "mlp.up.weight": weights[theirs + "mlp.dense_h_to_4h.weight"],
                ours + "mlp.up.bias": weights[theirs + "mlp.dense_h_to_4h.bias"],
                ours + "mlp.proj.weight": weights[theirs + "mlp.dense_4h_to_h.weight"],
                ours + "mlp.proj.bias": weights[theirs + "mlp.dense_4h_to_h.bias"],
            }
            if config.bias:
                q_bias, kv_bias = self._split(weights[theirs + "attention.query_key_value.bias"], config)
                state |= {ours + "attn.q.bias": q_bias, ours + "attn.kv.bias": kv_bias}
                state[ours + "attn.proj.bias"] = weights[theirs + "attention.dense.bias"]
        state["encoder.norm.weight"] = weights["gpt_neox.final_layer_norm.weight"]
        state["encoder.norm.bias"] = weights["gpt_neox.final_layer_norm.bias"]
        state["head.weight"] = weights.get("lm_head.weight", state["embed.weight"])
        return drop_biases(state, config)
