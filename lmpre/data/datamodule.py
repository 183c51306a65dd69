"""Prepared text as fixed-length token windows for Lightning, streamed by litdata and resumable mid-epoch."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, TokensLoader
from tokenizers import Tokenizer

from lmpre.data.pipeline import MANIFEST, TOKENIZER, DataConfig, prepare_dataset
from lmpre.data.sources.wikitext import DEFAULT_SPLITS, PREPARED_SPLITS
from lmpre.data.tokenizer import SpecialTokens, special_token_ids
from lmpre.errors import DataError


class TokenDataModule(L.LightningDataModule):
    """Windows of `window` consecutive tokens from the packed train/val streams, as [batch_size, window] longs.

    `window` is `seq_len + 1` (inputs plus shifted targets for causal LM); other objectives set it before
    `setup()`. The train loader is a StreamingDataLoader, so Lightning checkpoints restore it mid-epoch.
    """

    def __init__(
        self,
        source: str | None = None,
        splits: Mapping[str, str] | None = None,
        format: str = "wikitext",
        vocab_size: int = 8192,
        hub_repo: str = "Salesforce/wikitext",
        hub_config: str = "wikitext-103-raw-v1",
        output_dir: str | None = None,
        cache_dir: str = "~/.cache/lmpre",
        seq_len: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.config = DataConfig(
            source=source,
            splits={**DEFAULT_SPLITS, **{str(split): str(name) for split, name in (splits or {}).items()}},
            format=format,
            vocab_size=vocab_size,
            hub_repo=hub_repo,
            hub_config=hub_config,
        )
        self.output_dir = Path(output_dir).expanduser() if output_dir else None
        self.cache_dir = Path(cache_dir).expanduser()
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.window = seq_len + 1
        self.datasets: dict[str, StreamingDataset] = {}
        self._prepared_dir: Path | None = None
        self._tokenizer: Tokenizer | None = None
        self._manifest: dict[str, Any] | None = None

    def prepare_data(self) -> None:
        """Build the tokenizer and shards unless an identical preparation exists (locked: safe on every rank)."""
        self._prepared_dir = prepare_dataset(self.config, self.cache_dir, self.output_dir)

    @property
    def prepared_dir(self) -> Path:
        """The prepared directory; prepares on first use, so ranks that skipped `prepare_data` find it too."""
        if self._prepared_dir is None:
            self.prepare_data()
        assert self._prepared_dir is not None
        return self._prepared_dir

    @property
    def manifest(self) -> dict[str, Any]:
        """What the prepared data holds: its config, source files, counts per split and tokenizer facts.

        Read once: a training keeps the facts of the data it started with."""
        if self._manifest is None:
            self._manifest = json.loads((self.prepared_dir / MANIFEST).read_text())
        return self._manifest

    @property
    def provenance(self) -> dict[str, str]:
        """Which prepared data a run reads: recorded in its checkpoints and compared on resume."""
        return {
            "data_key": self.prepared_dir.name,
            "tokenizer_sha256": self.manifest["tokenizer"]["sha256"],
            "prepared_dir": str(self.prepared_dir),
        }

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_file(str(self.prepared_dir / TOKENIZER))
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The trained vocabulary's size (at most the requested `vocab_size`)."""
        return self.tokenizer.get_vocab_size()

    @property
    def special_tokens(self) -> SpecialTokens:
        return special_token_ids(self.tokenizer)

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of val text per val token: converts loss in nats/token to bits per byte."""
        val = self.manifest["splits"]["val"]
        return val["bytes"] / val["tokens"]

    def setup(self, stage: str | None = None) -> None:
        for split in PREPARED_SPLITS:
            if split not in self.datasets:
                self.datasets[split] = self._windows(split)

    def train_dataloader(self) -> StreamingDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> StreamingDataLoader:
        return self._loader("val")

    def _windows(self, split: str) -> StreamingDataset:
        dataset = StreamingDataset(
            input_dir=str(self.prepared_dir / split),
            item_loader=TokensLoader(block_size=self.window),
            shuffle=split == "train",
            seed=self.seed,
            drop_last=True,
        )
        if len(dataset) == 0:
            tokens = self.manifest["splits"][split]["tokens"]
            raise DataError(
                f"The {split} split has {tokens} tokens, fewer than one window of {self.window} "
                f"(data.seq_len={self.seq_len}): lower data.seq_len or add text to the split."
            )
        return dataset

    def _loader(self, split: str) -> StreamingDataLoader:
        return StreamingDataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=stack_windows,
        )


def stack_windows(windows: list[np.ndarray]) -> torch.Tensor:
    """Collate uint16/int32 windows into one int64 tensor, the dtype embeddings and losses take."""
    return torch.from_numpy(np.stack(windows).astype(np.int64))
