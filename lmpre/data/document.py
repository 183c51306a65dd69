"""The one type that sources yield, filters judge and shards pack."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Document:
    """One unit of text, ended by <|endoftext|> in the shards.

    `split` is set by sources whose files already say it (WikiText's valid/test files, a character-level
    hold-out); None lets the pipeline hold documents out by the hash of their text (`holdout_split`).
    """

    text: str
    id: str  # stable within its source: a file name, an article title, a line number
    source: str = ""  # the name of the source in the data config
    split: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def text_hash(text: str) -> bytes:
    """16 bytes that identify a text: the key of exact deduplication and of hash hold-outs."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def holdout_split(text: str, val_fraction: float, test_fraction: float) -> str:
    """Train, val or test, decided by the text alone: the same document lands in the same split on every run and
    every machine, without loading the corpus to shuffle it."""
    position = int.from_bytes(text_hash(text)[:8], "big") / 2**64
    if position < val_fraction:
        return "val"
    if position < val_fraction + test_fraction:
        return "test"
    return "train"
