"""Sources -> documents (cleaned, filtered, deduplicated) -> tokenizer -> litdata shards -> Lightning batches."""

from typing import Any

from lmpre.data.document import Document
from lmpre.data.pipeline import DataRecipe, prepare_dataset, read_manifest
from lmpre.data.tokenizer import SPECIAL_TOKENS, TokenizerSpec, special_token_ids

__all__ = [
    "SPECIAL_TOKENS",
    "DataRecipe",
    "Document",
    "TokenDataModule",
    "TokenizerSpec",
    "prepare_dataset",
    "read_manifest",
    "special_token_ids",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: preparation's worker processes import this package, and importing Lightning there
    # would add seconds to every preparation.
    if name == "TokenDataModule":
        from lmpre.data.datamodule import TokenDataModule

        return TokenDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
