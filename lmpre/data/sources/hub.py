"""A dataset of the Hugging Face Hub, read from its Parquet files: downloaded once into the Hub's own cache."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

from huggingface_hub import snapshot_download

from lmpre.data.document import SPLITS, Document
from lmpre.data.sources.base import Source, WorkUnit
from lmpre.data.sources.parquet import check_batch_rows, read_rows, row_group_units
from lmpre.errors import DataError

DEFAULT_SPLIT_MAP = {"train": "train", "validation": "val", "test": "test"}


class HubDataset(Source):
    """The Parquet files of a Hub dataset (`owner/name`), one document per row of `text_field`.

    `config` is the dataset's subfolder (e.g. `wikitext-103-raw-v1`); `split_map` maps the Hub's split names, read
    from the file paths (`train-00000-of-00002.parquet`, `default/validation/0000.parquet`), to lmpre's splits;
    files of splits it does not name are left out. A dataset of a single split leaves `split` None, so the
    pipeline holds documents out by hash. `revision` pins a branch, tag or commit; the commit read is part of
    `settings()`, so a new upload rebuilds. `path`, when set, is a local copy of the dataset's files instead.
    """

    patterns = ("*.parquet",)

    def __init__(
        self,
        dataset: str | None = None,
        *,
        config: str | None = None,
        split_map: Mapping[str, str] | None = None,
        text_field: str = "text",
        revision: str | None = None,
        batch_rows: int = 1024,
        path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, **kwargs)
        self.dataset = dataset
        self.config = config
        self.split_map = dict(DEFAULT_SPLIT_MAP if split_map is None else split_map)  # a plain dict, even from Hydra
        self.text_field = text_field
        self.revision = revision
        self.batch_rows = batch_rows
        self._root: Path | None = None  # the snapshot, once resolved
        self._splits: dict[Path, str | None] | None = None  # each file read, and the split it says

    def check(self) -> None:
        super().check()
        if not self.dataset and not self.path:
            raise self._no_dataset()
        unknown = {hub: split for hub, split in self.split_map.items() if split not in SPLITS}
        if unknown:
            raise DataError(
                f"{self.setting}.split_map maps {unknown} to splits lmpre does not have: use {', '.join(SPLITS)}."
            )
        check_batch_rows(self.batch_rows, self.setting)

    def settings(self) -> dict[str, Any]:
        """The commit of the snapshot read (its folder name in the Hub's cache) joins the settings."""
        root = self._snapshot()
        return {**super().settings(), "commit": None if self.path else root.name}

    def files(self) -> list[Path]:
        return sorted(self._file_splits())

    def split_files(self) -> dict[str, list[Path]]:
        files: dict[str, list[Path]] = {}
        for path, split in sorted(self._file_splits().items()):
            files.setdefault(split or "", []).append(path)
        return files

    def work_units(self) -> list[WorkUnit]:
        return row_group_units(self.files(), self.setting)

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        path = Path(unit.path)
        name = path.relative_to(self._snapshot()).as_posix()  # split folders repeat file names: 0000.parquet
        split = self._file_splits()[path]
        yield from read_rows(self, unit, stats, {"text_field": self.text_field}, self.batch_rows, name, split)

    def _snapshot(self) -> Path:
        """The local folder of the dataset's files: downloaded (or found in the cache) once per source."""
        if self._root is None:
            self._root = _local_copy(self.path, self.setting) if self.path else self._download()
        return self._root

    def _download(self) -> Path:
        if not self.dataset:
            raise self._no_dataset()
        what = f"{self.dataset} ({self.config})" if self.config else self.dataset
        try:
            return Path(
                snapshot_download(
                    repo_id=self.dataset,
                    repo_type="dataset",
                    revision=self.revision,
                    allow_patterns=f"{self.config}/*.parquet" if self.config else "*.parquet",
                )
            ).resolve()
        except Exception as err:  # offline, HF_HUB_OFFLINE=1 with nothing cached, no such repo: one remedy for all
            raise DataError(
                f"Downloading {what} from the Hugging Face Hub failed: {type(err).__name__}: "
                f"{str(err).rstrip('.')}.\nWithout network, pass data.source=PATH with a local copy (JSONL, Parquet "
                "or text)."
            ) from err

    def _no_dataset(self) -> DataError:
        return DataError(f"{self.setting}.dataset is not set: name a Hub dataset, e.g. Salesforce/wikitext.")

    def _file_splits(self) -> dict[Path, str | None]:
        """The Parquet files to read and the lmpre split of each (None for all when there is one split)."""
        if self._splits is None:
            root = self._snapshot()
            folder = root / self.config if self.config else root  # the cache keeps other configs' files beside it
            files = sorted(path for path in folder.rglob("*.parquet") if path.is_file())
            if not files:
                hint = f"check {self.setting}.config, or " if self.config else ""
                raise DataError(
                    f"{self.dataset or self.path} has no Parquet files{f' in {self.config}/' if self.config else ''}: "
                    f"{hint}set {self.setting}.revision=refs/convert/parquet to read the Hub's Parquet conversion."
                )
            hub_splits = {path: hub_split(path.relative_to(folder), self.split_map) for path in files}
            named = {path: split for path, split in hub_splits.items() if split is not None}
            if len(set(named.values())) > 1:
                self._splits = {path: self.split_map[split] for path, split in named.items()}
            else:
                self._splits = dict.fromkeys(named or files)
        return self._splits


def hub_split(path: PurePath, names: Mapping[str, str]) -> str | None:
    """The split a Hub file belongs to: the first of `names` that is a word of its name or, failing that, of its
    folders' (nearest first), as the Hub itself reads `train-00000-of-00002.parquet` or `validation/0000.parquet`."""
    for part in reversed(path.with_suffix("").parts):
        for word in re.split(r"[^a-z]+", part.lower()):
            if word in names:
                return word
    return None


def _local_copy(path: str, setting: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{setting}.path={path} is not a directory: pass data.source=DIR with a local copy of the dataset's "
            "Parquet files."
        )
    return root.resolve()
