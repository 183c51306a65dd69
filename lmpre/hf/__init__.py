"""Export to Hugging Face transformers and load such an export back: one adapter per transformers family.

Plain PyTorch, like `lmpre.models`: never imports Lightning, Hydra or `lmpre.data`; `transformers` only to write.
"""

from lmpre.hf.adapter import Adapter, task_of
from lmpre.hf.layout import ADAPTERS, adapter_for, export, load, load_model, special_tokens

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "export", "load", "load_model", "special_tokens", "task_of"]
