from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmpre.data.document import Document
from lmpre.data.sources import hub
from lmpre.data.sources.hub import DEFAULT_SPLIT_MAP, HubDataset, hub_split
from lmpre.errors import DataError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def read_all(source: HubDataset, stats: Counter[str] | None = None) -> list[Document]:
    stats = Counter() if stats is None else stats
    return [doc for unit in source.work_units() for doc in source.read(unit, stats)]


def write_snapshot(root: Path, files: dict[str, list[str]]) -> Path:
    """A snapshot folder as the Hub's cache lays it out: `datasets--OWNER--NAME/snapshots/COMMIT/…`."""
    snapshot = root / "datasets--someone--wiki" / "snapshots" / COMMIT
    for name, texts in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": texts}), snapshot / name)
    return snapshot


@pytest.fixture
def texts(wikitext_articles: list[tuple[str, str]]) -> list[str]:
    return [text for _, text in wikitext_articles]


@dataclass
class FakeHub:
    """`snapshot_download` without network: returns `snapshot`, records its calls."""

    snapshot: Path | None = None
    calls: list[dict[str, str | None]] = field(default_factory=list)

    def snapshot_download(self, **kwargs: str | None) -> str:
        self.calls.append(kwargs)
        return str(self.snapshot)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(hub, "snapshot_download", fake.snapshot_download)
    return fake


def test_hub_splits_become_document_splits(tmp_path: Path, texts: list[str], fake_hub: FakeHub) -> None:
    fake_hub.snapshot = write_snapshot(
        tmp_path,
        {
            "cfg/train-00000-of-00002.parquet": texts[:20],
            "cfg/train-00001-of-00002.parquet": texts[20:40],
            "cfg/validation-00000-of-00001.parquet": texts[40:50],
            "cfg/test-00000-of-00001.parquet": texts[50:],
            "cfg/unsupervised-00000-of-00001.parquet": ["not asked for"],
            "other/train-00000-of-00001.parquet": ["another config"],
        },
    )
    source = HubDataset("someone/wiki", config="cfg", revision="v1")
    source.check()
    docs = read_all(source)
    assert [doc.text for doc in docs] == texts[50:] + texts[:40] + texts[40:50]  # test, train, validation files
    assert Counter(doc.split for doc in docs) == {"train": 40, "val": 10, "test": 10}
    assert docs[0].id == "cfg/test-00000-of-00001.parquet:0"  # the file's path in the dataset
    assert source.settings()["commit"] == COMMIT  # a new upload is a new commit: prepared data is rebuilt
    assert fake_hub.calls == [
        {"repo_id": "someone/wiki", "repo_type": "dataset", "revision": "v1", "allow_patterns": "cfg/*.parquet"}
    ]  # once per source


def test_a_single_split_is_held_out_by_hash(tmp_path: Path, texts: list[str], fake_hub: FakeHub) -> None:
    fake_hub.snapshot = write_snapshot(
        tmp_path, {"data/train-00000.parquet": texts, "data/unsupervised-00000.parquet": ["x"]}
    )
    docs = read_all(HubDataset("someone/wiki"))
    assert [doc.text for doc in docs] == texts
    assert {doc.split for doc in docs} == {None}
    assert fake_hub.calls[0]["allow_patterns"] == "*.parquet"


def test_parquet_conversion_layout_keeps_ids_apart(tmp_path: Path, texts: list[str], fake_hub: FakeHub) -> None:
    """refs/convert/parquet names every split's first file 0000.parquet, in a folder named after the split."""
    fake_hub.snapshot = write_snapshot(
        tmp_path, {"default/train/0000.parquet": texts[:5], "default/validation/0000.parquet": texts[5:7]}
    )
    docs = read_all(HubDataset("someone/wiki", config="default", revision="refs/convert/parquet"))
    assert [(doc.id, doc.split) for doc in docs] == [
        (f"default/train/0000.parquet:{row}", "train") for row in range(5)
    ] + [(f"default/validation/0000.parquet:{row}", "val") for row in range(2)]


def test_failed_download_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(**kwargs: str) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(hub, "snapshot_download", no_network)
    with pytest.raises(
        DataError,
        match=r"(?s)Downloading someone/wiki \(cfg\) from the Hugging Face Hub failed: ConnectionError: Name or "
        r"service not known\.\nWithout network, pass data\.source=PATH with a local copy \(JSONL, Parquet or text\)",
    ):
        HubDataset("someone/wiki", config="cfg").files()


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network and an empty Hub cache: what the real `snapshot_download` sees."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_reads_the_hub_cache(offline_cache: Path, texts: list[str]) -> None:
    write_snapshot(offline_cache, {"cfg/train-00000-of-00001.parquet": texts[:3]})
    (offline_cache / "datasets--someone--wiki" / "refs").mkdir()
    (offline_cache / "datasets--someone--wiki" / "refs" / "main").write_text(COMMIT)
    source = HubDataset("someone/wiki", config="cfg")
    assert [doc.text for doc in read_all(source)] == texts[:3]
    assert source.settings()["commit"] == COMMIT


def test_offline_without_cache_says_what_to_pass(offline_cache: Path) -> None:
    with pytest.raises(
        DataError, match=r"(?s)Downloading someone/missing from the Hugging Face Hub failed: .*data\.source=PATH"
    ):
        HubDataset("someone/missing").settings()


def test_local_copy_and_missing_parquet(tmp_path: Path, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "snapshot_download", None)  # a local copy needs no download
    copy = write_snapshot(tmp_path, {"train.parquet": texts[:2], "test.parquet": texts[2:3]})
    source = HubDataset(path=str(copy))
    assert [(doc.id, doc.split) for doc in read_all(source)] == [
        ("test.parquet:0", "test"),
        ("train.parquet:0", "train"),
        ("train.parquet:1", "train"),
    ]
    assert source.settings()["commit"] is None
    with pytest.raises(DataError, match=r"has no Parquet files in nowhere/: check data\.sources\.hubdataset\.config"):
        HubDataset(path=str(copy), config="nowhere").files()


def test_settings_are_checked() -> None:
    with pytest.raises(DataError, match=r"data\.sources\.hubdataset\.dataset is not set"):
        HubDataset().check()
    with pytest.raises(DataError, match=r"split_map maps \{'dev': 'validation'\} to splits lmpre does not have"):
        HubDataset("someone/wiki", split_map={**DEFAULT_SPLIT_MAP, "dev": "validation"}).check()


@pytest.mark.parametrize(
    ("path", "split"),
    [
        ("wikitext-103-raw-v1/validation-00000-of-00001.parquet", "validation"),
        ("data/train-00000-of-00004-2d5a1467fff1081b.parquet", "train"),
        ("default/partial-test/0003.parquet", "test"),
        ("plain_text/unsupervised-00000-of-00001.parquet", None),
        ("contest/0000.parquet", None),  # a word must match whole
    ],
)
def test_hub_split_is_read_from_the_path(path: str, split: str | None) -> None:
    assert hub_split(PurePath(path), DEFAULT_SPLIT_MAP) == split
