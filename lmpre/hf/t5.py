"""T5 (`T5ForConditionalGeneration`): relative position bias, RMSNorm, no biases; GELU (`gelu_new`) or SwiGLU
(`gated-silu`) feed-forward.

Two differences in arithmetic are folded into the weights: T5 does not scale query·key by 1/sqrt(head_dim) (the
query weights carry it), and with a tied output layer it scales the decoder's output by d_model**-0.5 (the final
decoder norm's weights carry the inverse). T5 keeps one relative bias table per stack in its first block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lmpre.hf.adapter import Adapter, StateDict, Task
from lmpre.models import TransformerConfig


class T5(Adapter):
    model_type = "t5"
    architecture = "T5ForConditionalGeneration"
    task: ClassVar[Task] = "seq2seq"
    requires: ClassVar[Mapping[str, Any]] = {
        "position": "relative_bias",
        "norm": "rmsnorm",
        "bias": False,
        "qk_norm": False,
    }

    def hf_config(self, config: TransformerConfig, special_tokens: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "vocab_size": config.vocab_size,
            "d_model": config.d_model,
            "d_kv": config.head_dim,
            "d_ff": config.d_ff,
            "num_layers": config.n_layer,
            "num_decoder_layers": config.n_decoder_layer,
            "num_heads": config.n_head,
            "relative_attention_num_buckets": config.relative_attention_num_buckets,
            "relative_attention_max_distance": config.relative_attention_max_distance,
            "dropout_rate": config.dropout,
            "layer_norm_epsilon": config.norm_eps,
            "feed_forward_proj": "gated-silu" if config.mlp == "swiglu" else "gelu_new",
            "tie_word_embeddings": config.tie_embeddings,
            "pad_token_id": special_tokens.get("pad"),
            "eos_token_id": special_tokens.get("eot"),
            "decoder_start_token_id": special_tokens.get("pad"),  # as SpanCorruption starts decoding
        }

    def _layers(self, config: TransformerConfig, stack: str, i: int) -> list[tuple[str, str]]:
        """(backbone, transformers) names of block `i`'s weights in `stack`, queries and MLP aside."""
        ours, theirs = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
        pairs = [(ours + "attn_norm.weight", theirs + "0.layer_norm.weight")]
        pairs += [(ours + "attn.proj.weight", theirs + "0.SelfAttention.o.weight")]
        if stack == "decoder":
            pairs += [(ours + "cross_norm.weight", theirs + "1.layer_norm.weight")]
            pairs += [(ours + "cross.proj.weight", theirs + "1.EncDecAttention.o.weight")]
        mlp = theirs + ("2." if stack == "decoder" else "1.")
        pairs += [(ours + "mlp_norm.weight", mlp + "layer_norm.weight")]
        pairs += [(ours + "mlp.proj.weight", mlp + "DenseReluDense.wo.weight")]
        return pairs

    def _attentions(self, stack: str, i: int) -> list[tuple[str, str]]:
        """(backbone, transformers) prefixes of block `i`'s attentions in `stack`."""
        ours, theirs = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
        found = [(ours + "attn.", theirs + "0.SelfAttention.")]
        if stack == "decoder":
            found.append((ours + "cross.", theirs + "1.EncDecAttention."))
        return found

    def _mlp(self, stack: str, i: int) -> tuple[str, str]:
        return f"{stack}.blocks.{i}.mlp.up.weight", f"{stack}.block.{i}.layer.{2 if stack == 'decoder' else 1}."

    def _stacks(self, config: TransformerConfig) -> list[tuple[str, int]]:
        return [("encoder", config.n_layer), ("decoder", config.n_decoder_layer)]

    def to_hf(self, state: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        scale = config.head_dim**-0.5
        out = {"shared.weight": state["embed.weight"]}
        for stack, n_layer in self._stacks(config):
            out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = state[
                f"{stack}.relative_bias.bias.weight"
            ]
            out[f"{stack}.final_layer_norm.weight"] = state[f"{stack}.norm.weight"]
            for i in range(n_layer):
                out |= {theirs: state[ours] for ours, theirs in self._layers(config, stack, i)}
                for ours, theirs in self._attentions(stack, i):
                    k, v = state[ours + "kv.weight"].chunk(2)
                    out |= {theirs + "q.weight": state[ours + "q.weight"] * scale, theirs + "k.weight": k}
                    out[theirs + "v.weight"] = v
                up, ff = self._mlp(stack, i)
                if config.mlp == "swiglu":
                    gate, linear = state[up].chunk(2)
                    out |= {ff + "DenseReluDense.wi_0.weight": gate, ff + "DenseReluDense.wi_1.weight": linear}
                else:
                    out[ff + "DenseReluDense.wi.weight"] = state[up]
        if config.tie_embeddings:
            out["decoder.final_layer_norm.weight"] = state["decoder.norm.weight"] * config.d_model**0.5
        else:
            out["lm_head.weight"] = state["head.weight"]
        return out

    def from_hf(self, weights: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        scale = config.head_dim**-0.5
        state = {"embed.weight": weights["shared.weight"]}
        for stack, n_layer in self._stacks(config):
            state[f"{stack}.relative_bias.bias.weight"] = weights[
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ]
            state[f"{stack}.norm.weight"] = weights[f"{stack}.final_layer_norm.weight"]
            for i in range(n_layer):
                state |= {ours: weights[theirs] for ours, theirs in self._layers(config, stack, i)}
                for ours, theirs in self._attentions(stack, i):
                    state[ours + "q.weight"] = weights[theirs + "q.weight"] / scale
                    state[ours + "kv.weight"] = torch.cat((weights[theirs + "k.weight"], weights[theirs + "v.weight"]))
                up, ff = self._mlp(stack, i)
                if config.mlp == "swiglu":
                    gate, linear = (
                        weights[ff + "DenseReluDense.wi_0.weight"],
                        weights[ff + "DenseReluDense.wi_1.weight"],
                    )
                    state[up] = torch.cat((gate, linear))
                else:
                    state[up] = weights[ff + "DenseReluDense.wi.weight"]
        if config.tie_embeddings:
            state["decoder.norm.weight"] = weights["decoder.final_layer_norm.weight"] / config.d_model**0.5
            state["head.weight"] = state["embed.weight"]
        else:
            state["head.weight"] = weights["lm_head.weight"]
        return state
