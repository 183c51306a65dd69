"""Prepared text as fixed-length token windows for Lightning, streamed by litdata and resumable mid-epoch;
several sources are mixed by weight as they are read (a weight change rebuilds nothing)."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, TokensLoader
from tokenizers import Tokenizer

from lmpre.data.dedup import Deduplication
from lmpre.data.filters import Filter
from lmpre.data.loader import ResumableStreamingDataLoader
from lmpre.data.pipeline import TOKENIZER, DataRecipe, prepare_dataset, read_manifest
from lmpre.data.remote import is_remote
from lmpre.data.sources import Source
from lmpre.data.tokenizer import SpecialTokens, TokenizerSpec, special_token_ids
from lmpre.errors import DataError

SHARE_LOG_STEPS = 50  # how often a mixture's drawn shares are logged


def window_offset(seed: int, epoch: int, index: int, window: int) -> int:
    """How many tokens after its fixed cut window `index` starts in `epoch`: in [0, window), a pure function of its
    arguments, so a resumed run draws the very offsets of an uninterrupted one."""
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode()) % window


class OffsetTokensLoader(TokensLoader):
    """litdata's TokensLoader, each window moved by `window_offset` tokens (within its chunk): every epoch sees
    other cuts of the text, as when examples start at random positions, instead of the same windows again.
    The last window of a chunk stays where it is (no tokens after it in the chunk)."""

    def __init__(self, block_size: int, seed: int) -> None:
        super().__init__(block_size=block_size)
        self.seed = seed
        self.epoch = 1  # set by SourceWindows from its dataset's epoch before each read

    def load_item_from_chunk(
        self, index: int, chunk_index: int, chunk_filepath: str, begin: int, filesize_bytes: int
    ) -> Any:
        window = super().load_item_from_chunk(index, chunk_index, chunk_filepath, begin, filesize_bytes)
        assert self._block_size
        blocks = int(self._chunks[int(chunk_index)]["dim"]) // self._block_size
        shift = window_offset(self.seed, self.epoch, index, self._block_size)
        if shift == 0 or index - begin + 1 >= blocks:
            return window
        after = super().load_item_from_chunk(index + 1, chunk_index, chunk_filepath, begin, filesize_bytes)
        return np.concatenate([window[shift:], after[:shift]])


# litdata accepts only the item loader class named in the chunks' index ("TokensLoader"): these are its chunks, read
# the same way, so the subclass goes by that name.
OffsetTokensLoader.__name__ = "TokensLoader"


class SourceWindows(StreamingDataset):
    """Windows of one source, tagged with the source's index so the mixture actually drawn can be counted."""

    def __init__(self, input_dir: str, source_index: int, **kwargs: Any) -> None:
        super().__init__(input_dir, **kwargs)
        self.source_index = source_index

    def __getitem__(self, index: Any) -> tuple[int, np.ndarray]:
        if isinstance(self.item_loader, OffsetTokensLoader):
            self.item_loader.epoch = self.current_epoch
        return self.source_index, super().__getitem__(index)


class TokenDataModule(L.LightningDataModule):
    """Windows of `window` consecutive tokens from the packed train/val streams, as [batch_size, window] longs.

    `window` is `seq_len + 1` (inputs plus shifted targets for causal LM); other objectives set it before
    `setup()`. The train loader is a StreamingDataLoader, so Lightning checkpoints restore it mid-epoch.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        source: str | None = None,
        filters: Mapping[str, Filter | None] | Sequence[Filter] | None = None,
        dedup: Deduplication | None = None,
        tokenizer: TokenizerSpec | Mapping[str, Any] | None = None,
        removed_examples: int = 0,
        output_dir: str | None = None,
        cache_dir: str = "~/.cache/lmpre",
        workers: int | None = None,
        seq_len: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 42,
        random_offsets: bool = False,
    ) -> None:
        super().__init__()
        sources = dict(sources)
        if source is not None:
            if len(sources) != 1:
                raise DataError(
                    f"data.source sets the path of a single-source data config, but this one mixes {len(sources)} "
                    f"sources: set data.sources.NAME.path for each of {', '.join(sources)} instead."
                )
            next(iter(sources.values())).path = source
        if isinstance(filters, Mapping):  # from Hydra: named, in order; a filter set to null is off
            filters = [f for f in filters.values() if f is not None]
        self.recipe = DataRecipe(
            sources=sources,
            filters=list(filters or []),
            dedup=dedup,
            tokenizer=tokenizer if isinstance(tokenizer, TokenizerSpec) else TokenizerSpec(**(tokenizer or {})),
            removed_examples=removed_examples,
        )
        # A local directory, or an s3:// prefix that the prepared data is published to and streamed from.
        self.output_dir = output_dir if is_remote(output_dir) else Path(output_dir).expanduser() if output_dir else None
        self.cache_dir = Path(cache_dir).expanduser()
        self.workers = workers
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.random_offsets = random_offsets
        self.window = seq_len + 1
        self.datasets: dict[str, StreamingDataset | CombinedStreamingDataset] = {}
        self.drawn: Counter[str] = Counter()  # train windows read per source
        self._prepared_dir: Path | None = None
        self._tokenizer: Tokenizer | None = None
        self._manifest: dict[str, Any] | None = None

    def check(self) -> None:
        """Raise on settings that cannot work, before any data is prepared."""
        self.recipe.check()

    def prepare_data(self) -> None:
        """Build what is missing of the prepared data (locked: safe on every rank); reuse the rest."""
        self._prepared_dir = prepare_dataset(self.recipe, self.cache_dir, self.output_dir, self.workers)

    @property
    def prepared_dir(self) -> Path:
        """The prepared directory; prepares on first use, so ranks that skipped `prepare_data` find it too."""
        if self._prepared_dir is None:
            self.prepare_data()
        assert self._prepared_dir is not None
        return self._prepared_dir

    @property
    def manifest(self) -> dict[str, Any]:
        """What the prepared data holds: settings, sources, counts per split, cleaning report, tokenizer facts.

        Read once: a training keeps the facts of the data it started with."""
        if self._manifest is None:
            manifest = read_manifest(self.prepared_dir)
            if manifest is None:
                raise DataError(f"{self.prepared_dir} holds no complete lmpre preparation: prepare it again.")
            self._manifest = manifest
        return self._manifest

    @property
    def provenance(self) -> dict[str, str]:
        """Which prepared data a run reads: recorded in its checkpoints and compared on resume."""
        return {
            "data_key": self.manifest["key"],
            "tokenizer_sha256": self.manifest["tokenizer"]["sha256"],
            "prepared_dir": self.shards_root,
        }

    @property
    def shards_root(self) -> str:
        """Where training streams the shards from: the prepared directory, or the object-storage copy of it."""
        return str(self.output_dir) if is_remote(self.output_dir) else str(self.prepared_dir)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_file(str(self.prepared_dir / TOKENIZER))
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size, special tokens included."""
        return self.tokenizer.get_vocab_size()

    @property
    def special_tokens(self) -> SpecialTokens:
        return special_token_ids(self.tokenizer)

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of val text per val token: converts loss in nats/token to bits per byte."""
        val = self.manifest["splits"]["val"]
        return float(val["bytes"] / val["tokens"])

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val"):
            if split not in self.datasets:
                self.datasets[split] = self._windows(split)

    def train_dataloader(self) -> StreamingDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> StreamingDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> StreamingDataLoader:
        if "test" not in self.datasets:
            self.datasets["test"] = self._windows("test")
        return self._loader("test")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> torch.Tensor:
        trainer = self.trainer  # None until Lightning attaches one
        if trainer is not None and trainer.training:
            names = list(self.manifest["sources"])
            self.drawn.update(names[i] for i in batch["source"].tolist())
            if len(names) > 1 and trainer.global_step % SHARE_LOG_STEPS == 0:
                total = sum(self.drawn.values())
                shares = {f"data/share/{name}": self.drawn[name] / total for name in names}
                for logger in trainer.loggers:
                    logger.log_metrics(shares, step=trainer.global_step)
        return batch["tokens"]

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": dict(self.drawn)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.drawn = Counter(state_dict.get("drawn", {}))

    def _windows(self, split: str) -> StreamingDataset | CombinedStreamingDataset:
        """Each source's windows of `split`; several sources are drawn by weight (train) or all read (val, test)."""
        datasets, weights = [], []
        for index, (name, facts) in enumerate(self.manifest["sources"].items()):
            if facts["splits"][split]["tokens"] < self.window:
                continue
            offsets = self.random_offsets and split == "train"
            datasets.append(
                SourceWindows(
                    f"{self.shards_root}/{name}/{split}",
                    index,
                    item_loader=OffsetTokensLoader(self.window, self.seed) if offsets else TokensLoader(self.window),
                    shuffle=split == "train",
                    seed=self.seed,
                    drop_last=split == "train",  # validation scores every window, the last batch too
                    cache_dir=self._stream_cache(name, split),
                )
            )
            weights.append(facts["weight"])
        if not datasets or not any(len(dataset) for dataset in datasets):
            tokens = self.manifest["splits"][split]["tokens"]
            raise DataError(
                f"The {split} split has {tokens} tokens, fewer than one window of {self.window} "
                f"(data.seq_len={self.seq_len}): lower data.seq_len or add text to the split."
            )
        if len(datasets) == 1:
            return datasets[0]
        if split == "train":
            return CombinedStreamingDataset(datasets, seed=self.seed, weights=weights, iterate_over_all=False)
        return CombinedStreamingDataset(datasets, seed=self.seed, iterate_over_all=True)

    def _stream_cache(self, name: str, split: str) -> str | None:
        """Where chunks streamed from object storage are kept (under data.cache_dir); local shards need none."""
        if not is_remote(self.output_dir):
            return None
        return str(self.cache_dir / "streams" / self.manifest["key"] / name / split)

    def _loader(self, split: str) -> StreamingDataLoader:
        return ResumableStreamingDataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=stack_windows,
        )


def stack_windows(items: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Collate windows into one int64 tensor (the dtype embeddings and losses take) and their source indices."""
    return {
        "tokens": torch.from_numpy(np.stack([window for _, window in items]).astype(np.int64)),
        "source": torch.from_numpy(np.array([index for index, _ in items])),
    }
