from pathlib import Path

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmpre.data import DataConfig, prepare_dataset, read_manifest
from lmpre.data.sources import wikitext as sources_module
from lmpre.data.sources.wikitext import DEFAULT_SPLITS, download_wikitext, resolve_split_files
from lmpre.errors import DataError

HUB_CONFIG = DataConfig(
    source=None,
    splits=DEFAULT_SPLITS,
    format="wikitext",
    vocab_size=400,
    hub_repo="Salesforce/wikitext",
    hub_config="wikitext-103-raw-v1",
)


def test_split_files_are_sorted_glob_matches(tmp_path: Path) -> None:
    for name in ["b.txt", "a.txt", "val.txt", "notes.md"]:
        (tmp_path / name).write_text("x")
    files = resolve_split_files(tmp_path, {"train": "[ab].txt", "val": "val.txt"})
    assert files == {"train": [tmp_path / "a.txt", tmp_path / "b.txt"], "val": [tmp_path / "val.txt"]}


def test_missing_source_dir_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data.source={tmp_path / 'nowhere'} is not a directory"):
        resolve_split_files(tmp_path / "nowhere", DEFAULT_SPLITS)


def test_missing_split_file_names_file_and_keys(tmp_path: Path) -> None:
    (tmp_path / "wiki.valid.raw").write_text("x")
    with pytest.raises(DataError, match=r"expected .*wiki\.train\.raw.*data\.source=DIR.*data\.splits\.train=NAME"):
        resolve_split_files(tmp_path, DEFAULT_SPLITS)


def test_test_split_is_optional(tmp_path: Path) -> None:
    for name in ["wiki.train.raw", "wiki.valid.raw"]:
        (tmp_path / name).write_text("x")
    assert set(resolve_split_files(tmp_path, DEFAULT_SPLITS)) == {"train", "val"}


def write_fake_snapshot(root: Path, lines: list[str]) -> Path:
    """The Hub's layout of Salesforce/wikitext: one parquet row per raw line, blank lines as ""."""
    config_dir = root / "wikitext-103-raw-v1"
    config_dir.mkdir(parents=True)
    rows = [line if line.strip() else "" for line in lines]
    half = len(rows) // 2
    parts = {"train-00000-of-00002": rows[:half], "train-00001-of-00002": rows[half:]}
    parts |= {"validation-00000-of-00001": rows[:half], "test-00000-of-00001": rows[half:]}
    for name, part in parts.items():
        pq.write_table(pa.table({"text": part}), config_dir / f"{name}.parquet")
    return root


def test_hub_download_is_materialized_and_prepared(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = (shared_data / "wikitext-2-raw" / "wiki.valid.raw").read_text().splitlines(keepends=True)[:300]
    snapshot = write_fake_snapshot(tmp_path / "snapshot", lines)
    calls = []

    def fake_snapshot_download(**kwargs: str) -> str:
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr(sources_module, "snapshot_download", fake_snapshot_download)
    prepared = prepare_dataset(HUB_CONFIG, cache_dir=tmp_path / "cache")

    assert calls == [
        {"repo_id": "Salesforce/wikitext", "repo_type": "dataset", "allow_patterns": "wikitext-103-raw-v1/*"}
    ]
    raw_dir = tmp_path / "cache" / "raw" / "Salesforce--wikitext" / "wikitext-103-raw-v1"
    blank_as_empty = ["\n" if not line.strip() else line for line in lines]
    assert (raw_dir / "wiki.train.raw").read_text() == "".join(blank_as_empty)
    assert (raw_dir / "wiki.valid.raw").read_text() == "".join(blank_as_empty[:150])
    assert sorted(path.name for path in raw_dir.iterdir()) == ["wiki.test.raw", "wiki.train.raw", "wiki.valid.raw"]
    manifest = read_manifest(prepared)
    assert manifest["splits"]["train"]["files"][0]["path"] == str(raw_dir / "wiki.train.raw")
    assert manifest["splits"]["train"]["documents"] >= 2

    monkeypatch.setattr(sources_module, "snapshot_download", None)  # offline now: the cache is enough
    assert prepare_dataset(HUB_CONFIG, cache_dir=tmp_path / "cache") == prepared


def test_failed_download_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(**kwargs: str) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(sources_module, "snapshot_download", no_network)
    with pytest.raises(
        DataError, match=r"(?s)ConnectionError: Name or service not known.*data\.source=DIR.*wiki\.train\.raw"
    ):
        download_wikitext("Salesforce/wikitext", "wikitext-103-raw-v1", tmp_path)


def test_hub_offline_mode_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"(?s)Downloading Salesforce/wikitext .* failed: .*data\.source=DIR"):
        prepare_dataset(HUB_CONFIG, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "raw" / "Salesforce--wikitext" / "wikitext-103-raw-v1").exists()
