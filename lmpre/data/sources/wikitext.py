"""Where the raw text of each split comes from: a local directory, or WikiText-103 from the Hugging Face Hub."""

import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import snapshot_download

from lmpre.errors import DataError

DEFAULT_SPLITS = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
PREPARED_SPLITS = ("train", "val")
# Hub split name -> the raw file name it is materialized as (the names of the official WikiText release).
HUB_RAW_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def resolve_split_files(source: Path, splits: Mapping[str, str]) -> dict[str, list[Path]]:
    """The files of each prepared split: `splits` holds file names or globs inside `source`, matches are sorted."""
    if not source.is_dir():
        raise DataError(
            f"data.source={source} is not a directory. Pass data.source=DIR with a directory holding "
            f"the split files ({', '.join(splits[split] for split in PREPARED_SPLITS if split in splits)})."
        )
    files = {}
    for split in PREPARED_SPLITS:
        if split not in splits:
            raise DataError(f"No file is named for the {split} split: set data.splits.{split}=FILE (a name or glob).")
        matches = sorted(path for path in source.glob(splits[split]) if path.is_file())
        if not matches:
            raise DataError(
                f"No file for the {split} split: expected {source / splits[split]}. Put it there, pass another "
                f"directory with data.source=DIR, or another file name with data.splits.{split}=NAME."
            )
        files[split] = matches
    return files


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
            "holding wiki.train.raw and wiki.valid.raw (wiki.test.raw is optional)."
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
