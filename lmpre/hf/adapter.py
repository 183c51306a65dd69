"""What every transformers family adapter says: which backbones it can hold, its config, and a weight map both ways.

A backbone exports to the first family of its task (causal LM, masked LM, encoder-decoder) whose fixed options it
has; the others are data in `requires`. A backbone no family fits is a `ConfigError` naming the options to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lmpre.errors import ConfigError
from lmpre.models import TransformerConfig

Task = Literal["causal", "masked", "seq2seq"]
StateDict = dict[str, Tensor]

AUTO_CLASSES: dict[Task, str] = {
    "causal": "AutoModelForCausalLM",
    "masked": "AutoModelForMaskedLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


def task_of(config: TransformerConfig) -> Task:
    if config.n_decoder_layer:
        return "seq2seq"
    return "causal" if config.causal else "masked"


class Adapter:
    """One transformers family: `model_type` and `architecture` as transformers names them."""

    model_type: ClassVar[str]
    architecture: ClassVar[str]
    task: ClassVar[Task]
    requires: ClassVar[Mapping[str, Any]]  # backbone fields the transformers class fixes, with their values

    @property
    def auto_class(self) -> str:
        return AUTO_CLASSES[self.task]

    def mismatches(self, config: TransformerConfig) -> list[str]:
        """The overrides that would make `config` fit this family; empty when it fits."""
        return [f"model.backbone.{k}={_yaml(v)}" for k, v in self.requires.items() if getattr(config, k) != v]

    def hf_config(self, config: TransformerConfig, special_tokens: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the transformers config class."""
        raise NotImplementedError

    def to_hf(self, state: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        """transformers' weights from the backbone's state dict (keys without the objective's `model.`)."""
        raise NotImplementedError

    def from_hf(self, weights: Mapping[str, Tensor], config: TransformerConfig) -> StateDict:
        """The backbone's state dict from transformers' weights: the inverse of `to_hf`."""
        raise NotImplementedError


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def bias_or_zeros(state: Mapping[str, Tensor], key: str, like: Tensor) -> Tensor:
    """`state[key]`, or zeros where the backbone has no bias (bias=false) and the transformers class always has one."""
    found = state.get(key)
    return found if found is not None else torch.zeros(like.size(0), dtype=like.dtype)


def drop_biases(state: StateDict, config: TransformerConfig) -> StateDict:
    """Without `bias`, the backbone has no bias parameters: drop the zeros `bias_or_zeros` exported."""
    if config.bias:
        return state
    return {k: v for k, v in state.items() if not k.endswith(".bias")}


def choose(adapters: tuple[Adapter, ...], config: TransformerConfig) -> Adapter:
    """The first adapter of `config`'s task that fits it; otherwise a ConfigError naming, for each family of the
    task, the overrides that would make the backbone fit it (fewest first)."""
    task = task_of(config)
    candidates = [a for a in adapters if a.task == task]
    for adapter in candidates:
        if not adapter.mismatches(config):
            return adapter
    if not candidates:
        raise ConfigError(f"no transformers class is known for a {task} backbone")
    options = sorted(candidates, key=lambda a: len(a.mismatches(config)))
    ways = "; or ".join(f"{' '.join(a.mismatches(config))} ({a.architecture})" for a in options)
    described = ", ".join(f"{k}={_yaml(getattr(config, k))}" for k in sorted({k for a in options for k in a.requires}))
    raise ConfigError(f"no transformers class matches this {task} backbone ({described}): train with {ways}")
