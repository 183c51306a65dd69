from collections import Counter
from itertools import pairwise
from pathlib import Path

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmpre.data.sources import wikitext as wikitext_module
from lmpre.data.sources.base import open_binary
from lmpre.data.sources.wikitext import WikiText, article_ranges, download_wikitext
from lmpre.errors import DataError

OFFICIAL = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}


def articles(source: WikiText) -> list[str]:
    return [doc.text for unit in source.work_units() for doc in source.read(unit, Counter())]


@pytest.fixture
def valid_raw(wikitext_raw: Path, tmp_path: Path) -> Path:
    """The bundled wiki.valid.raw, uncompressed."""
    path = tmp_path / "wiki.valid.raw"
    with open_binary(wikitext_raw / "wiki.valid.raw.xz") as file:
        path.write_bytes(file.read())
    return path


def test_articles_start_at_their_title_and_keep_their_sections(valid_raw: Path) -> None:
    texts = articles(WikiText(str(valid_raw)))
    assert len(texts) == 60  # top-level titles in wiki.valid.raw
    assert texts[0].startswith(" = Homarus gammarus = \n \n Homarus gammarus , known as the European lobster")
    for text in texts:
        title, *body = text.split("\n")
        assert title.startswith(" = ")
        assert not title.startswith(" = =")
        assert not any(line.startswith(" = ") and not line.startswith(" = =") for line in body)
    assert sum(text.count("\n = = ") for text in texts) > 100  # sections stay inside articles


def test_bundled_copy_is_read_when_no_path_is_set(valid_raw: Path) -> None:
    source = WikiText()
    assert [path.name for path in source.files()] == ["wiki.test.raw.xz", "wiki.valid.raw.xz"]
    docs = [doc for unit in source.work_units() for doc in source.read(unit, Counter())]
    assert len(docs) == 62 + 60
    assert all(doc.split is None for doc in docs)  # held out by hash later
    assert docs[62].id == "Homarus gammarus"


def test_work_units_never_cut_an_article(valid_raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = article_ranges(valid_raw, 100_000)
    assert len(ranges) > 5
    assert all(before[1] == after[0] for before, after in pairwise(ranges))
    whole = articles(WikiText(str(valid_raw)))
    monkeypatch.setattr(wikitext_module, "UNIT_BYTES", 100_000)
    source = WikiText(str(valid_raw))
    assert len(source.work_units()) == len(ranges)
    assert articles(source) == whole


def test_official_splits_come_from_their_files(valid_raw: Path) -> None:
    (valid_raw.parent / "wiki.train.raw").write_text(" = A = \n text \n = B = \n more \n")
    source = WikiText(str(valid_raw.parent), splits=OFFICIAL)
    docs = [doc for unit in source.work_units() for doc in source.read(unit, Counter())]
    assert Counter(doc.split for doc in docs) == {"train": 2, "val": 60}  # the test file is optional


def test_a_file_in_two_splits_is_refused(valid_raw: Path) -> None:
    source = WikiText(str(valid_raw.parent), splits={"train": "wiki.*.raw", "val": "wiki.valid.raw"})
    source.name = "corpus"
    with pytest.raises(DataError, match=r"matched by both the train and the val split.*data\.sources\.corpus\.splits"):
        source.files()


def test_missing_split_file_names_file_and_keys(tmp_path: Path) -> None:
    (tmp_path / "wiki.valid.raw").write_text("x")
    with pytest.raises(DataError, match=r"expected .*wiki\.train\.raw.*data\.source=DIR.*splits\.train=NAME"):
        WikiText(str(tmp_path), splits=OFFICIAL).files()
    with pytest.raises(DataError, match=r"is not a directory"):
        WikiText(str(tmp_path / "nowhere"), splits=OFFICIAL).files()


def test_invalid_utf8_is_an_error_or_replaced_and_counted(tmp_path: Path) -> None:
    (tmp_path / "wiki.latin1.raw").write_bytes(" = Café = \n crème brûlée \n".encode("latin-1"))
    with pytest.raises(DataError, match=r"wiki\.latin1\.raw is not valid UTF-8.*encoding_errors=replace"):
        articles(WikiText(str(tmp_path)))
    source, stats = WikiText(str(tmp_path), encoding_errors="replace"), Counter[str]()
    [doc] = [doc for unit in source.work_units() for doc in source.read(unit, stats)]
    assert doc.text == " = Caf\ufffd = \n cr\ufffdme br\ufffdl\ufffde "
    assert stats == {"replaced.invalid_utf8": 4}


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


def test_hub_download_is_materialized_once(valid_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = valid_raw.read_text().splitlines(keepends=True)[:300]
    snapshot = write_fake_snapshot(tmp_path / "snapshot", lines)
    calls = []

    def fake_snapshot_download(**kwargs: str) -> str:
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr(wikitext_module, "snapshot_download", fake_snapshot_download)
    source = WikiText(
        splits=OFFICIAL,
        hub_repo="Salesforce/wikitext",
        hub_config="wikitext-103-raw-v1",
        cache_dir=str(tmp_path / "cache"),
    )
    files = source.files()
    assert calls == [
        {"repo_id": "Salesforce/wikitext", "repo_type": "dataset", "allow_patterns": "wikitext-103-raw-v1/*"}
    ]
    raw_dir = tmp_path / "cache" / "raw" / "Salesforce--wikitext" / "wikitext-103-raw-v1"
    blank_as_empty = ["\n" if not line.strip() else line for line in lines]
    assert (raw_dir / "wiki.train.raw").read_text() == "".join(blank_as_empty)
    assert (raw_dir / "wiki.valid.raw").read_text() == "".join(blank_as_empty[:150])
    assert [path.name for path in files] == ["wiki.test.raw", "wiki.train.raw", "wiki.valid.raw"]

    monkeypatch.setattr(wikitext_module, "snapshot_download", None)  # offline now: the cache is enough
    assert download_wikitext("Salesforce/wikitext", "wikitext-103-raw-v1", tmp_path / "cache") == raw_dir


def test_failed_download_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(**kwargs: str) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(wikitext_module, "snapshot_download", no_network)
    with pytest.raises(DataError, match=r"(?s)ConnectionError: Name or service not known.*data\.source=DIR.*data=wiki"):
        download_wikitext("Salesforce/wikitext", "wikitext-103-raw-v1", tmp_path)


def test_hub_offline_mode_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    source = WikiText(
        splits=OFFICIAL,
        hub_repo="Salesforce/wikitext",
        hub_config="wikitext-103-raw-v1",
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataError, match=r"(?s)Downloading Salesforce/wikitext .* failed: .*data\.source=DIR"):
        source.files()
    assert not (tmp_path / "cache" / "raw" / "Salesforce--wikitext" / "wikitext-103-raw-v1").exists()
