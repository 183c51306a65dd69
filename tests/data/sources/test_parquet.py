from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmpre.data.document import Document
from lmpre.data.sources import parquet
from lmpre.data.sources.parquet import Parquet
from lmpre.errors import DataError


def read_all(source: Parquet, stats: Counter[str] | None = None) -> list[Document]:
    stats = Counter() if stats is None else stats
    return [doc for unit in source.work_units() for doc in source.read(unit, stats)]


def write_articles(path: Path, articles: list[tuple[str, str]], row_group_size: int | None = None) -> Path:
    titles, texts = zip(*articles, strict=True)
    pq.write_table(pa.table({"title": titles, "text": texts}), path, row_group_size=row_group_size)
    return path


def test_rows_are_documents(tmp_path: Path, wikitext_articles: list[tuple[str, str]]) -> None:
    write_articles(tmp_path / "a.parquet", wikitext_articles[:40])
    write_articles(tmp_path / "b.parquet", wikitext_articles[40:])
    docs = read_all(Parquet(str(tmp_path), id_column="title", batch_rows=7))
    assert [(doc.id, doc.text) for doc in docs] == wikitext_articles
    assert [doc.id for doc in read_all(Parquet(str(tmp_path / "b.parquet")))] == [
        f"b.parquet:{row}" for row in range(20)
    ]


def test_row_groups_are_shared_out(
    tmp_path: Path, wikitext_articles: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_articles(tmp_path / "wiki.parquet", wikitext_articles, row_group_size=8)  # 8 row groups
    whole = read_all(Parquet(str(path), batch_rows=5))
    monkeypatch.setattr(parquet, "UNIT_BYTES", 1)  # one row group per unit
    source = Parquet(str(path), batch_rows=5)
    assert [(unit.start, unit.end) for unit in source.work_units()] == [(index, index + 1) for index in range(8)]
    assert read_all(source) == whole
    assert [doc.id for doc in whole] == [f"wiki.parquet:{row}" for row in range(60)]


def test_empty_and_null_texts_are_counted(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["one", None, "", " \n", "two"]}), tmp_path / "t.parquet")
    stats: Counter[str] = Counter()
    docs = read_all(Parquet(str(tmp_path)), stats)
    assert [(doc.id, doc.text) for doc in docs] == [("t.parquet:0", "one"), ("t.parquet:4", "two")]
    assert stats == {"skipped.empty": 3}


def test_missing_or_wrong_column_lists_the_columns(tmp_path: Path, wikitext_articles: list[tuple[str, str]]) -> None:
    path = write_articles(tmp_path / "wiki.parquet", wikitext_articles[:2])
    with pytest.raises(
        DataError, match=r"wiki\.parquet has no column 'body' \(its columns: title, text\).*text_column=COLUMN"
    ):
        read_all(Parquet(str(path), text_column="body"))
    with pytest.raises(DataError, match=r"no column 'key'.*data\.sources\.parquet\.id_column=COLUMN"):
        read_all(Parquet(str(path), id_column="key"))
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(DataError, match=r"column 'text' holds int64, not text"):
        read_all(Parquet(str(path)))


def test_corrupt_file_names_the_file(tmp_path: Path, wikitext_articles: list[tuple[str, str]]) -> None:
    path = write_articles(tmp_path / "wiki.parquet", wikitext_articles)
    path.write_bytes(path.read_bytes()[:-100])  # the footer is cut off
    with pytest.raises(DataError, match=rf"{path} cannot be read .*truncated or corrupt.*data\.sources\.parquet\.path"):
        Parquet(str(path)).work_units()
    path = write_articles(tmp_path / "wiki.parquet", wikitext_articles, row_group_size=20)
    data = bytearray(path.read_bytes())
    for index in range(len(data) // 3, len(data) // 3 + 2000):  # damage pages, not the footer
        data[index] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{path} cannot be read \(OSError: Corrupt snappy"):
        read_all(Parquet(str(path)))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"text\.parquet cannot be read"):
        Parquet(str(tmp_path / "text.parquet")).work_units()


def test_batch_rows_is_checked() -> None:
    with pytest.raises(DataError, match=r"data\.sources\.parquet\.batch_rows=0 must be at least 1"):
        Parquet("x.parquet", batch_rows=0).check()
