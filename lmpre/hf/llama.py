"""Llama (`LlamaForCausalLM`) and its bidirectional encoder twin EuroBERT (`EuroBertForMaskedLM`): RoPE, RMSNorm,
SwiGLU, optional biases.

transformers' Llama rotates the two halves of each head, as the backbone does, so query and key weights map as
they are; the backbone's fused [gate, up] projection splits into `gate_proj` and `up_proj`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lmpre.hf.adapter import Adapter, StateDict, Task
from lmpre.models import TransformerConfig

# (backbone, transformers) names of the per-layer weights that map one to one
_SAME = (
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn.q", "self_attn.q_proj"),
    ("attn.proj", "self_attn.o_proj"),
    ("mlp_norm.weight", "post_attention_layernorm.weight"),
    ("mlp.proj", "mlp.down_proj"),
)


def _pairs(config: TransformerConfig) -> list[tuple[str, str]]:
    kinds = ("weight", "bias") if config.bias else ("weight",)
    pairs = []
    for ours, theirs in _SAME:
        if ours.endswith(".weight"):
            pairs.append((ours, theirs))
        else:
            pairs += [(f"{ours}.{kind}", f"{theirs}.{kind}") for kind in kinds]
    return pairs


class Llama(Adapter):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    task: ClassVar[Task] = "causal"
    requires: ClassVar[Mapping[str, Any]] = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False}
    prefix = "model."  # of the base model's weights inside the task class
    head_bias = False  # the output layer has a bias when the backbone's linear layers do

    def hf_config(self, config: TransformerConfig, special_tokens: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "intermediate_size": config.d_ff,
            "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head,
            "num_key_value_heads": config.n_head,
            "head_dim": config.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": config.max_seq_len,
            "rms_norm_eps": config.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
            "attention_bias": config.bias,
            "mlp_bias": config.bias,
            "attention_dropout": config.dropout,
            "tie_word_embeddings": config.tie_embeddings,
            "bos_token_id": special_tokens.get("eot"),
            "eos_token_id": special_tokens.get("eot"),
            "pad_token_id": special_tokens.get("pad"),
        }

    def to_hf(self, state: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        p = self.prefix
        out = {f"{p}embed_tokens.weight": state["embed.weight"], f"{p}norm.weight": state["encoder.norm.weight"]}
        kinds = ("weight", "bias") if config.bias else ("weight",)
        for i in range(config.n_layer):
            ours, theirs = f"encoder.blocks.{i}.", f"{p}layers.{i}."
            out |= {theirs + t: state[ours + o] for o, t in _pairs(config)}
            for kind in kinds:
                k, v = state[f"{ours}attn.kv.{kind}"].chunk(2)
                gate, up = state[f"{ours}mlp.up.{kind}"].chunk(2)
                out |= {
                    f"{theirs}self_attn.k_proj.{kind}": k,
                    f"{theirs}self_attn.v_proj.{kind}": v,
                    f"{theirs}mlp.gate_proj.{kind}": gate,
                    f"{theirs}mlp.up_proj.{kind}": up,
                }
        if not config.tie_embeddings:
            out["lm_head.weight"] = state["head.weight"]
        if self.head_bias and config.bias:
            out["lm_head.bias"] = torch.zeros(config.vocab_size, dtype=state["embed.weight"].dtype)
        return out

    def from_hf(self, weights: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        p = self.prefix
        state = {"embed.weight": weights[f"{p}embed_tokens.weight"], "encoder.norm.weight": weights[f"{p}norm.weight"]}
        kinds = ("weight", "bias") if config.bias else ("weight",)
        for i in range(config.n_layer):
            ours, theirs = f"encoder.blocks.{i}.", f"{p}layers.{i}."
            state |= {ours + o: weights[theirs + t] for o, t in _pairs(config)}
            for kind in kinds:
                state[f"{ours}attn.kv.{kind}"] = torch.cat(
                    (weights[f"{theirs}self_attn.k_proj.{kind}"], weights[f"{theirs}self_attn.v_proj.{kind}"])
                )
                state[f"{ours}mlp.up.{kind}"] = torch.cat(
                    (weights[f"{theirs}mlp.gate_proj.{kind}"], weights[f"{theirs}mlp.up_proj.{kind}"])
                )
        state["head.weight"] = weights.get("lm_head.weight", state["embed.weight"])
        return state


class EuroBert(Llama):
    """EuroBERT is Llama's layers attending both ways, with the output layer right after the final norm."""

    model_type = "eurobert"
    architecture = "EuroBertForMaskedLM"
    task: ClassVar[Task] = "masked"
    head_bias = True  # transformers gives EuroBERT's lm_head a bias when mlp_bias is set

    def hf_config(self, config: TransformerConfig, special_tokens: Mapping[str, Any]) -> dict[str, Any]:
        return super().hf_config(config, special_tokens) | {"mask_token_id": special_tokens["mask"]}
