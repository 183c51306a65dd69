"""WikiText: raw `wiki.*.raw` files of whole Wikipedia articles, from the copy bundled with lmpre (WikiText-2),
a local directory, or the Hugging Face Hub (WikiText-103)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import snapshot_download

from lmpre.data.corpora import bundled
from lmpre.data.document import SPLITS, Document
from lmpre.data.sources.base import Source, WorkUnit, find_files, open_binary
from lmpre.errors import DataError

# Hub split name -> the raw file name it is materialized as (the names of the official WikiText release).
HUB_RAW_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
UNIT_BYTES = 8 * 2**20  # raw text per work unit of an uncompressed file: bounds worker memory on large files
# " = Title = " opens an article: exactly one "=" each side (" = = Section = = " lines stay inside the article).
_TITLE = r"^ = (?!=).*(?<!=) =\s*$"
_TITLE_LINE = re.compile(_TITLE)
_TITLE_LINE_BYTES = re.compile(_TITLE.encode())


class WikiText(Source):
    """Whole WikiText articles, split at their ` = Title = ` lines.

    `splits` maps train/val/test to file names or globs inside `path` (WikiText's own splits; test is
    optional); with `splits: null` every `*.raw` file is read and articles are held out by hash. Without
    `path`, `hub_repo`/`hub_config` are downloaded once, or else the WikiText-2 copy bundled with lmpre is read.
    """

    patterns = ("*.raw", "*.raw.xz", "*.raw.gz", "*.raw.bz2")

    def __init__(
        self,
        path: str | None = None,
        *,
        splits: Mapping[str, str] | None = None,
        hub_repo: str | None = None,
        hub_config: str | None = None,
        cache_dir: str = "~/.cache/lmpre",
        **kwargs: float | str,
    ) -> None:
        super().__init__(path, **kwargs)  # type: ignore[arg-type]
        self.splits = dict(splits) if splits else None
        self.hub_repo, self.hub_config = hub_repo, hub_config
        self._cache_dir = cache_dir  # private: where files come from is no part of what they hold

    def check(self) -> None:
        super().check()
        if self.splits is not None:
            for split in ("train", "val"):
                if split not in self.splits:
                    raise DataError(f"{self.setting}.splits has no {split} file: set {self.setting}.splits.{split}.")
            if unknown := set(self.splits) - set(SPLITS):
                raise DataError(f"{self.setting}.splits has unknown splits {sorted(unknown)}: use {', '.join(SPLITS)}.")

    def directory(self) -> Path:
        """Where the raw files are: `path`, the Hub download, or the bundled WikiText-2."""
        if self.path:
            return Path(self.path).expanduser()
        if self.hub_repo and self.hub_config:
            return download_wikitext(self.hub_repo, self.hub_config, Path(self._cache_dir).expanduser())
        return bundled("wikitext-2-raw")

    def split_files(self) -> dict[str, list[Path]]:
        """The files of each split; with hash hold-out, all files under the key "" (split decided per article)."""
        directory = self.directory()
        if self.splits is None:
            return {"": find_files(str(directory), self.patterns, self.setting)}
        if not directory.is_dir():
            raise DataError(
                f"data.source={directory} is not a directory. Pass data.source=DIR with a directory holding the "
                f"split files ({', '.join(self.splits.values())})."
            )
        files: dict[str, list[Path]] = {}
        for split, pattern in self.splits.items():
            matches = sorted(path.resolve() for path in directory.glob(pattern) if path.is_file())
            if not matches and split != "test":
                raise DataError(
                    f"No file for the {split} split: expected {directory / pattern}. Put it there, pass another "
                    f"directory with data.source=DIR, or another name with {self.setting}.splits.{split}=NAME."
                )
            files[split] = matches
        _refuse_overlap(files, self.setting)
        return files

    def files(self) -> list[Path]:
        return sorted({path for paths in self.split_files().values() for path in paths})

    def work_units(self) -> list[WorkUnit]:
        return [
            WorkUnit(str(path), start, end)
            for paths in self.split_files().values()
            for path in paths
            for start, end in article_ranges(path, UNIT_BYTES)
        ]

    def read(self, unit: WorkUnit, stats: Counter[str]) -> Iterator[Document]:
        path = Path(unit.path)
        split = self._split_of(path)
        with open_binary(path) as file:
            file.seek(unit.start)
            data = file.read() if unit.end is None else file.read(unit.end - unit.start)
        lines = self.decode(data, str(path), stats).removeprefix("\ufeff").replace("\r\n", "\n").split("\n")
        for number, article in enumerate(wikitext_articles(lines)):
            text = "\n".join(article).strip("\n")
            if text.strip():  # the blank lines before the first title are no article
                title = (
                    article[0].strip(" =") if _TITLE_LINE.match(article[0]) else f"{path.name}@{unit.start}:{number}"
                )
                yield self.document(text, title, split)

    def _split_of(self, path: Path) -> str | None:
        for split, paths in self.split_files().items():
            if path in paths:
                return split or None
        raise AssertionError(f"{path} belongs to no split")


def article_ranges(path: Path, target_bytes: int) -> list[tuple[int, int | None]]:
    """Byte ranges of about `target_bytes`, never inside an article; compressed files are read whole."""
    if path.suffix not in (".raw", ".txt"):
        return [(0, None)]
    ranges: list[tuple[int, int | None]] = []
    start = offset = 0
    with path.open("rb") as file:
        for line in file:
            if offset - start >= target_bytes and _TITLE_LINE_BYTES.match(line):
                ranges.append((start, offset))
                start = offset
            offset += len(line)
    ranges.append((start, None))
    return ranges


def wikitext_articles(lines: Iterable[str]) -> Iterator[list[str]]:
    """Group lines into articles, each starting at its top-level title line."""
    article: list[str] = []
    for line in lines:
        if _TITLE_LINE.match(line) and article:
            yield article
            article = []
        article.append(line)
    if article:
        yield article


def _refuse_overlap(files: dict[str, list[Path]], setting: str) -> None:
    """A file in two splits would let validation measure memorisation: say so instead of training on it."""
    seen: dict[Path, str] = {}
    for split, paths in files.items():
        for path in paths:
            if path in seen:
                raise DataError(
                    f"{path} is matched by both the {seen[path]} and the {split} split: make "
                    f"{setting}.splits.{seen[path]} and {setting}.splits.{split} name different files."
                )
            seen[path] = split


def download_wikitext(hub_repo: str, hub_config: str, cache_dir: Path) -> Path:
    """Materialize a WikiText config of the Hub as wiki.{train,valid,test}.raw once; returns their directory."""
    target = cache_dir / "raw" / hub_repo.replace("/", "--") / hub_config
    raw_files = {split: target / name for split, name in HUB_RAW_FILES.items()}
    if all(path.is_file() for path in raw_files.values()):
        return target
    try:
        snapshot = Path(snapshot_download(repo_id=hub_repo, repo_type="dataset", allow_patterns=f"{hub_config}/*"))
    except Exception as err:  # offline, HF_HUB_OFFLINE=1, no such repo, connection reset: one remedy for all
        raise DataError(
            f"Downloading {hub_repo} ({hub_config}) from the Hugging Face Hub failed: "
            f"{type(err).__name__}: {str(err).rstrip('.')}.\nWithout network, pass data.source=DIR with a directory "
            "holding wiki.train.raw and wiki.valid.raw (wiki.test.raw is optional), or use data=wiki (WikiText-2, "
            "bundled with lmpre)."
        ) from err
    target.mkdir(parents=True, exist_ok=True)
    for split, path in raw_files.items():
        parquet_files = sorted((snapshot / hub_config).glob(f"{split}-*.parquet"))
        if not parquet_files:
            raise DataError(f"{hub_repo} has no {hub_config}/{split}-*.parquet files: check data.hub_config.")
        _write_raw_text(parquet_files, path)
    return target


def _write_raw_text(parquet_files: list[Path], path: Path) -> None:
    """Concatenate the `text` rows (one raw line each) into `path`, under a temporary name until complete."""
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    with partial.open("w", encoding="utf-8", newline="") as out:
        for parquet_file in parquet_files:
            for batch in pq.ParquetFile(parquet_file).iter_batches(columns=["text"]):
                # Rows keep their "\n"; a blank raw line may come as "" and becomes an empty line.
                out.writelines(
                    line if line.endswith("\n") else line + "\n" for line in batch.column("text").to_pylist()
                )
    partial.replace(path)
