"""Pretraining objectives: thin LightningModules around the one backbone."""

from lmpre.objectives.base import IGNORE_INDEX, Prediction, PretrainingObjective
from lmpre.objectives.causal_lm import CausalLM
from lmpre.objectives.masked_lm import MaskedLM, mask_tokens
from lmpre.objectives.optim import AdamW, Muon, OptimizerConfig, Schedule
from lmpre.objectives.span_corruption import SpanCorruption

__all__ = [
    "IGNORE_INDEX",
    "AdamW",
    "CausalLM",
    "MaskedLM",
    "Muon",
    "OptimizerConfig",
    "Prediction",
    "PretrainingObjective",
    "Schedule",
    "SpanCorruption",
    "mask_tokens",
]
