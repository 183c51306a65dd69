import bz2
import gzip
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from lmpre.data.document import Document
from lmpre.data.sources import jsonl
from lmpre.data.sources.jsonl import JsonLines
from lmpre.errors import DataError


def read_all(source: JsonLines, stats: Counter[str] | None = None) -> list[Document]:
    stats = Counter() if stats is None else stats
    return [doc for unit in source.work_units() for doc in source.read(unit, stats)]


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    data = "".join(json.dumps(record) + "\n" for record in records).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        data = bz2.compress(data)
    elif path.suffix == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["wiki.jsonl", "wiki.jsonl.gz", "wiki.jsonl.zst", "wiki.json"])
def test_articles_round_trip_plain_and_compressed(
    name: str, tmp_path: Path, wikitext_articles: list[tuple[str, str]]
) -> None:
    records = [{"title": title, "meta": {"text": text}} for title, text in wikitext_articles]
    write_jsonl(tmp_path / name, records)
    stats: Counter[str] = Counter()
    docs = read_all(JsonLines(str(tmp_path), text_field="meta.text", id_field="title"), stats)
    assert [(doc.id, doc.text) for doc in docs] == wikitext_articles
    assert {(doc.source, doc.split) for doc in docs} == {("jsonlines", None)}
    assert not stats


def test_default_ids_are_byte_offsets_of_lines(tmp_path: Path, wikitext_articles: list[tuple[str, str]]) -> None:
    path = write_jsonl(tmp_path / "wiki.jsonl", [{"text": text} for _, text in wikitext_articles[:3]])
    offsets = [0]
    for line in path.read_bytes().splitlines(keepends=True)[:-1]:
        offsets.append(offsets[-1] + len(line))
    assert [doc.id for doc in read_all(JsonLines(str(path)))] == [f"wiki.jsonl@{offset}" for offset in offsets]


def test_a_large_file_is_cut_at_line_boundaries(
    tmp_path: Path, wikitext_articles: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "wiki.jsonl", [{"text": text} for _, text in wikitext_articles])
    whole = read_all(JsonLines(str(path)))
    monkeypatch.setattr(jsonl, "UNIT_BYTES", 10_000)  # cuts inside lines, and some units hold no line start
    source = JsonLines(str(path))
    units = source.work_units()
    assert len(units) == -(-path.stat().st_size // 10_000)
    assert (units[0].start, units[-1].end) == (0, None)
    assert read_all(source) == whole  # every line read once, in order


def test_compressed_files_are_not_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "a.jsonl.gz", [{"text": "x" * 100}] * 100)
    monkeypatch.setattr(jsonl, "UNIT_BYTES", 10)
    assert len(JsonLines(str(tmp_path)).work_units()) == 1


def bad_lines(tmp_path: Path) -> Path:
    lines = ['{"text": "first"}', "", '{"text": "second"', '{"body": "third"}', '{"text": "  "}', '{"text": 4}', "[1]"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_json_fails_naming_file_line_and_setting(tmp_path: Path) -> None:
    path = bad_lines(tmp_path)
    with pytest.raises(
        DataError, match=rf"{path} line 3: not valid JSON .*data\.sources\.jsonlines\.on_bad_record=skip"
    ):
        read_all(JsonLines(str(path)))


def test_missing_field_fails_naming_the_fields_there_are(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text", "id": 2}\n')
    with pytest.raises(
        DataError, match=r"line 2: no field 'text' \(fields: body, id\).*text_field=FIELD.*on_bad_record=skip"
    ):
        read_all(JsonLines(str(path)))
    with pytest.raises(DataError, match=r"line 1: no field 'key'.*id_field=FIELD"):
        read_all(JsonLines(str(path), id_field="key"))


def test_error_line_counts_lines_before_a_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "late.jsonl"
    path.write_text('{"text": "a line of text"}\n' * 1000 + "not json\n")
    monkeypatch.setattr(jsonl, "UNIT_BYTES", 4096)
    with pytest.raises(DataError, match=r"late\.jsonl line 1001: not valid JSON"):
        read_all(JsonLines(str(path)))


def test_skip_counts_each_reason(tmp_path: Path) -> None:
    stats: Counter[str] = Counter()
    docs = read_all(JsonLines(str(bad_lines(tmp_path)), on_bad_record="skip"), stats)
    assert [doc.text for doc in docs] == ["first"]
    assert stats == {"skipped.bad_json": 1, "skipped.missing_field": 2, "skipped.empty": 1, "skipped.not_text": 1}


def test_invalid_utf8_follows_encoding_errors(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl line 2 is not valid UTF-8.*encoding_errors=replace"):
        read_all(JsonLines(str(path)))
    stats: Counter[str] = Counter()
    docs = read_all(JsonLines(str(path), encoding_errors="replace"), stats)
    assert [doc.text for doc in docs] == ["ok", "caf\ufffd"]
    assert stats == {"replaced.invalid_utf8": 1}


@pytest.mark.parametrize("name", ["cut.jsonl.gz", "cut.jsonl.bz2"])  # (zstandard's stream reader ends quietly)
def test_truncated_archive_names_the_file(name: str, tmp_path: Path, wikitext_articles: list[tuple[str, str]]) -> None:
    path = write_jsonl(tmp_path / name, [{"text": text} for _, text in wikitext_articles])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{path} cannot be read .*truncated or corrupt"):
        read_all(JsonLines(str(path)))


def test_settings_are_checked() -> None:
    with pytest.raises(DataError, match=r"data\.sources\.jsonlines\.on_bad_record=ignore is not one of fail, skip"):
        JsonLines("x.jsonl", on_bad_record="ignore").check()
    with pytest.raises(DataError, match=r"text_field is empty"):
        JsonLines("x.jsonl", text_field="").check()
