"""Raw text -> documents -> byte-level BPE -> litdata token shards -> Lightning batches."""

from typing import Any

from lmpre.data.pipeline import DataConfig, prepare_dataset, read_manifest
from lmpre.data.tokenizer import SPECIAL_TOKENS, special_token_ids

__all__ = ["SPECIAL_TOKENS", "DataConfig", "TokenDataModule", "prepare_dataset", "read_manifest", "special_token_ids"]


def __getattr__(name: str) -> Any:
    # TokenDataModule is imported on first use: litdata's spawned tokenization workers import this package,
    # and importing Lightning there would add about two seconds to every preparation.
    if name == "TokenDataModule":
        from lmpre.data.datamodule import TokenDataModule

        return TokenDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
