"""Using a trained backbone: KV cache, sampling and decoding loops. Plain PyTorch: no Lightning, Hydra or data."""

from lmpre.inference.generate import generate, masked_candidates
from lmpre.inference.kv_cache import BlockCache, KVCache
from lmpre.inference.sampling import Sampler, filter_logits

__all__ = ["BlockCache", "KVCache", "Sampler", "filter_logits", "generate", "masked_candidates"]
